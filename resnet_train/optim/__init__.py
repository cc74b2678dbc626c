"""Optimizers, the weight-decay policy, gradient clipping and the linear lr scaling rule.

Optimizers (`optimizer.name`): sgd (momentum, optional Nesterov), adam, adamw, lamb (Keras' own)
and lars (ours, resnet_train/lars.py: Keras 3 has none).

Weight decay (`optimizer.weight_decay_mode`), per optimizer:
- coupled: the paper's L2. The trainer adds wd/2 ||w||^2 to the loss, so `wd * w` joins the
  gradient (as PyTorch's SGD `weight_decay`) and passes through momentum / Adam's moments.
  Default for sgd and adam (the original Adam paper's L2).
- decoupled: Loshchilov & Hutter 2019, `w -= lr * wd * w` beside the gradient step (Keras'
  `weight_decay`; lr is the scheduled lr). Default (and only choice) for adamw; default for lamb.
- trust_ratio: lars only; the decay enters the layer-wise trust ratio (You et al. 2017).
In every mode only kernels (rank >= 2) are decayed; BN gamma/beta and biases are not, unless
`optimizer.decay_bn=true` (`decayed` below is the one rule all modes use). LARS applies its trust
ratio to the same variables, whatever the decay (also with weight_decay=0): the others take plain
momentum SGD.

Gradient clipping by global norm (`optimizer.clip_norm`) is done by the trainer on the gradient
summed over replicas (`clip_by_global_norm`): Keras' `global_clipnorm` clips each replica's gradient
before the cross-replica sum, which is not the global norm under tf.distribute.

Schedules live in resnet_train/schedules.py.
"""

from __future__ import annotations

import keras

from resnet_train.config import schema, store
from resnet_train.errors import ConfigError
from resnet_train.optim.schedules import lr_schedule

OPTIMIZERS = tuple(schema.GROUPS["optimizer"])
# The weight-decay modes each optimizer accepts; the first is its default.
DECAY_MODES = {
    "sgd": ("coupled", "decoupled"),
    "adam": ("coupled", "decoupled"),
    "adamw": ("decoupled",),
    "lamb": ("decoupled", "coupled"),
    "lars": ("trust_ratio",),
}


def _typed(cfg):
    """The optimizer settings (a mapping, e.g. from a notebook) typed by the schema of their name."""
    return store.group_config("optimizer", cfg)


def lr_reference(cfg, batch_size: int) -> int:
    """The batch size `optimizer.lr` is given for (null: the batch in use, i.e. no scaling)."""
    cfg = _typed(cfg)
    reference = cfg.lr_batch_reference
    if reference is None:
        return batch_size
    if reference < 1:
        raise ConfigError(f"optimizer.lr_batch_reference must be a positive integer (got {reference!r})")
    return reference


def effective_lr(cfg, batch_size: int) -> float:
    """The linear scaling rule (Goyal et al. 2017): lr x global batch / reference batch, so that
    changing the batch (or the number of GPUs) does not silently change the recipe."""
    return float(cfg.lr) * batch_size / lr_reference(cfg, batch_size)


def optimizer_name(cfg) -> str:
    return _typed(cfg).name


def decay_mode(cfg) -> str:
    """`optimizer.weight_decay_mode`, checked against what the optimizer supports."""
    cfg = _typed(cfg)
    name = cfg.name
    allowed = DECAY_MODES[name]
    mode = cfg.weight_decay_mode
    if mode not in allowed:
        raise ConfigError(f"optimizer.weight_decay_mode for {name} must be {' or '.join(allowed)} (got {mode!r})")
    return mode


def coupled_weight_decay(cfg) -> float:
    """The L2 coefficient the trainer adds to the loss: weight_decay in coupled mode, else 0 (the
    optimizer applies it)."""
    cfg = _typed(cfg)
    return float(cfg.weight_decay) if decay_mode(cfg) == "coupled" else 0.0


def clip_norm(cfg):
    """`optimizer.clip_norm` (global norm of the summed gradient) as a float, or None (off)."""
    cfg = _typed(cfg)
    value = cfg.clip_norm
    if value is None:
        return None
    if value <= 0:
        raise ConfigError(
            f"optimizer.clip_norm must be a positive number, e.g. 1.0, or null for no clipping (got {value!r})"
        )
    return float(value)


def _float(cfg, key: str, low: float, high: float) -> float:
    value = cfg[key]
    if not low <= value <= high:
        raise ConfigError(f"optimizer.{key} must be a number in [{low:g}, {high:g}] (got {value!r})")
    return float(value)


