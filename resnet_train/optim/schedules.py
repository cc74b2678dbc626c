"""Learning-rate schedules, all per step (so a run resumed mid-epoch continues the exact curve).

The `schedule` config group: step, cosine, onecycle, exponential, constant, each with an optional
warm-up of `schedule.warmup_epochs` epochs or `schedule.warmup_steps` steps: linear from 0
(`warmup_mode=linear`), linear from the lr of the reference batch (`optimizer.lr`, before the
linear scaling rule) up to the scaled lr (`warmup_mode=gradual`, Goyal et al. 2017's "gradual
warmup": none at or below the reference batch), or the lr x `warmup_factor` held constant
(`warmup_mode=constant`, He et al. 2016's 0.01 for ~400 iterations before 0.1). Keras' own
schedules where it has them; OneCycle and the warm-up wrappers are ours (Keras has neither).

The run's length (`run_length`): `epochs` whole epochs, or exactly `steps` optimizer steps when
that is set (epochs = the epochs they take, the last one cut short).
"""

from __future__ import annotations

import math

import keras
from keras import ops

from resnet_train.config import store
from resnet_train.config.warmup import check_warmup_fits, warmup
from resnet_train.errors import ConfigError

SCHEDULES = ("step", "cosine", "onecycle", "exponential", "constant")
MILESTONE_UNITS = ("fraction", "epoch", "step")
ANNEALS = ("cos", "linear")
WARMUP_MODES = ("linear", "gradual", "constant")


@keras.saving.register_keras_serializable(package="resnet_train")
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """Linear ramp over `warmup_steps` to the wrapped schedule's value, then that schedule. From 0
    (`start=0`): step 0 is already one increment up (no step at lr 0). From `start` x the value
    (Goyal et al.'s gradual warm-up): exactly that at step 0, the full value at `warmup_steps`."""

    def __init__(self, after, warmup_steps: int, start: float = 0.0):
        self.after = after
        self.warmup_steps, self.start = int(warmup_steps), float(start)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        if self.start:
            ramp = self.start + (1.0 - self.start) * step / float(self.warmup_steps)
        else:
            ramp = (step + 1.0) / float(self.warmup_steps)
        return ops.where(step < self.warmup_steps, ramp * self.after(step), self.after(step))

    def get_config(self):
        after = keras.saving.serialize_keras_object(self.after)
        return {"after": after, "warmup_steps": self.warmup_steps, "start": self.start}

    @classmethod
    def from_config(cls, config):
        after = keras.saving.deserialize_keras_object(config["after"])
        return cls(after, config["warmup_steps"], config["start"] if "start" in config else 0.0)


@keras.saving.register_keras_serializable(package="resnet_train")
class ConstantWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """`factor` x the wrapped schedule's value for the first `warmup_steps`, then that schedule
    (He et al. 2016, sec. 4.2: lr 0.01 for ~400 iterations, "then go back to 0.1")."""

    def __init__(self, after, warmup_steps: int, factor: float = 0.1):
        self.after = after
        self.warmup_steps, self.factor = int(warmup_steps), float(factor)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        value = self.after(step)
        return ops.where(step < self.warmup_steps, self.factor * value, value)

    def get_config(self):
        return {
            "after": keras.saving.serialize_keras_object(self.after),
            "warmup_steps": self.warmup_steps,
            "factor": self.factor,
        }

    @classmethod
    def from_config(cls, config):
        return cls(keras.saving.deserialize_keras_object(config["after"]), config["warmup_steps"], config["factor"])


@keras.saving.register_keras_serializable(package="resnet_train")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """Smith & Topin 2017 one-cycle, as PyTorch's OneCycleLR: from peak / div_factor up to `peak`
    over the first `pct_start` of the steps, then down to peak / div_factor / final_div_factor at
    the last step; `anneal` cos or linear for both phases."""

    def __init__(
        self,
        peak: float,
        total_steps: int,
        pct_start: float = 0.3,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        anneal: str = "cos",
    ):
        self.peak, self.total_steps, self.pct_start = float(peak), int(total_steps), float(pct_start)
        self.div_factor, self.final_div_factor, self.anneal = float(div_factor), float(final_div_factor), anneal

    def _interpolate(self, start, end, pct):
        if self.anneal == "cos":
            return end + (start - end) / 2.0 * (1.0 + ops.cos(math.pi * pct))
        return start + (end - start) * pct

    def __call__(self, step):
        step = ops.cast(step, "float32")
        initial = self.peak / self.div_factor
        final = initial / self.final_div_factor
        # The peak is reached at step pct_start * total - 1 and the floor at the last step (total - 1).
        up_end = max(1.0, self.pct_start * self.total_steps - 1.0)
        down_len = max(1.0, self.total_steps - 1.0 - up_end)
        up = self._interpolate(initial, self.peak, ops.clip(step / up_end, 0.0, 1.0))
        down = self._interpolate(self.peak, final, ops.clip((step - up_end) / down_len, 0.0, 1.0))
        return ops.where(step <= up_end, up, down)

    def get_config(self):
        return {
            "peak": self.peak,
            "total_steps": self.total_steps,
            "pct_start": self.pct_start,
            "div_factor": self.div_factor,
            "final_div_factor": self.final_div_factor,
            "anneal": self.anneal,
        }


def _number(cfg, key: str, low: float, high: float = math.inf, example: str = "") -> float:
    """cfg[key] as a float in (low, high), or a ConfigError naming the key and a valid value."""
    value = cfg[key]
    if not low < value < high:
        bounds = f"in ({low:g}, {high:g})" if high != math.inf else f"> {low:g}"
        raise ConfigError(f"schedule.{key} must be a number {bounds}{example} (got {value!r})")
    return float(value)


