"""Stochastic depth (Huang et al. 2016) as timm applies it to ResNets: each example's residual
branch is dropped with probability `rate` during training and scaled by 1 / (1 - rate) when kept,
so its expected value is unchanged; identity at inference.

Keras 3 has no such layer (keras.layers.Dropout drops units, SpatialDropout channels) and
keras-hub keeps its DropPath layers private to single models, hence this one.
"""

from __future__ import annotations

import keras
from keras import layers


def block_rates(drop_path: float, num_blocks: int) -> list[float]:
    """Rates rising linearly with the block index, 0 at the first block and `drop_path` at the last
    (timm's `drop_path_rate`: rate * i / (n - 1)). Huang et al.'s linear rule is the same line
    with l / L, so its first block already drops a little."""
    if num_blocks < 2:
        return [float(drop_path)] * num_blocks
    return [float(drop_path) * i / (num_blocks - 1) for i in range(num_blocks)]


@keras.saving.register_keras_serializable(package="resnet_train")
class DropPath(layers.Layer):
    """Per-example drop of a residual branch. The masks are stateless draws keyed by (the layer's
    seed, the replica, the number of draws so far); that count is a weight of the layer (not
    trained), so checkpoints hold it and a resumed run draws the masks the uninterrupted run would
    have. (A keras SeedGenerator's state is not in TensorFlow checkpoints.) Each replica folds its
    id into the key, so replicas draw different masks."""

    def __init__(self, rate: float, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"DropPath rate must be in [0, 1) (got {rate})")
        self.rate = float(rate)
        self.seed = int(seed)

    def build(self, input_shape):
        self.draws = self.add_weight(name="draws", shape=(), dtype="int64", initializer="zeros", trainable=False)

    def call(self, x, training=None):
        if not training or self.rate == 0.0:
            return x
        import tensorflow as tf

        context = tf.distribute.get_replica_context()
        replica = 0 if context is None else context.replica_id_in_sync_group
        key = tf.stack([tf.constant(self.seed * 65536, tf.int64) + tf.cast(replica, tf.int64), self.draws.value])
        self.draws.assign_add(1)
        shape = tf.concat([tf.shape(x)[:1], tf.ones([tf.rank(x) - 1], tf.int32)], 0)
        keep = tf.random.stateless_uniform(shape, seed=key) >= self.rate
        return x * tf.cast(keep, x.dtype) / tf.cast(1.0 - self.rate, x.dtype)

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}
