"""Figures that weigh every class alike, from a confusion matrix (rows: true class, columns:
predicted), with scikit-learn's definitions (tests/test_imbalanced.py checks them against it):

- balanced accuracy: the mean recall over the classes that have examples;
- macro-F1: the mean F1 = 2 TP / (2 TP + FP + FN) over the classes that are true or predicted.
"""

from __future__ import annotations

import numpy as np

BEST_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")  # what checkpoint.best_metric may name


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


def class_weights(counts, setting) -> list[float] | None:
    """data.class_weights: null (none), auto (inverse frequency, normalised so the mean weight of
    a training example is 1: w_c = n / (K n_c), 0 for a class without examples) or a list of K
    weights used as given."""
    from resnet_train.errors import ConfigError

    if setting is None:
        return None
    counts = np.asarray(counts, np.float64)
    if setting == "auto":
        present = counts > 0
        weights = np.zeros_like(counts)
        weights[present] = counts.sum() / (present.sum() * counts[present])
        return [float(w) for w in weights]
    if isinstance(setting, str):
        raise ConfigError(f"data.class_weights must be null, auto or a list of one weight per class (got {setting!r})")
    weights = [float(w) for w in setting]
    if len(weights) != len(counts) or any(w < 0 for w in weights) or not any(weights):
        raise ConfigError(
            f"data.class_weights must list {len(counts)} non-negative weights, one per class (got {len(weights)})"
        )
    return weights
