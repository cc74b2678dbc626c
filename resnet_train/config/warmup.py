"""A warm-up against the run's length, checked without TensorFlow: config.validate refuses a
warm-up longer than the run before TensorFlow starts (optim/schedules.py builds the schedules and
checks again once the data's size is known)."""

from __future__ import annotations

from resnet_train.errors import ConfigError


def warmup(cfg) -> tuple[str | None, float]:
    """(the key that sets the warm-up, its length in that key's unit), or (None, 0) for none:
    `schedule.warmup_epochs` (fractions allowed) or `schedule.warmup_steps`, not both."""
    epochs, steps = cfg.warmup_epochs, cfg.warmup_steps
    if epochs < 0:
        raise ConfigError(f"schedule.warmup_epochs must be a number >= 0, e.g. 5 (got {epochs!r})")
    if steps < 0:
        raise ConfigError(f"schedule.warmup_steps must be an integer >= 0, e.g. 400 (got {steps!r})")
    if epochs and steps:
        raise ConfigError(
            f"schedule.warmup_epochs={epochs:g} and schedule.warmup_steps={steps} both set the "
            f"warm-up: keep one, set the other to 0"
        )
    if epochs:
        return "warmup_epochs", float(epochs)
    return ("warmup_steps", steps) if steps else (None, 0)


def _epochs(n) -> str:
    return f"{n:g} epoch{'' if n == 1 else 's'}"


def check_warmup_fits(cfg, steps_per_epoch: int | None = None) -> None:
    """Refuses a warm-up longer than the run (a train config: `schedule`, `epochs`, `steps`). Without
    `steps_per_epoch` (before the data is read) only what is comparable: warmup_epochs against
    epochs, warmup_steps against steps; with it, any pair."""
    key, length = warmup(cfg.schedule)
    if key is None:
        return
    steps = cfg.steps
    run_key = "steps" if steps is not None else "epochs"
    same_unit = (key == "warmup_steps") == (run_key == "steps")
    if same_unit:
        if length <= (steps if run_key == "steps" else cfg.epochs):
            return
        warm, run = "", (f"steps={steps}" if run_key == "steps" else _epochs(cfg.epochs))
    else:
        if steps_per_epoch is None:
            return  # checked once the data's size is known
        total = steps if run_key == "steps" else cfg.epochs * steps_per_epoch
        warm_steps = round(length * steps_per_epoch) if key == "warmup_epochs" else length
        if warm_steps <= total:
            return
        warm = f" ({warm_steps} steps)" if key == "warmup_epochs" else ""
        run = f"steps={steps}" if run_key == "steps" else f"{_epochs(cfg.epochs)} = {total} steps"
    raise ConfigError(f"schedule.{key}={length:g}{warm} is longer than the run ({run}): lower it or raise {run_key}")
