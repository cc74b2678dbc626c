"""data.task=multilabel's evaluation and training figure. Exact average precision needs every
score of the split (report/label_metrics.py), so evaluation gathers each batch's sigmoid outputs,
labels and padding weights from every replica (and worker: each computes the same figures) to
the host, instead of the running sums the single-label evaluation reduces; the logits, so that the
sigmoid is taken in float64 there and confident scores keep their order."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from resnet_train.report import label_metrics


def exact_matches(labels, logits, threshold: float):
    """Examples whose every label is right at `threshold` (soft, mixed targets: those above 0.5);
    the training line's accuracy under multilabel."""
    predicted = tf.sigmoid(tf.cast(logits, tf.float32)) >= threshold
    right = tf.reduce_all(tf.equal(predicted, tf.cast(labels, tf.float32) > 0.5), -1)
    return tf.reduce_sum(tf.cast(right, tf.float32))


class MultilabelEvaluation:
    def __init__(self, model, strategy, threshold: float, class_names):
        self.model, self.strategy = model, strategy
        self.threshold, self.class_names = float(threshold), list(class_names)
        self._batch = tf.function(self._batch_fn, reduce_retracing=True)

    def _replica(self, images, labels, weights):
        logits = tf.cast(self.model(images, training=False), tf.float32)
        labels = tf.cast(labels, tf.float32)
        loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels, logits), -1)
        return logits, labels, weights, loss

    def _batch_fn(self, images, labels, weights):
        results = self.strategy.run(self._replica, args=(images, labels, weights))
        return [self.strategy.gather(r, axis=0) for r in results]

    def __call__(self, dist_dataset) -> dict:
        """Mean BCE, map, macro_f1, exact-match accuracy and the per-class AP and F1 (padding,
        weight 0, left out), over every example of the dataset."""
        parts = [[], [], [], []]
        for images, labels, weights in dist_dataset:
            for part, value in zip(parts, self._batch(images, labels, weights)):
                part.append(value.numpy())
        logits, labels, weights, losses = (
            np.concatenate(p) if p else np.zeros((0, len(self.class_names))) for p in parts
        )
        keep = weights.reshape(-1) > 0
        # float64: a float32 sigmoid is exactly 1 from a logit of ~17 on, and confident scores would tie.
        probabilities = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        figures = label_metrics.report(labels[keep], probabilities[keep], self.threshold, self.class_names)
        return {"loss": float(np.mean(losses[keep])) if keep.any() else 0.0, **figures, "examples": int(keep.sum())}
