"""Top-k predictions for image files with a trained run; under data.task=multilabel also every
label at probability >= the threshold (per-class sigmoids, models/probabilities.py)."""

from __future__ import annotations

import numpy as np

from resnet_train.models.probabilities import probabilities, task_of


def predict_files(run, paths, top_k: int = 5, batch_size: int = 64, threshold: float | None = None):
    """([{"path", "predictions": [{"class", "index", "probability"}]}], [(path, reason)]).
    A multi-label run's results also hold "labels" (every label whose probability is at least
    `threshold`, most probable first; the same entries) and "threshold"."""
    from resnet_train.tools.multilabel import labels_above, threshold_for
    from resnet_train.training.runs import load_images

    task, threshold = task_of(run.info), threshold_for(run.cfg, run.info, threshold)
    images, ok, failed = load_images(paths, run.info)
    k = min(top_k, run.info.num_classes)
    names = run.info.class_names
    results = []
    for start in range(0, len(ok), batch_size):
        probs = probabilities(run.model(images[start : start + batch_size], training=False), task).numpy()
        for path, p in zip(ok[start : start + batch_size], probs):
            order = np.argsort(-p)[:k]
            result = {
                "path": str(path),
                "predictions": [{"class": names[i], "index": int(i), "probability": float(p[i])} for i in order],
            }
            if task == "multilabel":
                result.update(labels=labels_above(p, names, threshold), threshold=threshold)
            results.append(result)
    return results, failed
