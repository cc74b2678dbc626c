"""Evaluation of a trained model on any split: loss, top-1/top-5, per-class accuracy, confusion;
under data.task=multilabel mAP, macro-F1 and per-class AP / F1 at a threshold (multilabel.py)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from resnet_train.errors import DataError
from resnet_train.models.probabilities import probabilities, task_of
from resnet_train.report import class_metrics
from resnet_train.training.prune import kernel_sparsity
from resnet_train.training.trainer import top_k


def predict_probabilities(model, batches, tta: str | None = None, task: str = "multiclass"):
    """(probabilities, labels) over `batches` of (images, labels, weights); padding dropped.
    tta="flip" averages the predictions for the image and its mirror image. Under multilabel the
    probabilities are per-class sigmoids (models/probabilities.py)."""
    if tta not in (None, "none", "flip"):
        raise DataError(f"tta must be none or flip (got {tta!r})")

    # Multi-label: sigmoids in float64, whose mAP a float32 sigmoid's ties (1.0 from a logit of ~17) would change.
    dtype = tf.float64 if task == "multilabel" else tf.float32

    @tf.function(reduce_retracing=True)
    def probs(images):
        p = probabilities(tf.cast(model(images, training=False), dtype), task)
        if tta == "flip":
            p = (p + probabilities(tf.cast(model(tf.reverse(images, axis=[2]), training=False), dtype), task)) / 2.0
        return p

    all_probs, all_labels = [], []
    for images, labels, weights in batches:
        keep = weights.numpy() > 0
        all_probs.append(probs(images).numpy()[keep])
        all_labels.append(labels.numpy()[keep])
    return np.concatenate(all_probs), np.concatenate(all_labels)


def metrics(probs, labels, class_names) -> tuple[dict, np.ndarray]:
    """Summary metrics and the confusion matrix (rows: true class, columns: predicted)."""
    n = len(class_names)
    picked = probs[np.arange(len(labels)), labels]
    top = np.argsort(-probs, axis=1)
    k = top_k(n)
    confusion = np.zeros((n, n), np.int64)
    np.add.at(confusion, (labels, top[:, 0]), 1)
    per_class = {
        name: (float(confusion[i, i] / confusion[i].sum()) if confusion[i].sum() else None)
        for i, name in enumerate(class_names)
    }
    summary = {
        "examples": int(len(labels)),
        "loss": float(-np.mean(np.log(np.clip(picked, 1e-12, 1.0)))),
        "accuracy": float(np.mean(top[:, 0] == labels)),
        f"top{k}": float(np.mean(np.any(top[:, :k] == labels[:, None], axis=1))),
        "balanced_accuracy": class_metrics.balanced_accuracy(confusion),
        "macro_f1": class_metrics.macro_f1(confusion),
        "per_class_accuracy": per_class,
    }
    return summary, confusion


SPLITS = ("test", "val", "train")


def eval_split(run_cfg, info, data_overrides, split: str):
    """The requested split of the run's dataset (or of another one given by data overrides), as
    uint8 examples, checked against the model's classes and input shape."""
    from omegaconf import OmegaConf

    from resnet_train import data as data_lib
    from resnet_train.config import store

    if split not in SPLITS:
        raise DataError(f"data.split must be one of {', '.join(SPLITS)} (got {split!r})")
    changes = {k: v for k, v in (data_overrides or {}).items() if v is not None and k != "split"}
    # Another source's settings replace the run's: keys the new source lacks are dropped.
    data_cfg = store.data_config(
        {**OmegaConf.to_container(OmegaConf.create(run_cfg.data), resolve=True), **changes}, drop_unknown=True
    )
    splits = data_lib.load(data_cfg)
    new = splits.info
    if new.num_classes != info.num_classes:
        raise DataError(
            f"the checkpoint predicts {info.num_classes} classes but {new.name} has {new.num_classes}: "
            f"evaluate on a dataset with the same classes"
        )
    if tuple(new.image_shape) != tuple(info.image_shape):
        raise DataError(
            f"the model takes {tuple(info.image_shape)} images but {new.name} has "
            f"{tuple(new.image_shape)}: set data.image_size to match"
        )
    ds = {"test": splits.test, "val": splits.val, "train": splits.train}[split]
    size = {"test": new.test_size, "val": new.val_size, "train": new.train_size}[split]
    if ds is None:
        raise DataError("this run has no validation split (it was trained without data.val_split)")
    return ds, size, new


def evaluate_run(
    run_dir, checkpoint="auto", split="test", data_overrides=None, tta=None, batch_size=256, threshold=None
) -> dict:
    """Evaluates a run's checkpoint; writes eval/<split>.json and (multiclass) eval/<split>_confusion.png.
    threshold: a multi-label run's own (default its data.threshold); refused for a multiclass run."""
    from resnet_train.data import pipeline
    from resnet_train.report.metrics import write_json
    from resnet_train.tools import multilabel
    from resnet_train.training.runs import load_run

    multilabel.check_threshold(threshold)
    run = load_run(run_dir, checkpoint)
    task, threshold = task_of(run.info), multilabel.threshold_for(run.cfg, run.info, threshold)
    ds, size, info = eval_split(run.cfg, run.info, data_overrides, split)
    batches = pipeline.eval_batches(ds, batch_size, pipeline.eval_preprocess(info), size, info.image_shape)
    probs, labels = predict_probabilities(run.model, batches, tta, task)
    name = split + ("_flip" if tta == "flip" else "")
    out = run.run_dir / "eval"
    about = {
        "split": split,
        "dataset": info.name,
        "checkpoint": run.checkpoint,
        "weights": run.weights,
        "tta": tta or "none",
        "class_names": run.info.class_names,
        "sparsity": kernel_sparsity(run.model),  # the zeros pruning left in the weights evaluated
    }
    if task == "multilabel":  # no confusion matrix, top-k or balanced accuracy: several labels an image
        summary = {**multilabel.eval_metrics(probs, labels, run.info.class_names, threshold), **about}
        write_json(out / f"{name}.json", summary)
        return {**summary, "files": [str(out / f"{name}.json")]}
    summary, confusion = metrics(probs, labels, run.info.class_names)
    summary.update({"task": "multiclass", **about, "confusion_matrix": confusion.tolist()})
    write_json(out / f"{name}.json", summary)
    from resnet_train.report import plots

    plots.confusion_matrix(
        confusion,
        run.info.class_names,
        out / f"{name}_confusion.png",
        title=f"{run.model.name} on {info.name} {split}: top-1 {summary['accuracy']:.4f}",
    )
    summary["files"] = [str(out / f"{name}.json"), str(out / f"{name}_confusion.png")]
    return summary
