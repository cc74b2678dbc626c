"""tf.data pipelines: uint8 examples -> shuffled, augmented, batched uint8 tensors.

Images stay uint8 all the way to the model (which normalises them itself): a quarter of the
bytes of float32 through the pipeline and across to an accelerator.
"""
from __future__ import annotations

import tensorflow as tf

from resnet_train.data.augment import example_seed

AUTOTUNE = tf.data.AUTOTUNE


def train_batches(ds: tf.data.Dataset, size: int, batch_size: int, seed: int, epoch: int,
                  augment=None, batch_augment=None, skip_batches: int = 0,
                  shuffle_buffer: int | None = None) -> tf.data.Dataset:
    """One epoch of training batches. Order and augmentation depend only on (seed, epoch).

    Drops the last partial batch (every step sees a full global batch). `skip_batches` starts the
    epoch part-way, for resuming a run that stopped mid-epoch: the skipped examples are dropped
    before any augmentation work, and every later example keeps its index, hence its randomness.
    `shuffle_buffer` defaults to the whole dataset (in-memory data); streamed data uses a window.
    """
    buffer = min(size, shuffle_buffer or size)
    ds = ds.shuffle(buffer, seed=seed * 7919 + epoch, reshuffle_each_iteration=False).enumerate()
    if skip_batches:
        ds = ds.skip(skip_batches * batch_size)
    if augment is not None:
        ds = ds.map(lambda i, xy: (augment(xy[0], example_seed(seed, epoch, i)), xy[1]),
                    num_parallel_calls=AUTOTUNE)
    else:
        ds = ds.map(lambda i, xy: xy)
    ds = ds.batch(batch_size, drop_remainder=True)
    if batch_augment is not None:
        ds = ds.enumerate(start=skip_batches).map(
            lambda b, xy: batch_augment(xy[0], xy[1], example_seed(seed, epoch, b, stream=1)),
            num_parallel_calls=AUTOTUNE,
        )
    return ds.prefetch(AUTOTUNE)


def eval_batches(ds: tf.data.Dataset, batch_size: int, preprocess=None) -> tf.data.Dataset:
    """Every example exactly once: the last batch may be smaller. `preprocess` decodes streamed
    images (resize + centre crop); in-memory images go to the model as they are."""
    if preprocess is not None:
        ds = ds.map(lambda x, y: (preprocess(x), y), num_parallel_calls=AUTOTUNE)
    return ds.batch(batch_size).prefetch(AUTOTUNE)


def eval_preprocess(info):
    """The decode step evaluation needs for `info`'s data, or None."""
    if not info.encoded:
        return None
    from resnet_train.data.augment import decode_center_crop

    size = tuple(int(s) for s in info.image_shape[:2])
    return lambda encoded: decode_center_crop(encoded, size)
