"""Composing the packaged configs, and checks on a composed config that fail in milliseconds,
before data is loaded or a layer built. Every message names the setting, what was wrong and a
valid choice. No TensorFlow import at module level: the CLI's error messages (hydra_errors) and
runtime=auto's tuning read configs before TensorFlow starts.
"""
from __future__ import annotations

from pathlib import Path

from resnet_train import onednn, tuning
from resnet_train.errors import ConfigError


def load_config(overrides=(), config_name: str = "train"):
    """Composes the packaged configs with overrides, for notebooks and tests (no Hydra app run)."""
    from hydra import compose, initialize_config_dir

    config_dir = Path(__file__).parent / "configs"
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        return compose(config_name=config_name, overrides=list(overrides))


def _positive_int(cfg, key):
    value = cfg.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{key} must be a positive integer (got {value!r})")
    return value


def _positive_number(cfg, key, where):
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{where}.{key} must be a positive number (got {value!r})")


def validate(cfg) -> None:
    """Raises ConfigError for a config that cannot train."""
    from resnet_train import data, models, schedules  # TensorFlow's modules: imported when checking

    _positive_int(cfg, "epochs")
    steps = cfg.get("steps")
    if steps is not None and not _int_at_least(steps, 1):
        raise ConfigError(f"steps must be null or a positive integer, the run's length in optimizer steps "
                          f"(got {steps!r})")
    _positive_int(cfg, "batch_size")
    seed = cfg.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer (got {seed!r})")

    model = cfg.model
    variant = model.get("variant", "auto")
    shape = cfg.data.get("image_shape")
    if variant == "auto" and shape is None:
        # Shape unknown until the data is read: accept a depth valid for either family now,
        # the exact check follows once the image shape is known.
        try:
            models.layout("imagenet", model.depth)
        except ConfigError:
            models.layout("cifar", model.depth, model.get("block", "auto"))
    else:
        models.resolve_layout(model.depth, shape or (32, 32, 3), variant, model.get("block", "auto"))
    if model.get("shortcut", "auto") not in ("auto", "A", "B"):
        raise ConfigError(f"model.shortcut must be auto, A or B (got {model.get('shortcut')!r})")
    if model.get("padding", "symmetric") not in models.PADDINGS:
        raise ConfigError(f"model.padding must be {' or '.join(models.PADDINGS)} (got {model.get('padding')!r})")

    _positive_number(cfg.optimizer, "lr", "optimizer")
    wd = cfg.optimizer.get("weight_decay", 0.0)
    if isinstance(wd, bool) or not isinstance(wd, (int, float)) or wd < 0:
        raise ConfigError(f"optimizer.weight_decay must be >= 0 (got {wd!r})")
    _runtime(cfg.runtime)
    _checkpoint(cfg.get("checkpoint") or {})
    data.download_setting(cfg.data)
    # A warm-up longer than the run, where comparable before the data is read (same units).
    schedules.check_warmup_fits(cfg)


STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")


def _int_at_least(value, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _runtime(r) -> None:
    if r.get("strategy", "auto") not in STRATEGIES:
        raise ConfigError(f"runtime.strategy must be one of {', '.join(STRATEGIES)} (got {r.get('strategy')!r})")
    if r.get("precision", "auto") not in PRECISIONS:
        raise ConfigError(f"runtime.precision must be one of {', '.join(PRECISIONS)} (got {r.get('precision')!r})")
    onednn.normalise(r.get("onednn", "auto"))
    if not isinstance(r.get("deterministic", False), bool):
        raise ConfigError(f"runtime.deterministic must be true or false (got {r.get('deterministic')!r})")
    if not isinstance(r.get("xla", False), bool) and r.get("xla") != "auto":
        raise ConfigError(f"runtime.xla must be true, false or auto (got {r.get('xla')!r}); auto: what "
                          f"runtime=auto measured on this machine")
    spc = r.get("steps_per_call", 1)
    if not _int_at_least(spc, 1) and spc != "auto":
        raise ConfigError(f"runtime.steps_per_call must be an integer >= 1 or auto (got {spc!r}); auto: what "
                          f"runtime=auto measured on this machine")
    tuning.normalise_threads(r.get("threads", "auto"))
    for key, minimum in (("cpu_replicas", 1), ("max_nonfinite_steps", 0)):
        if not _int_at_least(r.get(key, minimum), minimum):
            raise ConfigError(f"runtime.{key} must be an integer >= {minimum} (got {r.get(key)!r})")


def _checkpoint(c) -> None:
    if not _int_at_least(c.get("keep", 3), 2):
        raise ConfigError(f"checkpoint.keep must be an integer >= 2, so that a damaged newest checkpoint "
                          f"has a fallback (got {c.get('keep')!r})")
    every = c.get("every_steps")
    if every is not None and not _int_at_least(every, 1):
        raise ConfigError(f"checkpoint.every_steps must be null or a positive integer (got {every!r})")


def check_against_data(cfg, info) -> None:
    """Checks that need the dataset's sizes."""
    if cfg.batch_size > info.train_size:
        raise ConfigError(
            f"batch_size={cfg.batch_size} is larger than the {info.train_size} training images of "
            f"{info.name}: choose batch_size <= {info.train_size}"
        )


def check_replicas(cfg, replicas: int) -> None:
    """batch_size is the global batch: it must split evenly over the replicas."""
    if cfg.batch_size % replicas:
        lower = cfg.batch_size - cfg.batch_size % replicas
        raise ConfigError(
            f"batch_size={cfg.batch_size} (the global batch) does not divide over {replicas} replicas: "
            f"use a multiple of {replicas}, e.g. {lower or replicas} or {lower + replicas}"
        )
