"""Top-k predictions for image files with a trained run."""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def predict_files(run, paths, top_k: int = 5, batch_size: int = 64):
    """([{"path", "predictions": [{"class", "index", "probability"}]}], [(path, reason)])."""
    from resnet_train.training.runs import load_images

    images, ok, failed = load_images(paths, run.info)
    k = min(top_k, run.info.num_classes)
    results = []
    for start in range(0, len(ok), batch_size):
        probs = tf.nn.softmax(run.model(images[start : start + batch_size], training=False)).numpy()
        for path, p in zip(ok[start : start + batch_size], probs):
            order = np.argsort(-p)[:k]
            results.append(
                {
                    "path": str(path),
                    "predictions": [
                        {"class": run.info.class_names[i], "index": int(i), "probability": float(p[i])} for i in order
                    ],
                }
            )
    return results, failed
