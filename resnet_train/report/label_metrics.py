"""Multi-label figures (data.task=multilabel) from every example's labels (0/1, one column per
class) and predicted probabilities, with scikit-learn's definitions (tests/test_multilabel_train.py
checks them against it):

- average precision per class: the sum over the distinct scores, highest first, of the precision
  at that score times the recall it adds (sklearn.metrics.average_precision_score);
- map: their mean over the classes with a positive example in the split (scikit-learn would count
  a class without one as 0; it has no precision-recall curve, so it is left out);
- per-class F1 at data.threshold (a label is predicted when its probability is at least this) and
  macro_f1, their mean over the classes that are true or predicted somewhere (as class_metrics.py);
- accuracy: exact match, every label of the image right (sklearn.metrics.accuracy_score).
Exact AP needs every score, so evaluation gathers them (a few MB for tens of thousands of images
and classes); no binned approximation (keras.metrics.AUC(curve="PR")) that would differ from it.
"""

from __future__ import annotations

import numpy as np


def average_precisions(labels, scores) -> np.ndarray:
    """Per class; NaN for a class without a positive example."""
    labels, scores = np.asarray(labels) > 0.5, np.asarray(scores, np.float64)
    result = np.full(labels.shape[1], np.nan)
    for c in range(labels.shape[1]):
        positives = labels[:, c].sum()
        if not positives:
            continue
        order = np.argsort(-scores[:, c], kind="stable")
        score, hit = scores[order, c], labels[order, c]
        tp = np.cumsum(hit)
        last = np.r_[np.flatnonzero(np.diff(score)), len(score) - 1]  # the end of each tie group
        precision = tp[last] / (last + 1)
        recall = tp[last] / positives
        result[c] = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    return result


def f1_per_class(labels, predicted) -> np.ndarray:
    """2 TP / (2 TP + FP + FN) per class; NaN where the class is neither true nor predicted."""
    labels, predicted = np.asarray(labels) > 0.5, np.asarray(predicted, bool)
    tp = (labels & predicted).sum(0)
    denominator = labels.sum(0) + predicted.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, 2.0 * tp / denominator, np.nan)


def report(labels, probabilities, threshold: float, class_names=None) -> dict:
    """Evaluation's multi-label figures (loss aside): map, macro_f1, accuracy, and per class."""
    labels, probabilities = np.asarray(labels, np.float64), np.asarray(probabilities, np.float64)
    predicted = probabilities >= threshold
    ap, f1 = average_precisions(labels, probabilities), f1_per_class(labels, predicted)
    names = list(class_names) if class_names else [str(c) for c in range(labels.shape[1])]
    return {
        "map": _mean(ap),
        "macro_f1": _mean(f1),
        "accuracy": float(np.mean(np.all(predicted == (labels > 0.5), 1))) if len(labels) else 0.0,
        "per_class_ap": {n: _figure(v) for n, v in zip(names, ap)},
        "per_class_f1": {n: _figure(v) for n, v in zip(names, f1)},
    }


def _mean(values) -> float:
    present = values[~np.isnan(values)]
    return float(present.mean()) if len(present) else 0.0


def _figure(value) -> float | None:
    return None if np.isnan(value) else float(value)
