"""Random images of any shape, for benchmarks and smoke tests (labels carry no signal)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from resnet_train.data.info import DatasetInfo, Splits


def load(image_shape=(32, 32, 3), num_classes=10, train_size=1024, test_size=256, seed=0) -> Splits:
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in image_shape)

    def split(n):
        images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
        labels = rng.integers(0, num_classes, size=(n,)).astype("int64")
        return tf.data.Dataset.from_tensor_slices((images, labels))

    info = DatasetInfo(
        name="synthetic",
        num_classes=num_classes,
        image_shape=shape,
        train_size=train_size,
        test_size=test_size,
        class_names=[f"class_{i}" for i in range(num_classes)],
        mean=(127.5,) * shape[-1],
        std=(73.9,) * shape[-1],  # std of uniform integers 0..255
    )
    return Splits(split(train_size), split(test_size), info)
