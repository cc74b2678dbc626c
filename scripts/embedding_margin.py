"""How often a test digit's nearest neighbour in embedding space has its class, over seeds.

tests/test_embeddings.py's threshold comes from this spread:

    python scripts/embedding_margin.py --seeds 0 1 2 3 4 > margin.json

Per seed: a ResNet-8 trained as the test's fixture is (EMBED_RUN: 3 epochs on 512 embedded digits),
then the pooled features (tools/embeddings.py) of the first 200 test digits, and the share whose
nearest other digit (cosine) has the same class; beside it the same share for the untrained
network of that seed (random features already separate digits somewhat) and chance (1/10).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

EMBED_RUN = ("depth=8", "batch_size=32", "epochs=3", "data.limit_train=512", "data.limit_test=200",
             "runtime=one_device", "runtime.precision=float32")  # fmt: skip
IMAGES = 200


def nearest_same_class(features: np.ndarray, labels: np.ndarray) -> float:
    """The share of rows whose nearest other row (cosine distance) has the same label."""
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    distances = -unit @ unit.T
    np.fill_diagonal(distances, np.inf)
    return float(np.mean(labels[distances.argmin(1)] == labels))


def _rates(seed: int, workdir: Path) -> dict:
    from resnet_train.config import load_config
    from resnet_train.data.embedded import load_digits_arrays
    from resnet_train.tools.embeddings import features_and_logits
    from resnet_train.training.loop import train_and_evaluate
    from resnet_train.training.runs import build_model, load_run, read_run

    started = time.perf_counter()
    train_and_evaluate(load_config([*EMBED_RUN, f"seed={seed}"]), workdir)
    _, x, _, y = load_digits_arrays()
    x, y = x[:IMAGES], np.asarray(y[:IMAGES])
    trained = features_and_logits(load_run(workdir).model)(x)[0].numpy()
    import keras

    keras.utils.set_random_seed(seed)
    _, cfg, info = read_run(workdir)
    untrained = features_and_logits(build_model(cfg, info))(x)[0].numpy()
    return {"seed": seed, "trained": nearest_same_class(trained, y), "untrained": nearest_same_class(untrained, y),
            "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = parser.parse_args()
    rows = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(_rates(seed, Path(tmp) / "run"))
        print(json.dumps(rows[-1]), file=sys.stderr)
    trained = [r["trained"] for r in rows]
    summary = {"rows": rows, "chance": 0.1, "trained_min": min(trained), "trained_mean": float(np.mean(trained)),
               "trained_std": float(np.std(trained)), "untrained_max": max(r["untrained"] for r in rows)}  # fmt: skip
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
