"""Magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune"), built on TensorFlow pieces:
tensorflow-model-optimization's pruning works with Keras 2 (tf_keras) only.

Each conv and dense kernel not excluded gets a mask (a non-trainable variable of 0s and 1s). At
the schedule's update steps the mask is rebuilt to zero the smallest magnitudes (of the layer, or
of all pruned kernels together with prune.scope=global; the weights already pruned count as 0, so
they stay pruned) down to the sparsity of the cubic schedule

    s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3,   s_i = 0, t0 = start, n dt = end - start,

and after every optimizer step the kernels are multiplied by their masks, so momentum and weight
decay cannot bring a pruned weight back. The masks, the step count and the sparsity are
checkpointed with the run (an exact resume). A mask keeps exactly round(s * weights) zeros: the
weights are ranked by magnitude (ties by position), not cut at a threshold.
"""

from __future__ import annotations

import logging

import numpy as np
import tensorflow as tf

from resnet_train.errors import ConfigError

log = logging.getLogger(__name__)


def sparsity_at(step, final: float, start: int, end: int):
    """The schedule's target sparsity after `step` optimizer steps (0 before start, final from end)."""
    progress = min(max((step - start) / (end - start), 0.0), 1.0)
    return final + (0.0 - final) * (1.0 - progress) ** 3


def is_update_step(step: int, start: int, end: int, frequency: int) -> bool:
    """Masks are rebuilt at start, every `frequency` steps after it, and at end (so the final
    sparsity is reached whatever the frequency)."""
    return start <= step <= end and ((step - start) % frequency == 0 or step == end)


def resolve_steps(p, total_steps: int, steps_per_epoch: int) -> tuple[int, int]:
    """(start, end) in optimizer steps from prune.start / prune.end in prune.unit."""
    scale = {"fraction": total_steps, "epoch": steps_per_epoch, "step": 1}[p.unit]
    start, end = (int(round(v * scale)) for v in (p.start, p.end))
    if not 0 <= start < end <= total_steps:
        raise ConfigError(
            f"prune.start and prune.end (unit {p.unit}: steps {start} and {end}) must make a window "
            f"inside the run's {total_steps} steps, start before end"
        )
    return start, end


def prunable(model) -> list:
    """The layers with a conv or dense kernel, in the model's order."""
    import keras

    return [layer for layer in model.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))]


def kernel_sparsity(model) -> dict:
    """{"overall": zeros / weights over every conv and dense kernel, "layers": {name: fraction},
    "weights": their count}: what resnet-eval reports."""
    layers, zeros, total = {}, 0, 0
    for layer in prunable(model):
        kernel = np.asarray(layer.kernel.numpy())
        layers[layer.name] = float(np.mean(kernel == 0))
        zeros, total = zeros + int(np.sum(kernel == 0)), total + kernel.size
    return {"overall": zeros / max(total, 1), "layers": layers, "weights": total}


def excluded(name: str, exclude) -> bool:
    """An entry of prune.exclude names a layer, or a group of layers by the prefix before "_":
    `stem` is every conv of the stem (stem_conv, or ResNet-D's deep stem_conv1..3), `stage1` a stage."""
    return any(name == entry or name.startswith(entry + "_") for entry in exclude)


