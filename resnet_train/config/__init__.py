"""Composing the packaged configs, and checks on a composed config that fail in milliseconds,
before data is loaded or a layer built. Every message names the setting, what was wrong and a
valid choice. No TensorFlow import at module level: the CLI's error messages (hydra_errors) and
runtime=auto's tuning read configs before TensorFlow starts.
"""

from __future__ import annotations

from pathlib import Path

from resnet_train.config import store, task_checks, warmup
from resnet_train.errors import RETRY_EXIT_CODES, ConfigError
from resnet_train.runtime import device_pool, onednn, threads


def load_config(overrides=(), config_name: str = "train"):
    """Composes the packaged configs with overrides, for notebooks and tests (no Hydra app run)."""
    from hydra import compose, initialize_config_dir

    store.register()
    config_dir = Path(__file__).parents[1] / "configs"
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        return compose(config_name=config_name, overrides=list(overrides))


def flatten(node, prefix="") -> dict:
    """{"optimizer.lr": 0.1, ...}: the leaves of a nested mapping under dotted keys."""
    flat = {}
    for key, value in node.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# Types are the schema's (schema.py, enforced by Hydra at composition); these are the ranges and choices.
def _at_least(key: str, value, minimum: int) -> None:
    if value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ConfigError(f"{key} must be {what} (got {value!r})")


def _known_image_shape(d):
    """The images' shape where the config alone tells it (None: known once the data is read)."""
    if d.source == "synthetic":
        return tuple(d.image_shape)
    if d.source in ("embedded", "folder", "tfrecord") or (d.source == "tfds" and not d.cache):
        return (d.image_size, d.image_size, 3)
    return None


def _strikes_back(cfg) -> None:
    """The training pieces of "ResNet strikes back": stochastic depth, ResNet-D, BCE, repeated aug."""
    from resnet_train import models

    models.check_tricks(cfg.model.drop_path, cfg.model.style)
    _loss(cfg.loss, cfg.data.task == "multilabel")
    _at_least("data.repeated_aug", cfg.data.repeated_aug, 1)


def _loss(loss, multilabel: bool) -> None:
    if loss.name not in ("ce", "bce"):
        raise ConfigError(f"loss.name must be ce or bce (got {loss.name!r}); choose one with loss=ce or loss=bce")
    threshold = loss.target_threshold  # (a multi-label run trains with bce whatever loss.name says)
    if threshold is not None and ((loss.name != "bce" and not multilabel) or not 0.0 <= threshold < 1.0):
        raise ConfigError(f"loss.target_threshold is for loss=bce, in [0, 1) (got {threshold:g} with loss={loss.name})")


def validate(cfg) -> None:
    """Raises ConfigError for a config that cannot train."""
    from resnet_train import models  # (its layers, which import TensorFlow, load when a model is built)

    _at_least("epochs", cfg.epochs, 1)
    if cfg.steps is not None and cfg.steps < 1:
        raise ConfigError(
            f"steps must be null or a positive integer, the run's length in optimizer steps (got {cfg.steps!r})"
        )
    _at_least("batch_size", cfg.batch_size, 1)
    if cfg.seed < 0:
        raise ConfigError(f"seed must be a non-negative integer (got {cfg.seed!r})")

    model = cfg.model
    shape = _known_image_shape(cfg.data)
    if model.variant == "auto" and shape is None:
        # Shape unknown until the data is read: accept a depth valid for either family now,
        # the exact check follows once the image shape is known.
        try:
            models.layout("imagenet", model.depth)
        except ConfigError:
            models.layout("cifar", model.depth, model.block)
    else:
        models.resolve_layout(model.depth, shape or (32, 32, 3), model.variant, model.block)
    if model.shortcut not in ("auto", "A", "B"):
        raise ConfigError(f"model.shortcut must be auto, A or B (got {model.shortcut!r})")
    if model.padding not in models.PADDINGS:
        raise ConfigError(f"model.padding must be {' or '.join(models.PADDINGS)} (got {model.padding!r})")
    _strikes_back(cfg)
    task_checks.check_task(cfg)

    if cfg.optimizer.lr <= 0:
        raise ConfigError(f"optimizer.lr must be a positive number (got {cfg.optimizer.lr:g})")
    _at_least("optimizer.accumulate_steps", cfg.optimizer.accumulate_steps, 1)
    if cfg.optimizer.weight_decay < 0:
        raise ConfigError(f"optimizer.weight_decay must be >= 0 (got {cfg.optimizer.weight_decay:g})")
    if not 0.0 <= cfg.augment.label_smoothing < 1.0:
        raise ConfigError(f"augment.label_smoothing must be in [0, 1) (got {cfg.augment.label_smoothing:g})")
    if cfg.ema.decay is not None and not 0.0 < cfg.ema.decay < 1.0:
        raise ConfigError(f"ema.decay must be in (0, 1), e.g. 0.999 (got {cfg.ema.decay:g})")
    if cfg.data.shard not in ("batches", "files"):
        raise ConfigError(
            f"data.shard must be batches (every worker reads all and keeps its slice of each batch) or "
            f"files (every worker reads only its own files) (got {cfg.data.shard!r})"
        )
    if cfg.data.sampling not in ("natural", "balanced"):
        raise ConfigError(
            f"data.sampling must be natural or balanced (each class equally often) (got {cfg.data.sampling!r})"
        )
    _finetune(cfg.finetune)
    _runtime(cfg.runtime)
    _distill(cfg.distill)
    _checkpoint(cfg.checkpoint)
    _early_stop(cfg.early_stop, cfg.data.val_split)
    _log(cfg.log)
    _tracking(cfg)
    _prune(cfg.prune, cfg.ema.decay)
    # A warm-up longer than the run, where comparable before the data is read (same units).
    warmup.check_warmup_fits(cfg)


STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")


def _int_at_least(value, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _runtime(r) -> None:
    if r.strategy not in STRATEGIES:
        raise ConfigError(f"runtime.strategy must be one of {', '.join(STRATEGIES)} (got {r.strategy!r})")
    if r.precision not in PRECISIONS:
        raise ConfigError(f"runtime.precision must be one of {', '.join(PRECISIONS)} (got {r.precision!r})")
    onednn.normalise(r.onednn)
    if not isinstance(r.xla, bool) and r.xla != "auto":
        raise ConfigError(
            f"runtime.xla must be true, false or auto (got {r.xla!r}); auto: what runtime=auto measured on this machine"
        )
    if not _int_at_least(r.steps_per_call, 1) and r.steps_per_call != "auto":
        raise ConfigError(
            f"runtime.steps_per_call must be an integer >= 1 or auto (got {r.steps_per_call!r}); "
            f"auto: what runtime=auto measured on this machine"
        )
    threads.normalise(r.threads)
    _at_least("runtime.cpu_replicas", r.cpu_replicas, 1)
    device_pool.check(r)
    _at_least("runtime.max_nonfinite_steps", r.max_nonfinite_steps, 0)
    if r.retry_exit_code is not None and not (
        _int_at_least(r.retry_exit_code, 0) and r.retry_exit_code in RETRY_EXIT_CODES
    ):
        raise ConfigError(
            f"runtime.retry_exit_code must be null (75 for a stop, 4 for a lost peer) or an exit code from 4 to "
            f"255 (got {r.retry_exit_code!r}): 0-3 mean done, a crash, bad input and a diverged run; Kubeflow's "
            f"restartPolicy: ExitCode retries 138"
        )
    if r.strategy == "multi_worker" and r.devices is not None:
        raise ConfigError(
            "runtime.devices is not used under runtime=multi_worker (each worker uses its own "
            "GPUs, or its CPU): remove it"
        )


def _finetune(f) -> None:
    if f.normalization not in ("source", "data"):
        raise ConfigError(
            f"finetune.normalization must be source (the init_from model's input statistics) or data (this "
            f"dataset's) (got {f.normalization!r})"
        )


def _distill(d) -> None:
    if not d.temperature > 0:
        raise ConfigError(f"distill.temperature must be > 0, e.g. 4 (got {d.temperature:g})")
    if not 0.0 <= d.alpha <= 1.0:
        raise ConfigError(f"distill.alpha must be in [0, 1], the soft targets' weight in the loss (got {d.alpha:g})")
    if d.teacher and str(d.teacher).startswith("keras_applications:"):  # no head of our classes, no depth in it
        raise ConfigError(
            f"distill.teacher={d.teacher}: keras.applications weights cannot teach directly: fine-tune them on "
            f"this data first (init_from={d.teacher}) and give that run as distill.teacher"
        )


def _checkpoint(c) -> None:
    if c.keep < 2:
        raise ConfigError(
            f"checkpoint.keep must be an integer >= 2, so that a damaged newest checkpoint "
            f"has a fallback (got {c.keep!r})"
        )
    from resnet_train.report.class_metrics import BEST_METRICS

    if c.best_metric not in BEST_METRICS:
        raise ConfigError(f"checkpoint.best_metric must be one of {', '.join(BEST_METRICS)} (got {c.best_metric!r})")
    if c.every_steps is not None and c.every_steps < 1:
        raise ConfigError(f"checkpoint.every_steps must be null or a positive integer (got {c.every_steps!r})")


def _log(g) -> None:
    if g.every_steps is not None and g.every_steps < 1:
        raise ConfigError(f"log.every_steps must be null or a positive integer (got {g.every_steps!r})")
    if g.every_seconds is not None and g.every_seconds <= 0:
        raise ConfigError(f"log.every_seconds must be null or a positive number of seconds (got {g.every_seconds:g})")


LOGGERS = ("tensorboard", "mlflow", "wandb")


def _tracking(cfg) -> None:
    for name in cfg.logger:
        if name not in LOGGERS:
            raise ConfigError(
                f"logger entries must be among {', '.join(LOGGERS)}, e.g. logger=[tensorboard,mlflow] (got {name!r})"
            )
    if len(set(cfg.logger)) != len(cfg.logger):
        raise ConfigError(f"logger names a logger twice (got {list(cfg.logger)})")
    if cfg.wandb.mode not in ("online", "offline"):
        raise ConfigError(f"wandb.mode must be online or offline (got {cfg.wandb.mode!r})")


def _early_stop(e, val_split) -> None:
    if e.patience is not None and e.patience < 1:
        raise ConfigError(f"early_stop.patience must be null or a positive number of epochs (got {e.patience!r})")
    if e.patience is not None and not val_split:  # it would stop on the test set's figures
        raise ConfigError(
            "early_stop.patience needs a validation split to watch: add data.val_split=0.1 (or a count of "
            "images); without one it would stop on the test set"
        )
    if e.min_delta < 0:
        raise ConfigError(f"early_stop.min_delta must be >= 0 (got {e.min_delta:g})")


def _prune(p, ema_decay) -> None:
    if not 0.0 <= p.sparsity < 1.0:
        raise ConfigError(
            f"prune.sparsity must be in [0, 1), the final fraction of zero weights; 0: off (got {p.sparsity:g})"
        )
    if p.scope not in ("layer", "global"):
        raise ConfigError(f"prune.scope must be layer or global (got {p.scope!r})")
    if p.unit not in ("fraction", "epoch", "step"):
        raise ConfigError(f"prune.unit must be fraction (of the run's steps), epoch or step (got {p.unit!r})")
    _at_least("prune.frequency", p.frequency, 1)
    if not 0 <= p.start < p.end or (p.unit == "fraction" and p.end > 1):
        within = " within [0, 1]" if p.unit == "fraction" else ""
        raise ConfigError(
            f"prune.start and prune.end must satisfy 0 <= start < end{within} (got {p.start:g} and {p.end:g})"
        )
    if p.sparsity and ema_decay is not None:  # the tools deploy the averages, which would not be sparse
        raise ConfigError(
            "prune.sparsity does not combine with ema.decay: the averaged weights the tools use would not hold the "
            "pruned zeros; prune without ema.decay"
        )


def step_batch(cfg) -> int:
    """The examples of one optimizer step: batch_size x optimizer.accumulate_steps micro-batches.
    The run's length, the lr scaling rule and images/s count these."""
    return cfg.batch_size * cfg.optimizer.accumulate_steps


def check_against_data(cfg, info) -> None:
    """Checks that need the dataset's sizes."""
    if step_batch(cfg) > info.train_size:
        accumulated = (
            f" x optimizer.accumulate_steps={cfg.optimizer.accumulate_steps}"
            if cfg.optimizer.accumulate_steps > 1
            else ""
        )
        raise ConfigError(
            f"batch_size={cfg.batch_size}{accumulated} is larger than the {info.train_size} training images of "
            f"{info.name}: choose a batch of at most {info.train_size} images"
        )


def check_replicas(cfg, replicas: int) -> None:
    """batch_size is the global batch: it must split evenly over the replicas."""
    if cfg.batch_size % replicas:
        lower = cfg.batch_size - cfg.batch_size % replicas
        raise ConfigError(
            f"batch_size={cfg.batch_size} (the global batch) does not divide over {replicas} replicas: "
            f"use a multiple of {replicas}, e.g. {lower or replicas} or {lower + replicas}"
        )
