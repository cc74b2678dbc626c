"""The spread, over seeds, of the figures the suite's tolerance and learning thresholds bound.

A threshold's margin comes from the spread measured on every CPU kind met (AVX2 only, AVX-512 +
bf16, AMX), with oneDNN on and off: run this once per setting on each new kind and put the ranges
in the tests' comments (tests/test_finetune.py, test_runtime.py, test_models.py,
test_compress_export.py).

    TF_ENABLE_ONEDNN_OPTS=0 python scripts/threshold_spread.py --seeds 0 1 2 3 4 > off.json
    TF_ENABLE_ONEDNN_OPTS=1 python scripts/threshold_spread.py --seeds 0 1 2 3 4 > on.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _run(overrides, workdir):
    from resnet_train.config import load_config
    from resnet_train.training.loop import train_and_evaluate

    results = train_and_evaluate(load_config(list(overrides)), workdir)
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return results, records


def fine_tuning(seed: int, root: Path) -> dict:
    """tests/test_finetune.py's source run, then its target trained from scratch and fine-tuned."""
    base = ("depth=8", "batch_size=32", "runtime.precision=float32", "runtime.deterministic=true", f"seed={seed}")
    target = (*base, "data.classes=[5,6,7,8,9]", "data.limit_train=160", "schedule=constant", "epochs=5")
    source, _ = _run((*base, "epochs=4", "data.classes=[0,1,2,3,4]"), root / "source")
    _, scratch = _run(target, root / "scratch")
    tuned_results, tuned = _run(
        (*target, f"init_from={root / 'source'}", "finetune.freeze=backbone", "finetune.head_lr_mult=3"), root / "tuned"
    )

    def mean_eval(records):
        return float(np.mean([r["accuracy"] for r in records if r["split"] == "eval"]))

    losses = [r["loss"] for r in tuned if r["split"] == "train"]
    return {
        "source_accuracy": source["test"]["accuracy"],
        "mean_eval_gain": mean_eval(tuned) - mean_eval(scratch),
        "tuned_accuracy": tuned_results["test"]["accuracy"],
        "tuned_loss_ratio": losses[-1] / losses[0],
    }


def bfloat16(seed: int, root: Path) -> dict:
    """tests/test_runtime.py's bfloat16 run: the last epoch's training loss over the first's."""
    tiny = ("depth=8", "batch_size=32", "data.limit_test=64", "runtime=one_device", f"seed={seed}")
    _, records = _run(
        (
            *tiny,
            "epochs=3",
            "data.limit_train=512",
            "data.image_size=16",
            "runtime.precision=mixed_bfloat16",
            "runtime.deterministic=true",
        ),  # fmt: skip
        root / "bf16",
    )
    losses = [r["loss"] for r in records if r["split"] == "train"]
    return {"loss_ratio": losses[-1] / losses[0]}


def xla(seed: int) -> dict:
    """tests/test_runtime.py's three SGD steps with and without XLA: the largest differences."""
    import keras
    import tensorflow as tf

    from resnet_train.models import build
    from resnet_train.training.trainer import Trainer

    def run(compiled):
        keras.utils.set_random_seed(seed)
        model = build(8, 4, (8, 8, 3), variant="cifar")
        optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
        optimizer.build(model.trainable_variables)
        trainer = Trainer(
            model, optimizer, tf.distribute.get_strategy(), 8, weight_decay=1e-4, num_classes=4, xla=compiled
        )
        rng = np.random.default_rng(seed)
        batch = (rng.integers(0, 256, (8, 8, 8, 3)).astype(np.uint8), rng.integers(0, 4, 8).astype(np.int64))
        trainer.train_steps(iter(tf.data.Dataset.from_tensors(batch).repeat()), 3)
        return [v.numpy() for v in model.trainable_variables], trainer.train_metrics()["loss"]

    (plain, plain_loss), (compiled, compiled_loss) = run(False), run(True)
    # The smallest rtol the test's assert_allclose(atol=1e-6) would pass with.
    weights = max(float(np.max((np.abs(a - b) - 1e-6) / np.abs(b))) for a, b in zip(plain, compiled))
    return {"loss_rel": abs(compiled_loss - plain_loss) / abs(plain_loss), "weights_rtol_at_atol_1e-6": weights}