class Pruner:
    """The masks of one run and their schedule; `state` is what the checkpoint holds."""

    def __init__(self, model, strategy, final: float, start: int, end: int, frequency: int, scope: str, exclude=()):
        layers = [layer for layer in prunable(model) if not excluded(layer.name, exclude) and layer.kernel.trainable]
        if not layers:
            raise ConfigError(
                "prune.sparsity is set but no conv or dense kernel is left to prune: prune.exclude names them all, "
                "or finetune.freeze froze the rest"
            )
        self.names = [layer.name for layer in layers]
        self.kernels = [layer.kernel.value for layer in layers]  # the tf.Variables (mirrored ones under a strategy)
        self.final, self.start, self.end, self.frequency = float(final), int(start), int(end), int(frequency)
        self.scope, self.strategy = scope, strategy
        self.state = tf.Module(name="prune")
        with strategy.scope():
            self.state.masks = {
                name: tf.Variable(tf.ones_like(k), trainable=False, name=f"mask_{name}")
                for name, k in zip(self.names, self.kernels)
            }
            # Optimizer steps taken (float16's skipped ones too, like the loop's step), and the masks' sparsity.
            self.state.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="prune_step")
            self.state.sparsity = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="sparsity")
        self.masks = [self.state.masks[name] for name in self.names]

    @property
    def weights(self) -> int:
        return sum(int(np.prod(k.shape)) for k in self.kernels)

    def after_step(self) -> None:
        """In the compiled step, after strategy.run's optimizer step, in cross-replica context: a
        mirrored variable cannot be assigned per replica without an aggregation (Keras' optimizer
        also updates in cross-replica context). Every replica holds the same kernels, so masks
        rebuilt from the first replica's copy are every replica's; each device then masks its own copy."""
        step = self.state.step.assign_add(1)
        update = (step >= self.start) & (step <= self.end)
        update &= ((step - self.start) % self.frequency == 0) | (step == self.end)
        tf.cond(update, lambda: self._rebuild_masks(step), tf.no_op)
        for kernel, mask in zip(self.kernels, self.masks):
            self.strategy.extended.update(kernel, lambda k, m: k.assign(k * m), args=(mask,), group=False)

    def _target(self, step):
        progress = tf.clip_by_value(tf.cast(step - self.start, tf.float64) / float(self.end - self.start), 0.0, 1.0)
        return self.final + (0.0 - self.final) * (1.0 - progress) ** 3

    def _rebuild_masks(self, step) -> tf.Operation:
        target = self._target(step)
        # Ranked as masked: a pruned weight (moved by momentum since) stays pruned, the masks only grow.
        flat = [tf.reshape(tf.abs(k.read_value() * m), [-1]) for k, m in zip(self.kernels, self.masks)]
        if self.scope == "global":
            new = tf.split(_keep_largest(tf.concat(flat, 0), target), [int(f.shape[0]) for f in flat])
        else:
            new = [_keep_largest(f, target) for f in flat]
        updates = [m.assign(tf.reshape(n, m.shape)) for m, n in zip(self.masks, new)]
        with tf.control_dependencies(updates):
            zeros = tf.add_n([tf.reduce_sum(1.0 - n) for n in new])
            return self.state.sparsity.assign(tf.cast(zeros, tf.float64) / float(self.weights)).op

    def sparsity(self) -> float:
        """The fraction of the pruned kernels' weights their masks hold at zero."""
        return float(self.state.sparsity.numpy())


def _keep_largest(magnitudes, sparsity):
    """A 0/1 vector zeroing the round(sparsity * n) smallest `magnitudes` (ties: the earlier first)."""
    n = int(magnitudes.shape[0])
    count = tf.cast(tf.round(sparsity * n), tf.int32)
    order = tf.argsort(magnitudes, stable=True)
    pruned = order[:count]
    return tf.tensor_scatter_nd_update(
        tf.ones([n], magnitudes.dtype), pruned[:, None], tf.zeros([count], magnitudes.dtype)
    )


def from_config(cfg, model, strategy, total_steps: int, steps_per_epoch: int) -> Pruner | None:
    """The run's Pruner (None with prune.sparsity=0), its exclusions checked against the model."""
    p = cfg.prune
    if not p.sparsity:
        return None
    names = [layer.name for layer in prunable(model)]
    unknown = [entry for entry in p.exclude if not any(excluded(name, [entry]) for name in names)]
    if unknown:
        raise ConfigError(
            f"prune.exclude names no conv or dense layer of {model.name}: {', '.join(unknown)} (its {len(names)}: "
            f"{', '.join(names[:2])}, ..., {names[-1]}; `resnet-eval` lists them all)"
        )
    start, end = resolve_steps(p, total_steps, steps_per_epoch)
    pruner = Pruner(model, strategy, p.sparsity, start, end, p.frequency, p.scope, tuple(p.exclude))
    skipped = [layer.name for layer in prunable(model) if layer.name not in pruner.names]
    log.info("Pruning %d conv/dense kernels (%s weights; not pruned: %s) to %g%% sparsity (scope %s), from step "
             "%d to %d, masks rebuilt every %d steps", len(pruner.names), f"{pruner.weights:,}",
             ", ".join(skipped) or "none", 100 * p.sparsity, p.scope, start, end, p.frequency)  # fmt: skip
    return pruner
