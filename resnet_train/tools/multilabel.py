"""The tools' multi-label side (data.task=multilabel): the threshold a command uses, resnet-eval's
figures, resnet-predict's labels and the figures an export is compared on. A label is predicted
when its sigmoid probability is at least the threshold (the run's data.threshold unless the
command's threshold= says otherwise)."""

from __future__ import annotations

import numpy as np
from omegaconf import OmegaConf

from resnet_train.errors import UserError
from resnet_train.models.probabilities import task_of
from resnet_train.report import label_metrics


def threshold_for(run_cfg, info, threshold=None) -> float | None:
    """The threshold a command applies: its own threshold= or the run's data.threshold under
    multilabel; None for a multiclass run (threshold= there is refused: it has one label per image)."""
    if task_of(info) != "multilabel":
        if threshold is not None:
            raise UserError(
                f"threshold={threshold:g} applies to multi-label runs (data.task=multilabel); this run "
                f"predicts one class per image: use top_k"
            )
        return None
    if threshold is None:
        threshold = OmegaConf.select(run_cfg, "data.threshold", default=0.5)
    check_threshold(threshold)
    return float(threshold)


def check_threshold(threshold) -> None:
    if threshold is not None and not 0.0 < float(threshold) < 1.0:
        raise UserError(
            f"threshold must be in (0, 1): a label is predicted when its probability is at least this "
            f"(got {float(threshold):g})"
        )


def eval_metrics(probs, labels, class_names, threshold: float) -> dict:
    """resnet-eval's figures: mean binary cross-entropy over images and classes (training's
    loss=bce without smoothing), map, macro_f1, exact-match accuracy, per-class AP and F1."""
    p = np.clip(np.asarray(probs, np.float64), 1e-12, 1.0 - 1e-12)
    y = np.asarray(labels, np.float64)
    loss = float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p))) if len(y) else 0.0
    report = label_metrics.report(y, probs, threshold, class_names)
    return {
        "examples": int(len(y)),
        "task": "multilabel",
        "threshold": threshold,
        "loss": loss,
        "map": report["map"],
        "macro_f1": report["macro_f1"],
        "accuracy": report["accuracy"],  # exact match: every label of the image right
        "per_class_ap": report["per_class_ap"],
        "per_class_f1": report["per_class_f1"],
        "positives": {n: int(c) for n, c in zip(class_names, (y > 0.5).sum(0))},
    }


def print_eval(result) -> None:
    """resnet-eval's lines under multilabel: the summary, then a table of every class (up to 50)."""
    print(
        f"{result['dataset']} {result['split']}: {result['examples']} images, loss {result['loss']:.4f} "
        f"(binary cross-entropy), mAP {result['map']:.4f}, macro-F1 {result['macro_f1']:.4f} and exact-match "
        f"accuracy {result['accuracy']:.4f} at threshold {result['threshold']:g} (tta {result['tta']})"
    )
    rows = list(result["per_class_ap"])
    width = max([5, *(len(n) for n in rows[:50])])
    print(f"{'label':<{width}}  positives      AP      F1")
    show = lambda v: "     -" if v is None else f"{v:6.3f}"  # noqa: E731 -- no positive / never true nor predicted
    for name in rows[:50]:
        ap, f1 = result["per_class_ap"][name], result["per_class_f1"][name]
        print(f"{name:<{width}}  {result['positives'][name]:9d}  {show(ap)}  {show(f1)}")
    if len(rows) > 50:
        print(f"... {len(rows) - 50} more labels in the JSON file")


def labels_above(p, class_names, threshold: float) -> list[dict]:
    """resnet-predict: every label whose probability is at least the threshold, most probable first."""
    order = [int(i) for i in np.argsort(-p, kind="stable") if p[i] >= threshold]
    return [{"class": class_names[i], "index": i, "probability": float(p[i])} for i in order]


def export_figures(exported, original, labels, threshold: float) -> dict:
    """An export's probabilities beside the original model's (artifacts.figures' keys): accuracy is
    exact match at the threshold, top-1 agreement that of the most probable label; also mAP and
    the share of images whose predicted label sets agree."""
    y = np.asarray(labels) > 0.5
    ours, theirs = exported >= threshold, original >= threshold
    return {
        "examples": int(len(y)),
        "accuracy": float(np.mean(np.all(ours == y, 1))),
        "original_accuracy": float(np.mean(np.all(theirs == y, 1))),
        "max_probability_difference": float(np.abs(exported - original).max()),
        "top1_agreement": float(np.mean(exported.argmax(1) == original.argmax(1))),
        "label_agreement": float(np.mean(np.all(ours == theirs, 1))),
        "map": label_metrics.report(y, exported, threshold)["map"],
        "original_map": label_metrics.report(y, original, threshold)["map"],
        "threshold": threshold,
    }