def fused_batch_norm(seed: int) -> dict:
    """tests/test_models.py's FusedBatchNorm against Keras' BatchNormalization on seed's inputs."""
    import keras
    import tensorflow as tf

    from resnet_train.models.layers import FusedBatchNorm

    x = tf.constant(np.random.default_rng(seed).normal(2, 3, (16, 8, 8, 5)).astype(np.float32))
    ours, theirs = (
        FusedBatchNorm(momentum=0.9, epsilon=1e-5),
        keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5),
    )
    for layer in (ours, theirs):
        layer.build(x.shape)
        layer.gamma.assign(np.linspace(0.5, 2, 5))
        layer.beta.assign(np.linspace(-1, 1, 5))
    r1, r2 = np.random.default_rng(seed + 1).normal(0, 1, (2, *x.shape)).astype(np.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y_ours, y_theirs = ours(x, training=True), theirs(x, training=True)
        loss_ours, loss_theirs = (tf.reduce_sum(y * r1 + 0.3 * r2 * y * y) for y in (y_ours, y_theirs))
    grads = zip(
        tape.gradient(loss_ours, [x, ours.gamma, ours.beta]), tape.gradient(loss_theirs, [x, theirs.gamma, theirs.beta])
    )
    figures = {"output_abs": float(np.max(np.abs(y_ours - y_theirs)))}
    for name, (a, b) in zip(("x", "gamma", "beta"), grads):
        figures[f"grad_{name}_rel_to_max"] = float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
    figures["moving_mean_abs"] = float(np.max(np.abs(ours.moving_mean.numpy() - theirs.moving_mean.numpy())))
    return figures


def int8(seed: int, root: Path) -> dict:
    """tests/test_compress_export.py's run exported integer-only (TFLite) and int8 (ONNX): the test
    accuracy each loses against the float model, and their top-1 agreement with it."""
    from resnet_train.tools.export import export_run

    tiny = ("depth=8", "batch_size=32", "epochs=8", "data.limit_train=512", "data.limit_test=100")
    _run((*tiny, "runtime=one_device", "runtime.precision=float32", f"seed={seed}"), root / "run")
    figures = {}
    for fmt, quantize in (("tflite", "int8_full"), ("onnx", "int8")):
        r = export_run(root / "run", fmt=fmt, quantize=quantize, out=root / "export")
        figures[f"{fmt}_{quantize}_accuracy_drop"] = r["original_accuracy"] - r["accuracy"]
        figures[f"{fmt}_{quantize}_top1_agreement"] = r["top1_agreement"]
    return {"float_accuracy": r["original_accuracy"], **figures}


MEASURES = {
    "fine_tuning": fine_tuning,
    "bfloat16": bfloat16,
    "xla": xla,
    "fused_batch_norm": fused_batch_norm,
    "int8": int8,
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--only", nargs="+", choices=sorted(MEASURES), default=sorted(MEASURES))
    args = parser.parse_args(argv)
    import os

    import tensorflow as tf

    figures = {}
    for name in args.only:
        per_seed = []
        for seed in args.seeds:
            if name in ("fine_tuning", "bfloat16", "int8"):
                with tempfile.TemporaryDirectory() as root:
                    per_seed.append(MEASURES[name](seed, Path(root)))
            else:
                per_seed.append(MEASURES[name](seed))
        figures[name] = {key: [round(s[key], 9) for s in per_seed] for key in per_seed[0]}
        figures[name] |= {f"{key}_range": [min(v), max(v)] for key, v in list(figures[name].items())}
    out = {"cpu": _cpu(), "tensorflow": tf.__version__, "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default")}
    json.dump({**out, "seeds": args.seeds, "figures": figures}, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
