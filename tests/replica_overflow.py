"""A float16 training step in which one replica only overflows in the backward pass.

The overflow a GPU meets under loss scaling: the forward pass is fine, the scaled gradients of one
replica's batch exceed float16's range. `OverflowOnReplica` injects exactly that: identity forward,
and an infinite gradient on the chosen replica only (by its id in the sync group, which under
MultiWorkerMirroredStrategy is the worker's index).

Imported by tests/test_mixed_precision_replicas.py (MirroredStrategy over two logical CPUs) and run
as a script by the two local workers of the multi-worker test; each worker prints one JSON line.
"""

from __future__ import annotations

import json
import sys

import keras
import numpy as np
import tensorflow as tf


class OverflowOnReplica(keras.layers.Layer):
    def __init__(self, replica: int, **kwargs):
        super().__init__(**kwargs)
        self.replica = replica

    def call(self, x):
        @tf.custom_gradient
        def identity(x):
            def grad(dy):
                context = tf.distribute.get_replica_context()
                replica = context.replica_id_in_sync_group if context is not None else 0
                return tf.where(tf.equal(replica, self.replica), dy * tf.constant(np.inf, dy.dtype), dy)

            return tf.identity(x), grad

        return identity(x)


def one_step(strategy, bad_replica: int = 1, global_batch: int = 8) -> dict:
    """Builds a small float16 model under `strategy`, runs one step of our Trainer with an overflow on
    `bad_replica`, returns what happened (weights per local replica, scale, counters)."""
    from resnet_train.data import pipeline, synthetic
    from resnet_train.optim import build_optimizer
    from resnet_train.training.trainer import Trainer

    keras.mixed_precision.set_global_policy("mixed_float16")
    keras.utils.set_random_seed(0)
    with strategy.scope():
        inputs = keras.Input((8, 8, 3))
        x = keras.layers.Rescaling(1 / 255.0)(inputs)
        x = keras.layers.Conv2D(4, 3, name="conv")(x)
        x = OverflowOnReplica(bad_replica)(x)
        x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(x))
        model = keras.Model(inputs, keras.layers.Dense(4, dtype="float32", name="logits")(x))
        optimizer = build_optimizer({"name": "sgd", "momentum": 0.9}, 0.1, loss_scaling=True)
        optimizer.build(model.trainable_variables)
    trainer = Trainer(model, optimizer, strategy, global_batch, num_classes=4, max_nonfinite_steps=5)
    data = synthetic.load(image_shape=(8, 8, 3), num_classes=4, train_size=32, test_size=8)

    def dataset_fn(ctx):
        return pipeline.train_batches(
            data.train,
            32,
            global_batch,
            0,
            0,
            pipelines=ctx.num_input_pipelines,
            pipeline_id=ctx.input_pipeline_id,
            replica_batch=ctx.get_per_replica_batch_size(global_batch),
        )

    def per_replica(variable):
        return [np.asarray(v.numpy()).tolist() for v in strategy.experimental_local_results(variable.value)]

    before = {v.path: per_replica(v) for v in model.trainable_variables}
    scale = float(optimizer.dynamic_scale.numpy())
    done, nonfinite, _ = trainer.train_steps(iter(strategy.distribute_datasets_from_function(dataset_fn)), 1)
    return {
        "steps_run": done,
        "nonfinite_steps": nonfinite,
        "iterations": int(optimizer.iterations.numpy()),
        "scale_before": scale,
        "scale_after": float(optimizer.dynamic_scale.numpy()),
        "weights_before": before,
        "weights_after": {v.path: per_replica(v) for v in model.trainable_variables},
    }


if __name__ == "__main__":  # one worker of a two-worker cluster (TF_CONFIG set by the test)
    from resnet_train.runtime.devices import split_cpu

    split_cpu(1)
    result = one_step(tf.distribute.MultiWorkerMirroredStrategy(), bad_replica=int(sys.argv[1]))
    print("RESULT " + json.dumps(result), flush=True)