def milestone_steps(cfg, total_steps: int, steps_per_epoch: int) -> list[int]:
    """The steps at which the step schedule multiplies the lr by `factor`, from
    `schedule.milestones` in `schedule.milestones_unit`: fraction (of training, the default),
    epoch or step."""
    unit = cfg.milestones_unit
    if unit not in MILESTONE_UNITS:
        raise ConfigError(f"schedule.milestones_unit must be one of {', '.join(MILESTONE_UNITS)} (got {unit!r})")
    milestones = list(cfg.milestones)
    if unit == "fraction" and (any(not 0 < m < 1 for m in milestones) or milestones != sorted(milestones)):
        raise ConfigError(
            f"schedule.milestones are increasing fractions of training between 0 and 1 "
            f"(e.g. [0.5, 0.75] for 91 and 136 of 182 epochs; or set schedule.milestones_unit=epoch), "
            f"got {milestones}"
        )
    if unit != "fraction" and (any(m <= 0 for m in milestones) or milestones != sorted(milestones)):
        raise ConfigError(
            f"schedule.milestones must be increasing positive {unit}s (e.g. [30, 60, 80]), got {milestones}"
        )
    per_unit = {"fraction": total_steps, "epoch": steps_per_epoch, "step": 1}[unit]
    return [max(1, round(m * per_unit)) for m in milestones]


def lr_schedule(cfg, base_lr: float, total_steps: int, steps_per_epoch: int, reference_lr: float | None = None):
    """The `schedule` config group as a per-step Keras schedule peaking at `base_lr`. `reference_lr`:
    the lr at the recipe's reference batch (`optimizer.lr`), where warmup_mode=gradual starts."""
    cfg = store.group_config("schedule", cfg)  # a mapping (a notebook's) typed by its name's schema
    name = cfg.name
    if name == "step":
        factor = _number(cfg, "factor", 0.0, 1.0, " e.g. 0.1")
        # PiecewiseConstantDecay keeps the old value at its boundary: the new lr starts at the milestone.
        boundaries = [m - 1 for m in milestone_steps(cfg, total_steps, steps_per_epoch)]
        values = [base_lr * factor**i for i in range(len(boundaries) + 1)]
        schedule = keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    elif name == "cosine":
        floor = cfg.floor
        if floor != 0.0:
            floor = _number(cfg, "floor", 0.0, 1.0, " (a fraction of the lr, e.g. 0.01)")
        schedule = keras.optimizers.schedules.CosineDecay(base_lr, decay_steps=max(1, total_steps), alpha=floor)
    elif name == "onecycle":
        anneal = cfg.anneal
        if anneal not in ANNEALS:
            raise ConfigError(f"schedule.anneal must be one of {', '.join(ANNEALS)} (got {anneal!r})")
        schedule = OneCycle(
            base_lr,
            max(1, total_steps),
            _number(cfg, "pct_start", 0.0, 1.0, " e.g. 0.3"),
            _number(cfg, "div_factor", 0.0, example=" e.g. 25"),
            _number(cfg, "final_div_factor", 0.0, example=" e.g. 1e4"),
            anneal,
        )
    elif name == "exponential":
        # lr x decay_rate every decay_epochs (continuously, or in steps with staircase).
        rate = _number(cfg, "decay_rate", 0.0, 1.0, " e.g. 0.97")
        every = _number(cfg, "decay_epochs", 0.0, example=" e.g. 2.4")
        schedule = keras.optimizers.schedules.ExponentialDecay(
            base_lr, decay_steps=max(1, round(every * steps_per_epoch)), decay_rate=rate, staircase=cfg.staircase
        )
    else:  # constant
        schedule = keras.optimizers.schedules.PiecewiseConstantDecay([total_steps + 1], [base_lr, base_lr])
    key, length = warmup(cfg)
    mode = cfg.warmup_mode
    if mode not in WARMUP_MODES:
        raise ConfigError(f"schedule.warmup_mode must be one of {', '.join(WARMUP_MODES)} (got {mode!r})")
    steps = round(length * steps_per_epoch) if key == "warmup_epochs" else int(length)
    if mode == "constant":
        factor = _number(cfg, "warmup_factor", 0.0, 1.0, " (the warm-up's lr as a fraction of the lr, e.g. 0.1)")
        return ConstantWarmup(schedule, steps, factor) if steps > 0 else schedule
    if mode == "gradual":
        if reference_lr is None:
            raise ValueError("warmup_mode=gradual starts at the reference batch's lr: pass reference_lr=optimizer.lr")
        start = min(1.0, reference_lr / base_lr)  # at or below the reference batch: no warm-up
        return LinearWarmup(schedule, steps, start) if steps > 0 and start < 1.0 else schedule
    return LinearWarmup(schedule, steps) if steps > 0 else schedule


def run_length(cfg, steps_per_epoch: int) -> tuple[int, int]:
    """(epochs, optimizer steps) of a train config's run: `steps` when set (epochs = the epochs
    they take, the last one cut short: `epochs` is not used), else `epochs` whole epochs. Refuses
    a warm-up longer than that."""
    check_warmup_fits(cfg, steps_per_epoch)
    steps = cfg.steps
    if steps is None:
        return cfg.epochs, cfg.epochs * steps_per_epoch
    return math.ceil(steps / steps_per_epoch), int(steps)


def curve(schedule, total_steps: int):
    """The schedule's lr at every step 0 .. total_steps - 1, as a numpy array."""
    import numpy as np

    return np.asarray(schedule(np.arange(max(1, total_steps), dtype="float32")), dtype="float64")
