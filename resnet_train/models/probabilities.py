"""The model's logits -> probabilities, by the run's data.task (DatasetInfo.task): one softmax over
the classes for multiclass, a sigmoid per class for multilabel (each label on its own, so a row
need not sum to 1). Every tool that reads a model's outputs (evaluation, prediction, Grad-CAM,
every export and its read-back) goes through here, so they cannot disagree."""

from __future__ import annotations

import numpy as np

from resnet_train.config.task_checks import TASKS
from resnet_train.errors import DataError


def task_of(info) -> str:
    """A run's task from its DatasetInfo (dataset.json); a run from before data.task is multiclass."""
    task = getattr(info, "task", None) or "multiclass"
    if task not in TASKS:
        raise DataError(f"the run's dataset.json names an unknown task {task!r} (expected {' or '.join(TASKS)})")
    return task


def activation(task: str) -> str:
    """The function's name, as a model card or a log line says it."""
    return "sigmoid" if task == "multilabel" else "softmax"


def probabilities(logits, task: str = "multiclass"):
    """A tensor of logits (N x classes) -> probabilities, in float32, or float64 for float64 logits
    (TensorFlow ops: this runs inside tf.functions and the exports' traced graphs)."""
    import tensorflow as tf

    logits = tf.cast(logits, tf.float64 if logits.dtype == tf.float64 else tf.float32)  # float64: evaluation's mAP
    return tf.nn.sigmoid(logits) if task == "multilabel" else tf.nn.softmax(logits)


def numpy_probabilities(logits, task: str = "multiclass") -> np.ndarray:
    """The same in NumPy (float64 inside), for checks and for logits already read back."""
    z = np.asarray(logits, np.float64)
    if task == "multilabel":
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
