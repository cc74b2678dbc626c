"""Figures that weigh every class alike, from a confusion matrix (rows: true class, columns:
predicted), with scikit-learn's definitions (tests/test_imbalanced.py checks them against it):

- balanced accuracy: the mean recall over the classes that have examples;
- macro-F1: the mean F1 = 2 TP / (2 TP + FP + FN) over the classes that are true or predicted.
"""

from __future__ import annotations

import numpy as np

BEST_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "map")  # what checkpoint.best_metric may name
# data.task=multilabel's: accuracy there is exact-match (every label right), map the macro average precision.
MULTILABEL_METRICS = ("accuracy", "macro_f1", "map")


def balanced_accuracy(confusion) -> float:
    confusion = np.asarray(confusion, np.float64)
    support = confusion.sum(1)
    present = support > 0
    if not present.any():
        return 0.0
    return float(np.mean(np.diag(confusion)[present] / support[present]))


def macro_f1(confusion) -> float:
    confusion = np.asarray(confusion, np.float64)
    tp = np.diag(confusion)
    denominator = confusion.sum(1) + confusion.sum(0)  # 2 TP + FP + FN
    present = denominator > 0
    if not present.any():
        return 0.0
    return float(np.mean(2 * tp[present] / denominator[present]))


def class_weights(counts, setting, sampling: str = "natural") -> list[float] | None:
    """data.class_weights, scaled so that the mean weight of a training example *as sampled* is 1
    (the weights shift the balance between classes, never the step size): null (none), auto (the
    inverse of each class's frequency in the sampled stream) or a list of K relative weights.

    data.sampling=natural draws class c with frequency n_c / n: auto is w_c = n / (K n_c), a list is
    scaled so that sum(n_c w_c) = n. data.sampling=balanced already draws every class with examples
    equally often: auto is 1 for each (inverse frequency again: the stream is uniform; weighting by
    the natural counts as well would correct the imbalance twice), a list is scaled to a mean of 1
    over those classes. A class without examples weighs 0 (never drawn)."""
    from resnet_train.errors import ConfigError

    if setting is None:
        return None
    counts = np.asarray(counts, np.float64)
    present = counts > 0
    # How often each class is drawn: its share of the examples, or an equal share under balanced sampling.
    drawn = present / present.sum() if sampling == "balanced" else counts / counts.sum()
    if setting == "auto":
        weights = np.zeros_like(counts)
        weights[present] = 1.0 / (present.sum() * drawn[present])
        return [float(w) for w in weights]
    if isinstance(setting, str):
        raise ConfigError(f"data.class_weights must be null, auto or a list of one weight per class (got {setting!r})")
    weights = np.array([float(w) for w in setting])
    if len(weights) != len(counts) or (weights < 0).any() or not weights.any():
        raise ConfigError(
            f"data.class_weights must list {len(counts)} non-negative weights, one per class (got {len(weights)})"
        )
    if not np.dot(weights, drawn) > 0:
        raise ConfigError("data.class_weights gives weight 0 to every class with training examples: weigh one of them")
    weights = np.where(present, weights, 0.0) / np.dot(weights, drawn)
    return [float(w) for w in weights]
