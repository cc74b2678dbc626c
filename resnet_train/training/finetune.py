"""Fine-tuning: start from another run's weights, replace the head, freeze what is asked.

Layers are matched by name (the model builders name every layer deterministically). Every layer
with weights must match in shape except the classifier head (`logits`), which is new when the
classes differ (in number or in names).

The input normalisation (finetune.normalization) is the source's by default, whatever the source
(a run directory, keras-hub, keras.applications): its stem was trained on inputs scaled that way,
and a frozen backbone sees them as it did (timm and keras-hub keep the pretrained model's too).
`data` takes the new dataset's channel statistics instead. A resumed run keeps the statistics it
started with (its dataset.json), so its source may have moved since.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from resnet_train.errors import UserError
from resnet_train.models import names
from resnet_train.training import pretrained, run_dir

log = logging.getLogger(__name__)

HEAD = names.HEAD
OWN_STATISTICS = (names.NORMALIZE,)  # statistics, not weights: input_normalisation sets them


def _run_dir_of(source: Path, key: str = "init_from") -> Path:
    """A run directory, or the run directory that holds a checkpoint path."""
    for place in (source, *source.parents):
        if (place / run_dir.CONFIG).exists():
            return place
    raise UserError(f"{key}={source}: neither a run directory nor a checkpoint inside one")


def source_run(init_from, key: str = "init_from"):
    """(the checkpoint path or run directory given, the run directory, its config, its DatasetInfo);
    `key`: the setting that named it (init_from, distill.teacher), for the errors."""
    from resnet_train.training.runs import read_run

    source = Path(str(init_from)).expanduser()
    if not source.exists() and not Path(str(source) + ".index").exists():
        raise UserError(f"{key}={source} does not exist")
    run_dir = _run_dir_of(source, key)
    _, cfg, info = read_run(run_dir)
    return source, run_dir, cfg, info


def load_source(init_from):
    """The source run's model with its weights (checkpoint=auto of the run, or the checkpoint given),
    its class names and its task (multiclass or multilabel)."""
    from resnet_train.models.probabilities import task_of
    from resnet_train.training.runs import build_model, resolve, restore_model

    source, run_dir, cfg, info = source_run(init_from)
    checkpoint = resolve(run_dir, "auto" if source == run_dir else str(source), has_validation=bool(info.val_size))
    model = build_model(cfg, info)
    restore_model(model, checkpoint)
    return model, checkpoint, list(info.class_names), task_of(info)


def source_statistics(init_from) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) on the 0..255 scale that the init_from source's model normalises its inputs with."""
    if pretrained.is_pretrained(init_from):
        return pretrained.input_statistics(init_from)
    info = source_run(init_from)[3]
    return tuple(info.mean), tuple(info.std)


def _saved_statistics(workdir: Path):
    """A resumed run's own (mean, std) from its dataset.json, or None (a new run, or none readable)."""
    try:
        saved = json.loads((workdir / run_dir.DATASET).read_text()) if run_dir.has_progress(workdir) else {}
        return (tuple(saved["mean"]), tuple(saved["std"])) if "mean" in saved and "std" in saved else None
    except (OSError, ValueError, TypeError):  # unreadable: the source decides, as for a new run
        return None


def _rounded(values) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in values) + "]"


def input_normalisation(cfg, info, workdir: Path) -> None:
    """With init_from, sets `info`'s mean and std (which the model normalises with, and dataset.json
    keeps) by finetune.normalization: the source's (default) or this dataset's (`data`); logged."""
    if not cfg.init_from:
        return
    ours, saved = (tuple(info.mean), tuple(info.std)), _saved_statistics(workdir)
    if saved is not None:
        info.mean, info.std = saved
        log.info("Input normalisation kept from %s: mean %s, std %s", workdir / run_dir.DATASET, *map(_rounded, saved))
        return
    theirs, mode = source_statistics(cfg.init_from), cfg.finetune.normalization
    if mode == "source":
        info.mean, info.std = theirs
    shown = theirs if mode == "source" else ours
    other = ("this dataset's", ours) if mode == "source" else (f"{cfg.init_from}'s", theirs)
    log.info("Input normalisation of %s: mean %s, std %s (finetune.normalization=%s; %s: mean %s, std %s)",
             cfg.init_from if mode == "source" else "this dataset", *map(_rounded, shown), mode, other[0],
             *map(_rounded, other[1]))  # fmt: skip


def initialise_from(model, init_from, class_names=None, task: str = "multiclass") -> dict:
    """Copies every matching layer of the source run into `model`; returns what was loaded/new. The
    head is new for other classes, and for another task: softmax logits (shift-invariant) are no
    sigmoid's, whatever the class names."""
    import keras

    from resnet_train.models.drop_path import DropPath

    policy = keras.mixed_precision.global_policy()
    try:
        source, checkpoint, source_classes, source_task = load_source(init_from)
    finally:
        keras.mixed_precision.set_global_policy(policy)  # load_source builds in float32
    theirs = {layer.name: layer for layer in source.layers if layer.weights}
    loaded, new = [], []
    for layer in model.layers:
        if not layer.weights or layer.name in OWN_STATISTICS or isinstance(layer, DropPath):
            continue  # (DropPath's weight counts its random draws: nothing learned)
        other = theirs.get(layer.name)
        shapes = [tuple(w.shape) for w in layer.weights]
        other_shapes = [tuple(w.shape) for w in other.weights] if other is not None else None
        same_classes = (class_names is None or list(class_names) == source_classes) and task == source_task
        if layer.name == HEAD and not (same_classes and other_shapes == shapes):
            new.append(layer.name)  # other classes: a fresh head
        elif other_shapes == shapes:
            layer.set_weights(other.get_weights())
            loaded.append(layer.name)
        else:
            found = "missing" if other is None else f"{other_shapes}"
            raise UserError(
                f"init_from={init_from} ({source.name}) does not fit {model.name}: layer {layer.name} needs "
                f"{shapes}, the checkpoint has {found}; fine-tune from the same architecture (depth, variant)"
            )
    if task != source_task:
        log.info("The source run is %s, this one %s: a new head", source_task, task)
    log.info("Initialised from %s: %d layers loaded; new: %s", checkpoint, len(loaded), ", ".join(new) or "none")
    return {"checkpoint": checkpoint, "loaded": loaded, "new": new}


def head_gradient_scales(model, head_lr_mult: float) -> list[float]:
    """finetune.head_lr_mult: the head's gradients are scaled, which for SGD (with or without
    momentum, decay included) is exactly a larger learning rate for those variables."""
    head = {id(v) for v in model.get_layer(names.HEAD).trainable_variables} if head_lr_mult != 1.0 else set()
    return [head_lr_mult if id(v) in head else 1.0 for v in model.trainable_variables]
