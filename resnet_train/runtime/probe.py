"""Timing of our training step on an in-memory batch: what runtime=auto's tuning measures (in a
fresh process per setting) and what scripts/bench.py reports as "the trainer alone". Figures are
medians over timed windows after a warm-up, so tracing and autotuning are not counted."""

from __future__ import annotations

import statistics
import time

import numpy as np
import tensorflow as tf


def timed_windows(step, items_per_step: int, warmup: int, windows: int, steps_per_window: int) -> dict:
    for _ in range(warmup):
        step()
    rates = []
    for _ in range(windows):
        start = time.perf_counter()
        for _ in range(steps_per_window):
            step()
        rates.append(items_per_step * steps_per_window / (time.perf_counter() - start))
    return {"images_per_sec": statistics.median(rates), "min": min(rates), "max": max(rates)}


def train_throughput(
    depth: int,
    image_shape,
    batch_size: int,
    num_classes: int = 10,
    steps_per_call: int = 1,
    windows: int = 5,
    steps_per_window: int = 10,
    precision: str = "float32",
    strategy=None,
    xla: bool = False,
) -> dict:
    """images/s of our Trainer on one in-memory batch repeated (the model and step alone)."""
    import keras

    from resnet_train import models
    from resnet_train.optim import build_optimizer
    from resnet_train.training.trainer import Trainer

    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy(precision)
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        model = models.build(depth, num_classes, image_shape)
        optimizer = build_optimizer({"name": "sgd", "momentum": 0.9}, 0.1, loss_scaling=precision == "mixed_float16")
        optimizer.build(model.trainable_variables)
    trainer = Trainer(model, optimizer, strategy, batch_size, weight_decay=1e-4, num_classes=num_classes, xla=xla)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch_size, *image_shape)).astype(np.uint8)
    labels = rng.integers(0, num_classes, batch_size).astype(np.int64)
    data = tf.data.Dataset.from_tensors((images, labels)).repeat().prefetch(2)
    iterator = iter(strategy.experimental_distribute_dataset(data))
    result = timed_windows(
        lambda: trainer.train_steps(iterator, steps_per_call) or trainer.train_metrics(),
        batch_size * steps_per_call,
        warmup=3,
        windows=windows,
        steps_per_window=max(1, steps_per_window // steps_per_call),
    )
    result["parameters"] = models.count_params(model)
    keras.mixed_precision.set_global_policy("float32")
    return result
