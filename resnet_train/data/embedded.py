"""The embedded real dataset: scikit-learn's handwritten digits (UCI), 1,797 images of 10 classes.

It ships inside scikit-learn, so the first run needs no download. The 8x8 grey images are
upscaled (bilinear) to 32x32 and repeated to 3 channels so that the CIFAR ResNets apply as they are.
The train/test split is stratified and fixed (seeded), so test accuracy is comparable across runs.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from resnet_train.data.info import DatasetInfo, Splits, channel_stats

SPLIT_SEED = 20160101  # fixed: the test set must not change with the training seed


def load_digits_arrays(image_size: int = 32, test_fraction: float = 0.2):
    """(x_train, y_train, x_test, y_test) as uint8 NHWC images and int64 labels."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype("float32")[..., None] * (255.0 / 16.0)  # 0..16 -> 0..255
    images = tf.image.resize(images, (image_size, image_size), method="bilinear").numpy()
    images = np.repeat(np.clip(np.round(images), 0, 255).astype("uint8"), 3, axis=-1)
    labels = digits.target.astype("int64")
    return train_test_split(images, labels, test_size=test_fraction, random_state=SPLIT_SEED, stratify=labels)


def load(image_size: int = 32, test_fraction: float = 0.2) -> Splits:
    x_train, x_test, y_train, y_test = load_digits_arrays(image_size, test_fraction)
    mean, std = channel_stats(x_train)
    info = DatasetInfo(
        name="digits",
        num_classes=10,
        image_shape=(image_size, image_size, 3),
        train_size=len(x_train),
        test_size=len(x_test),
        class_names=[str(i) for i in range(10)],
        mean=mean,
        std=std,
    )
    return Splits(
        tf.data.Dataset.from_tensor_slices((x_train, y_train)),
        tf.data.Dataset.from_tensor_slices((x_test, y_test)),
        info,
    )
