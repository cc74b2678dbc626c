"""data.task's checks (no TensorFlow): multilabel needs a source with several labels per image,
and refuses the settings that only mean something with one label per image."""

from __future__ import annotations

from resnet_train.errors import ConfigError

TASKS = ("multiclass", "multilabel")
MULTILABEL_SOURCES = ("folder", "tfrecord")


def check_task(cfg) -> None:
    data = cfg.data
    if data.task not in TASKS:
        raise ConfigError(
            f"data.task must be multiclass (one label per image) or multilabel (several labels per image) "
            f"(got {data.task!r})"
        )
    if not 0.0 < data.threshold < 1.0:
        raise ConfigError(
            f"data.threshold must be in (0, 1): a label is predicted when its probability is at least this "
            f"(got {data.threshold:g})"
        )
    if data.task == "multiclass":
        if cfg.checkpoint.best_metric == "map":
            raise ConfigError(
                "checkpoint.best_metric=map (mean average precision) is for data.task=multilabel: "
                "choose accuracy, balanced_accuracy or macro_f1"
            )
        return
    refusal = _multilabel_refusal(cfg)
    if refusal:
        raise ConfigError(f"data.task=multilabel: {refusal}")


def _multilabel_refusal(cfg) -> str | None:
    data = cfg.data
    if data.source not in MULTILABEL_SOURCES:
        return (
            f"data.source={data.source} has one label per image; several come from data=folder (with a labels file) "
            f"or data=tfrecord (several image/class/label values per record)"
        )
    if data.sampling != "natural":
        return (
            "data.sampling=balanced draws each class equally often, which images with several labels "
            "cannot be: use data.sampling=natural"
        )
    if data.class_weights is not None:
        return "data.class_weights weighs an example by its one class: leave it null"
    if data.classes:
        return "data.classes keeps some classes' images, which multi-label images do not split into: leave it null"
    if cfg.checkpoint.best_metric == "balanced_accuracy":
        return (
            "checkpoint.best_metric=balanced_accuracy needs one label per image: choose map, macro_f1 "
            "or accuracy (exact match)"
        )
    if cfg.distill.teacher:
        return "distill.teacher's soft targets are one softmax over the classes: leave distill.teacher unset"
    return None
