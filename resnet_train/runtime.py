"""Strategy, seeds and determinism. (Several devices and precisions come with the scale work.)"""
from __future__ import annotations

import logging

import keras
import tensorflow as tf

log = logging.getLogger(__name__)


def configure(seed: int, deterministic: bool = False):
    """Seeds every RNG, optionally enables op determinism; returns the tf.distribute strategy."""
    keras.utils.set_random_seed(seed)  # Python, NumPy and TF (model initialisation)
    if deterministic:
        # Bit-identical reruns (and resumed == uninterrupted), at some cost in speed.
        tf.config.experimental.enable_op_determinism()
    strategy = tf.distribute.get_strategy()
    log.info("Strategy: %s with %d replica(s)", type(strategy).__name__, strategy.num_replicas_in_sync)
    return strategy
