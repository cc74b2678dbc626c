"""The training loss per example (the Trainer averages it over the global batch).

loss=ce (default): softmax cross-entropy. loss=bce: binary cross-entropy of each class's logit
against the one-hot target, averaged over the classes, as "ResNet strikes back" (Wightman et al.
2021) trains and timm's BinaryCrossEntropy computes it: label smoothing and mixup/cutmix targets
as with ce, then `loss.target_threshold` (timm's bce_target_thresh) turns every target above it
into 1 and the rest into 0. Evaluation reports the softmax cross-entropy either way (timm's too).
"""

from __future__ import annotations

import tensorflow as tf


class Loss:
    def __init__(self, num_classes: int, label_smoothing: float = 0.0, kind: str = "ce", target_threshold=None):
        self.num_classes = num_classes
        self.label_smoothing = float(label_smoothing)
        self.kind = kind
        self.target_threshold = target_threshold

    def targets(self, labels, dtype):
        """Dense targets: one-hot (or the mixed labels), smoothed (Szegedy et al. 2016: (1 - e) y +
        e / K), thresholded under bce when asked."""
        if labels.dtype.is_integer:
            labels = tf.one_hot(labels, self.num_classes, dtype=dtype)
        labels = tf.cast(labels, dtype)
        if self.label_smoothing:
            labels = labels * (1.0 - self.label_smoothing) + self.label_smoothing / self.num_classes
        if self.kind == "bce" and self.target_threshold is not None:
            labels = tf.cast(labels > self.target_threshold, dtype)
        return labels

    def __call__(self, labels, logits):
        """Per-example loss. Integer labels without smoothing take the sparse ce path."""
        if self.kind == "ce" and labels.dtype.is_integer and not self.label_smoothing:
            return tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
        targets = self.targets(labels, logits.dtype)
        if self.kind == "ce":
            return tf.nn.softmax_cross_entropy_with_logits(targets, logits)
        return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(targets, logits), -1)