def _make(name: str, cfg, schedule, weight_decay, ema: dict):
    if name == "sgd":
        return keras.optimizers.SGD(
            schedule,
            momentum=_float(cfg, "momentum", 0.0, 1.0),
            nesterov=cfg.nesterov,
            weight_decay=weight_decay,
            **ema,
        )
    if name == "lars":
        from resnet_train.optim.lars import LARS

        return LARS(
            schedule,
            momentum=_float(cfg, "momentum", 0.0, 1.0),
            eta=_float(cfg, "eta", 1e-12, 1.0),
            weight_decay=weight_decay or 0.0,
            **ema,
        )
    adam_args = {
        "beta_1": _float(cfg, "beta_1", 0.0, 0.999999),
        "beta_2": _float(cfg, "beta_2", 0.0, 0.999999),
        "epsilon": _float(cfg, "epsilon", 1e-12, 1.0),
    }
    cls = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW, "lamb": keras.optimizers.Lamb}[name]
    if name == "adamw":
        weight_decay = weight_decay or 0.0  # AdamW refuses None
    return cls(schedule, weight_decay=weight_decay, **adam_args, **ema)


def build_optimizer(cfg, schedule, loss_scaling: bool = False, ema_decay=None, variables=None):
    """The `optimizer` config group. `variables` (the model's trainable variables) tell the
    optimizer which ones are spared from decoupled / LARS decay; needed when that decay is on.
    `loss_scaling` wraps it in keras' LossScaleOptimizer (dynamic scale) for float16.
    `ema_decay` keeps Keras' exponential moving average of the weights (optimizer variables, so
    they are checkpointed with it)."""
    cfg = _typed(cfg)
    name, mode = optimizer_name(cfg), decay_mode(cfg)
    ema = {}
    if ema_decay is not None:
        ema = {"use_ema": True, "ema_momentum": float(ema_decay)}
    wd = float(cfg.weight_decay)
    optimizer = _make(name, cfg, schedule, wd if mode != "coupled" and wd else None, ema)
    # LARS spares the same variables from its trust ratio as from decay, so it needs them whatever
    # the decay (with weight_decay=0 too).
    if mode == "trust_ratio" or (mode != "coupled" and wd):
        if variables is None:
            raise ValueError(
                f"{name} with weight_decay_mode={mode} needs the model's variables (variables=) to "
                f"spare BN and biases from its decay or trust ratio"
            )
        decay_bn = cfg.decay_bn
        optimizer.exclude_from_weight_decay(var_list=[v for v in variables if not decayed(v, decay_bn)])
    return keras.optimizers.LossScaleOptimizer(optimizer) if loss_scaling else optimizer


def check(cfg) -> None:
    """Every optimizer, schedule and EMA setting of a train config, before any data is read (the
    real sizes come later; placeholders are enough to validate). It builds Keras objects, so it
    runs after runtime.configure has set up TensorFlow's devices."""
    lr_reference(cfg.optimizer, cfg.batch_size)
    lr_schedule(cfg.schedule, 1.0, 1000, 10, reference_lr=1.0)
    clip_norm(cfg.optimizer)
    build_optimizer(cfg.optimizer, 0.1, ema_decay=cfg.ema.decay, variables=[])
    head_lr_mult = cfg.finetune.head_lr_mult
    if head_lr_mult != 1.0 and optimizer_name(cfg.optimizer) != "sgd":
        # The trainer scales the head's gradients: a larger lr for SGD only (Adam, LAMB and LARS
        # normalise the gradient away).
        raise ConfigError(
            f"finetune.head_lr_mult={head_lr_mult} works with optimizer=sgd only "
            f"(got optimizer={cfg.optimizer.name}); use finetune.head_lr_mult=1.0"
        )


def decayed(variable, decay_bn: bool = False) -> bool:
    """Kernels (rank >= 2) are decayed; BN gamma/beta and biases (rank 1) only with decay_bn."""
    return decay_bn or len(variable.shape) >= 2


def clip_by_global_norm(grads, clip_norm: float, loss_scale=None):
    """Each replica's gradients x min(1, clip_norm / ||g||), ||g|| the global norm of the gradient
    summed over replicas (what the optimizer applies), unscaled by the float16 loss scale. The same
    factor on every replica, so the sum the optimizer then takes is the clipped global gradient.
    Costs one extra all-reduce of the gradients, only when clipping is on."""
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    summed = grads
    if context is not None and context.num_replicas_in_sync > 1:
        summed = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
    norm = tf.linalg.global_norm(summed)
    if loss_scale is not None:
        norm = norm / tf.cast(loss_scale, norm.dtype)
    # A zero norm gives 1. A non-finite norm gives NaN gradients, so that the loss-scale optimizer
    # skips the step (and lowers the scale) rather than applying a zeroed one.
    factor = tf.where(tf.math.is_finite(norm), tf.minimum(1.0, clip_norm / norm), float("nan"))
    return [g * tf.cast(factor, g.dtype) for g in grads]
