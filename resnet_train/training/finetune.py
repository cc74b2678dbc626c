"""Fine-tuning: start from another run's weights, replace the head, freeze what is asked.

Layers are matched by name (the model builders name every layer deterministically). Every layer
with weights must match in shape except the classifier head (`logits`), which is new when the
classes differ (in number or in names), and the input normalisation, which takes the new data's
statistics.
"""

from __future__ import annotations

import logging
from pathlib import Path

from resnet_train.errors import UserError
from resnet_train.models import names
from resnet_train.training import run_dir

log = logging.getLogger(__name__)

HEAD = names.HEAD
OWN_STATISTICS = (names.NORMALIZE,)  # the new dataset's channel statistics, not the source's


def _run_dir_of(source: Path) -> Path:
    """A run directory, or the run directory that holds a checkpoint path."""
    for place in (source, *source.parents):
        if (place / run_dir.CONFIG).exists():
            return place
    raise UserError(f"init_from={source}: neither a run directory nor a checkpoint inside one")


def load_source(init_from):
    """The source run's model with its weights (checkpoint=auto of the run, or the checkpoint given)."""
    from resnet_train.training.runs import build_model, read_run, resolve, restore_model

    source = Path(str(init_from)).expanduser()
    if not source.exists() and not Path(str(source) + ".index").exists():
        raise UserError(f"init_from={source} does not exist")
    run_dir = _run_dir_of(source)
    _, cfg, info = read_run(run_dir)
    checkpoint = resolve(run_dir, "auto" if source == run_dir else str(source), has_validation=bool(info.val_size))
    model = build_model(cfg, info)
    restore_model(model, checkpoint)
    return model, checkpoint, list(info.class_names)


def initialise_from(model, init_from, class_names=None) -> dict:
    """Copies every matching layer of the source run into `model`; returns what was loaded/new."""
    import keras

    policy = keras.mixed_precision.global_policy()
    try:
        source, checkpoint, source_classes = load_source(init_from)
    finally:
        keras.mixed_precision.set_global_policy(policy)  # load_source builds in float32
    theirs = {layer.name: layer for layer in source.layers if layer.weights}
    loaded, new = [], []
    for layer in model.layers:
        if not layer.weights or layer.name in OWN_STATISTICS:
            continue
        other = theirs.get(layer.name)
        shapes = [tuple(w.shape) for w in layer.weights]
        other_shapes = [tuple(w.shape) for w in other.weights] if other is not None else None
        same_classes = class_names is None or list(class_names) == source_classes
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
    log.info("Initialised from %s: %d layers loaded; new: %s", checkpoint, len(loaded), ", ".join(new) or "none")
    return {"checkpoint": checkpoint, "loaded": loaded, "new": new}


def head_gradient_scales(model, head_lr_mult: float) -> list[float]:
    """finetune.head_lr_mult: the head's gradients are scaled, which for SGD (with or without
    momentum, decay included) is exactly a larger learning rate for those variables."""
    head = {id(v) for v in model.get_layer(names.HEAD).trainable_variables} if head_lr_mult != 1.0 else set()
    return [head_lr_mult if id(v) in head else 1.0 for v in model.trainable_variables]
