"""Optimizer, learning-rate schedule and the weight-decay policy.

Weight decay is the paper's coupled L2: the trainer adds `weight_decay * w` to the gradient of
each decayed variable (the same as a loss term weight_decay/2 * ||w||^2, and as PyTorch's SGD
`weight_decay`). Decayed: conv and dense kernels. Not decayed: batch-norm gamma/beta and biases,
unless `optimizer.decay_bn=true`.
"""
from __future__ import annotations

import keras
from keras import ops

from resnet_train.errors import ConfigError

SCHEDULES = ("step", "cosine", "constant")


@keras.saving.register_keras_serializable(package="resnet_train")
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """Linear ramp from 0 to the wrapped schedule's value over `warmup_steps`, then that schedule."""

    def __init__(self, after, warmup_steps: int):
        self.after = after
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        ramp = (step + 1.0) / float(self.warmup_steps)
        return ops.where(step < self.warmup_steps, ramp * self.after(step), self.after(step))

    def get_config(self):
        return {"after": keras.saving.serialize_keras_object(self.after), "warmup_steps": self.warmup_steps}


def lr_schedule(cfg, base_lr: float, total_steps: int, steps_per_epoch: int):
    """The `schedule` config group as a per-step Keras schedule (so resuming mid-epoch is exact)."""
    name = cfg.get("name")
    if name == "step":
        milestones = list(cfg.get("milestones", [0.5, 0.75]))
        if any(not 0 < m < 1 for m in milestones) or milestones != sorted(milestones):
            raise ConfigError(
                f"schedule.milestones are increasing fractions of training between 0 and 1 "
                f"(e.g. [0.5, 0.75] for 91 and 136 of 182 epochs), got {milestones}"
            )
        factor = float(cfg.get("factor", 0.1))
        boundaries = [max(1, round(m * total_steps)) for m in milestones]
        values = [base_lr * factor**i for i in range(len(milestones) + 1)]
        schedule = keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    elif name == "cosine":
        schedule = keras.optimizers.schedules.CosineDecay(
            base_lr, decay_steps=max(1, total_steps), alpha=float(cfg.get("floor", 0.0))
        )
    elif name == "constant":
        schedule = keras.optimizers.schedules.PiecewiseConstantDecay([total_steps + 1], [base_lr, base_lr])
    else:
        raise ConfigError(f"schedule.name must be one of {', '.join(SCHEDULES)} (got {name!r})")
    warmup_steps = round(float(cfg.get("warmup_epochs", 0)) * steps_per_epoch)
    return LinearWarmup(schedule, warmup_steps) if warmup_steps > 0 else schedule


def lr_reference(cfg, batch_size: int) -> int:
    """The batch size `optimizer.lr` is given for (null: the batch in use, i.e. no scaling)."""
    reference = cfg.get("lr_batch_reference")
    if reference is None:
        return batch_size
    if not isinstance(reference, int) or isinstance(reference, bool) or reference < 1:
        raise ConfigError(f"optimizer.lr_batch_reference must be a positive integer (got {reference!r})")
    return reference


def effective_lr(cfg, batch_size: int) -> float:
    """The linear scaling rule (Goyal et al. 2017): lr x global batch / reference batch, so that
    changing the batch (or the number of GPUs) does not silently change the recipe."""
    return float(cfg.lr) * batch_size / lr_reference(cfg, batch_size)


def build_optimizer(cfg, schedule, loss_scaling: bool = False, ema_decay=None):
    """The `optimizer` config group. Weight decay is not the optimizer's job here (see above).
    `loss_scaling` wraps it in keras' LossScaleOptimizer (dynamic scale) for float16.
    `ema_decay` keeps Keras' exponential moving average of the weights (optimizer variables, so
    they are checkpointed with it)."""
    name = cfg.get("name")
    ema = {}
    if ema_decay is not None:
        if not 0.0 < float(ema_decay) < 1.0:
            raise ConfigError(f"ema.decay must be in (0, 1), e.g. 0.999 (got {ema_decay})")
        ema = {"use_ema": True, "ema_momentum": float(ema_decay)}
    if name == "sgd":
        optimizer = keras.optimizers.SGD(
            learning_rate=schedule,
            momentum=float(cfg.get("momentum", 0.9)),
            nesterov=bool(cfg.get("nesterov", False)),
            **ema,
        )
    else:
        raise ConfigError(f"optimizer.name must be sgd (got {name!r}); more optimizers are planned")
    return keras.optimizers.LossScaleOptimizer(optimizer) if loss_scaling else optimizer


def decayed(variable, decay_bn: bool = False) -> bool:
    """Kernels (rank >= 2) are decayed; BN gamma/beta and biases (rank 1) only with decay_bn."""
    return decay_bn or len(variable.shape) >= 2
