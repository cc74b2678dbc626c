"""Grad-CAM (Selvaraju et al. 2017) on the last convolutional stage: where the network looks."""

from __future__ import annotations

from pathlib import Path

import keras
import tensorflow as tf

from resnet_train.models import names
from resnet_train.models.probabilities import probabilities


def last_conv_features(model):
    """The feature map that feeds the global pooling: the last stage's output."""
    return model.get_layer(names.POOL).input


def grad_cam(model, images, class_index=None, task: str = "multiclass"):
    """(heatmaps in [0, 1] at the image size, predicted classes, their probabilities). The class
    is the highest logit (under multilabel the most probable label; its probability a sigmoid)."""
    probe = keras.Model(model.inputs, [last_conv_features(model), model.output])
    images = tf.convert_to_tensor(images)
    with tf.GradientTape() as tape:
        features, logits = probe(images, training=False)
        tape.watch(features)
        chosen = tf.argmax(logits, -1) if class_index is None else tf.fill([tf.shape(images)[0]], class_index)
        score = tf.reduce_sum(logits * tf.one_hot(chosen, logits.shape[-1]))
    grads = tape.gradient(score, features)
    weights = tf.reduce_mean(grads, axis=[1, 2], keepdims=True)  # one weight per channel
    cam = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1))
    cam = cam / (tf.reduce_max(cam, axis=[1, 2], keepdims=True) + 1e-8)
    heat = tf.image.resize(cam[..., None], tf.shape(images)[1:3], method="bilinear")[..., 0]
    probs = probabilities(logits, task)
    picked = tf.gather(probs, chosen, batch_dims=1)
    return heat.numpy(), chosen.numpy(), picked.numpy()


def output_names(paths) -> list[str]:
    """The Grad-CAM file name of each image, different for different files: `<stem>_gradcam.png`;
    images that share a stem (one file name in several folders, or cat.png and cat.jpg) get their
    parent folders' names in front, as many as tell them apart (`a_cat_gradcam.png`,
    `b_cat_gradcam.png`), else their extension too (`cat_png_gradcam.png`); a name still taken by
    another file gets a number (`_2`)."""
    paths = [Path(p).absolute() for p in paths]
    labels, taken = [], {}
    for path in paths:
        group = {q for q in paths if q.stem == path.stem}
        label = base = path.stem if len(group) == 1 else _distinct(path, group)
        number = 1
        while taken.setdefault(label, path) != path:
            number += 1
            label = f"{base}_{number}"
        labels.append(label)
    return [f"{label}_gradcam.png" for label in labels]


def _distinct(path: Path, group: set) -> str:
    """The shortest label of `path` (parent folders, then the extension) that no other path of `group` has."""
    depth = max(len(q.parent.parts) - 1 for q in group)  # parts[0] is the root

    def label(p: Path, k: int, extension: bool) -> str:
        folders = list(p.parent.parts[1:][-k:]) if k else []
        return "_".join([*folders, p.stem] + ([p.suffix.lstrip(".")] if extension else []))

    for extension in (False, True):
        for k in range(1, depth + 1):
            if len({label(q, k, extension) for q in group}) == len(group):
                return label(path, k, extension)
    return label(path, depth, True)
