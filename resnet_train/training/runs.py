"""A finished (or running) run directory, loaded back: its config, dataset info and model."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from resnet_train.config import store
from resnet_train.errors import UserError, first_line
from resnet_train.training.run_dir import CONFIG, DATASET

log = logging.getLogger(__name__)


@dataclass
class LoadedRun:
    run_dir: Path
    cfg: object  # the run's composed config (OmegaConf)
    info: object  # DatasetInfo
    model: object  # keras.Model with the checkpoint's weights
    checkpoint: str
    weights: str = "raw"  # "ema": the moving averages of the weights (runs trained with ema.decay)


def read_run(run_dir):
    """(config, DatasetInfo) of a run directory, with one clear error if it is not one."""
    from omegaconf import OmegaConf

    from resnet_train.data.info import read_info

    if not run_dir:
        raise UserError("run=PATH is required: a run directory made by resnet-train (outputs/<date>/<time>)")
    run_dir = Path(str(run_dir)).expanduser()
    config, dataset = run_dir / CONFIG, run_dir / DATASET
    if not config.exists() or not dataset.exists():
        raise UserError(f"{run_dir} is not a resnet-train run directory (no {CONFIG} or {DATASET})")
    try:  # OmegaConf's YAML loader is a safe one: tags that would run code are errors
        cfg = store.saved_run_config(OmegaConf.load(config))  # typed; keys the run predates filled in
    except Exception as e:  # noqa: BLE001 -- any parse failure is the file's fault
        first = first_line(e, None)
        raise UserError(f"{config} is not a readable resnet-train config ({first})") from None
    return run_dir, cfg, read_info(dataset)  # a damaged one: one line naming it


def build_model(cfg, info):
    """The run's architecture, in float32 (inference and export want float32 weights and math)."""
    import keras

    from resnet_train import models

    keras.mixed_precision.set_global_policy("float32")
    # Inference: no sync_bn or zero-init.
    return models.from_config(cfg.model, info, sync_bn=False, zero_init_residual=False)


def restore_model(model, path: str) -> None:
    """Loads only the model's weights from a training checkpoint (optimizer state is ignored)."""
    import tensorflow as tf

    try:
        tf.train.Checkpoint(model=model).restore(path).expect_partial().assert_existing_objects_matched()
    except (ValueError, AssertionError, tf.errors.OpError) as e:
        first = first_line(e, 300)
        raise UserError(f"cannot load {path} into {model.name} ({first})") from None


def ema_decay(cfg):
    """The run's ema.decay (None: it kept no moving average)."""
    return cfg.ema.decay


def restore_ema(model, cfg, path: str) -> None:
    """Puts the checkpoint's moving averages of the trainable weights into `model` (BN's moving
    statistics stay as trained, as in training's EMA evaluation). The averages are optimizer
    variables saved by position, so the run's own optimizer is rebuilt (same kind, same decay
    policy, loss scaling if the checkpoint has it) over the variables it was trained on."""
    import keras
    import tensorflow as tf

    from resnet_train import optim
    from resnet_train.models import freeze

    loss_scaled = any(
        k.startswith("optimizer/inner_optimizer/") for k in tf.train.load_checkpoint(path).get_variable_to_shape_map()
    )
    freeze(model, cfg.finetune.freeze)  # training's variable list
    variables = model.trainable_variables
    # A schedule, as in training (a float lr would add a variable and shift the saved positions).
    constant = keras.optimizers.schedules.PiecewiseConstantDecay([1], [0.0, 0.0])
    optimizer = optim.build_optimizer(
        cfg.optimizer, constant, loss_scaling=loss_scaled, ema_decay=ema_decay(cfg), variables=variables
    )
    optimizer.build(variables)
    try:
        tf.train.Checkpoint(model=model, optimizer=optimizer).restore(
            path
        ).expect_partial().assert_existing_objects_matched()
    except (ValueError, AssertionError, tf.errors.OpError) as e:
        first = first_line(e, 300)
        raise UserError(f"cannot load the EMA weights of {path} ({first}); use ema=false for the raw ones") from None
    optimizer.finalize_variable_values(variables)
    model.trainable = True


