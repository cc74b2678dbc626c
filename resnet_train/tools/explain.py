"""Grad-CAM (Selvaraju et al. 2017) on the last convolutional stage: where the network looks."""

from __future__ import annotations

import keras
import tensorflow as tf

from resnet_train.models import names


def last_conv_features(model):
    """The feature map that feeds the global pooling: the last stage's output."""
    return model.get_layer(names.POOL).input


def grad_cam(model, images, class_index=None):
    """(heatmaps in [0, 1] at the image size, predicted classes, their probabilities)."""
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
    probs = tf.nn.softmax(logits)
    picked = tf.gather(probs, chosen, batch_dims=1)
    return heat.numpy(), chosen.numpy(), picked.numpy()
