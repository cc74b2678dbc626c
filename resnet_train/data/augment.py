"""Per-example augmentation with stateless random ops.

Each example's randomness is a pure function of (seed, epoch, position in the epoch), so a run
resumed mid-training sees exactly the crops and flips the uninterrupted run would have seen,
whatever the thread scheduling of tf.data: there is no RNG state to save.
"""
from __future__ import annotations

import tensorflow as tf


def example_seed(seed: int, epoch: int, index) -> tf.Tensor:
    """A [2] int64 stateless seed for one example of one epoch."""
    return tf.stack([tf.constant(seed * 1_000_003 + epoch, tf.int64), tf.cast(index, tf.int64)])


def pad_and_crop(image, padding: int, seed):
    """He et al. 2016: pad `padding` zero pixels on each side, take a random crop of the original size."""
    shape = tf.shape(image)
    padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
    return tf.image.stateless_random_crop(padded, shape, seed=seed)


def make_augment(random_crop_padding: int = 0, horizontal_flip: bool = False):
    """Returns fn(image, seed) -> image, or None when there is nothing to do."""
    if random_crop_padding < 0:
        raise ValueError("augment.random_crop_padding must be >= 0")
    if not random_crop_padding and not horizontal_flip:
        return None

    def augment(image, seed):
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        if random_crop_padding:
            image = pad_and_crop(image, random_crop_padding, crop_seed)
        if horizontal_flip:
            image = tf.image.stateless_random_flip_left_right(image, flip_seed)
        return image

    return augment