def load_run(run_dir, checkpoint: str = "auto", ema=None) -> LoadedRun:
    """The run's model with a checkpoint's weights: the EMA weights when the run kept them
    (ema.decay) unless ema=False, else the raw ones. checkpoint=auto: best/ when the run chose it
    on a validation split, else the final checkpoint (resolve)."""
    run_dir, cfg, info = read_run(run_dir)
    path = resolve(run_dir, checkpoint, has_validation=bool(info.val_size))
    if checkpoint == "auto" and not info.val_size:
        log.info(
            "Using the final checkpoint: %s had no validation split (data.val_split), and a best "
            "checkpoint chosen on the test set would overstate its test accuracy",
            run_dir,
        )
    model = build_model(cfg, info)
    use_ema = ema_decay(cfg) is not None if ema is None else bool(ema)
    if use_ema and ema_decay(cfg) is None:
        raise UserError(f"{run_dir} was trained without ema.decay: it has no EMA weights")
    if use_ema:
        restore_ema(model, cfg, path)
        log.info("Loaded %s from %s: the EMA weights (ema.decay=%s)", model.name, path, ema_decay(cfg))
    else:
        restore_model(model, path)
        log.info("Loaded %s from %s", model.name, path)
    return LoadedRun(run_dir, cfg, info, model, path, "ema" if use_ema else "raw")


def image_files(paths) -> list[Path]:
    """Files as given, and the images inside folders (recursively), in a stable order."""
    from resnet_train.data.folder import EXTENSIONS

    found = []
    for p in paths:
        p = Path(str(p)).expanduser()
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in EXTENSIONS)
        else:
            found.append(p)
    return found


def load_images(paths, info):
    """(uint8 images batch, paths that loaded, [(path, reason)] that did not) at the model's input
    size, by preprocess.preprocess: what the folder source trained on, what evaluation of
    streamed data and the exported model's serving_encoded signature see."""
    import numpy as np

    from resnet_train.data.preprocess import preprocess_file

    shape = tuple(int(s) for s in info.image_shape)
    images, ok, failed = [], [], []
    for path in image_files(paths):
        if not path.is_file():
            failed.append((path, "no such file"))
            continue
        image = preprocess_file(path, shape)
        if image is None:
            failed.append((path, "not a readable image"))
        else:
            images.append(image)
            ok.append(path)
    batch = np.stack(images) if images else np.zeros((0, *shape[:2], 3), np.uint8)
    return batch, ok, failed


CHOICES = "auto | best | last | PATH"


def resolve(run_dir, which: str = "auto", has_validation: bool = True) -> str:
    """The checkpoint path for `which`: auto, best (falls back to last), last, or a path (a
    checkpoint prefix or a directory holding one).

    `auto` is best/ only for a run that selected it on a validation split; a run without one is
    judged on the test set, which must not pick its own checkpoint, so `auto` is then the final one
    (the paper's protocol: the length of training fixed beforehand, the final model tested once).
    A directory's checkpoint is the newest inside it (training's rule, checkpoint.candidates),
    whatever its index names; where that is not what the index names, a warning says so."""
    run_dir = Path(run_dir)
    best = run_dir / "checkpoints" / "best"
    if which == "auto":
        which = "best" if has_validation else "last"
    elif which == "best" and not has_validation and best.is_dir():
        log.warning(
            "checkpoint=best: %s chose best/ on the test set (it had no validation split), so its test "
            "accuracy is optimistic; checkpoint=last is the unbiased one",
            run_dir,
        )
    places = {"best": [best, run_dir / "checkpoints"], "last": [run_dir / "checkpoints"]}.get(which, [Path(which)])
    for place in places:
        if not place.is_dir():
            if Path(str(place) + ".index").exists():
                return str(place)
            continue
        found, why = newest_on_disk(place)
        if found and why:
            log.warning("%s: %s; using %s, the newest checkpoint inside it", place, why, found)
        if found and place != places[0]:
            log.warning("checkpoint=%s: %s holds no checkpoint; using the final one, %s", which, places[0], found)
        if found:
            return found
    raise UserError(f"no checkpoint ({which}) in {run_dir}: train first, or pass checkpoint={CHOICES}")


def newest_on_disk(directory: Path) -> tuple[str | None, str | None]:
    """The newest checkpoint inside `directory` whose files are there (training's candidates: an
    index naming another directory is not followed), and why that is not simply what the index
    names (None when it is, or when there is none)."""
    from resnet_train.training.checkpoint import DAMAGED, candidates, inside, read_index

    found = next((p for p in candidates(directory) if Path(p + ".index").exists()), None)
    state = read_index(directory)
    if found is None or state is None:
        return found, None if found is None else "it has no checkpoint index"
    if state is DAMAGED:
        return found, "its checkpoint index is damaged"
    named = state.model_checkpoint_path
    if not inside(named, directory):
        return found, f"its checkpoint index names {named}, outside it"
    if Path(named).name != Path(found).name:
        missing = not Path(named + ".index").exists()
        return found, f"its checkpoint index names {Path(named).name}, {'missing' if missing else 'an older one'}"
    return found, None
