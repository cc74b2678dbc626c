"""What the replicas of a step must agree on: one skip decision under loss scaling, and batch
norm's moving statistics (Keras 3 keeps them per replica)."""

from __future__ import annotations

import keras
import tensorflow as tf

SUM = tf.distribute.ReduceOp.SUM


def per_replica_bn_statistics(model, strategy) -> list:
    """Batch norm's moving statistics under several replicas: Keras 3 makes them per-replica
    variables (aggregation "none"), so each replica averages only its own batches and a checkpoint
    saves replica 0's. The Trainer averages them across replicas after every compiled call (one
    batched all-reduce of a few KB to a few hundred KB), which is what tf.keras 2 gave (aggregation
    MEAN): the moving mean is then the one-device one, the variance the mean of the replicas'."""
    if strategy.num_replicas_in_sync == 1:
        return []
    layers = [
        layer
        for layer in model._flatten_layers()
        if isinstance(layer, keras.layers.BatchNormalization) and not layer.synchronized
    ]
    return [v for layer in layers for v in (layer.moving_mean, layer.moving_variance)]


def poisoned_everywhere_if_any_replica_overflowed(grads):
    """Every replica and worker takes the same skip decision under loss scaling.

    Keras' LossScaleOptimizer expects gradients that are already summed: under MirroredStrategy
    it decides "finite or not" from the first local replica only, and under
    MultiWorkerMirroredStrategy each worker decides alone. With each replica's own gradients an
    overflow on replica 1 would then be applied (poisoning the weights through the all-reduce),
    or one worker would skip while another waits in the update's collectives (a hang). One
    scalar all-reduce of "this replica overflowed" makes the decision global: if any replica's
    gradients are not finite, every replica hands NaN gradients to the optimizer, which skips
    the step and lowers the scale everywhere."""
    present = [g for g in grads if g is not None]
    finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in present])
    overflowed = tf.distribute.get_replica_context().all_reduce(SUM, 1.0 - tf.cast(finite, tf.float32))
    present = tf.cond(
        overflowed > 0, lambda: [g * tf.constant(float("nan"), g.dtype) for g in present], lambda: present
    )
    it = iter(present)
    # (gradients, 1.0 when this step is skipped: on every replica alike)
    return [None if g is None else next(it) for g in grads], tf.cast(overflowed > 0, tf.float32)
