"""README's "Smaller models" table: a teacher, a student alone and distilled, the teacher pruned, exported.

    python scripts/compression_table.py [--out DIR]

On the embedded digits, in one process, oneDNN and threads as `resnet-train` chooses them here
(TF_ENABLE_ONEDNN_OPTS as exported, else runtime=auto's measurement): a ResNet-20 teacher (the
digits recipe), a ResNet-8 trained alone and one distilled from the teacher (the same recipe,
distill's default temperature and alpha), and the teacher pruned to 50% and 80% by the README's
fine-tune (init_from=teacher prune.sparsity=S). Each run is exported with `resnet-export
format=all`; one markdown table keeps the float and int8 rows of every run (each run's full table
stays in <run>/export/comparison.md under --out).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

from distill_margin import _run  # train_and_evaluate in-process, timed

KEEP = (  # (format, quantize): float and int8 rows of compare.ARTIFACTS
    ("saved_model", "none"),
    ("tflite", "none"),
    ("tflite", "dynamic"),
    ("tflite", "int8_full"),
    ("onnx", "none"),
    ("onnx", "int8"),
)
HEADER = (
    "| model | format | quantize | sparsity | size kB | gzip kB | test accuracy | top-1 agreement "
    "| b1 median ms | b32 median ms |\n|---|---|---|---|---|---|---|---|---|---|"
)


def _runs(root: Path, epochs: int, finetune_epochs: int) -> list[tuple[str, str, list[str]]]:
    """(model, folder, overrides) in training order: the teacher first, the others use it."""
    teacher, recipe = root / "teacher", [f"epochs={epochs}"]
    finetune = [f"init_from={teacher}", f"epochs={finetune_epochs}", "optimizer.lr=0.02", "schedule=cosine"]
    return [
        ("ResNet-20 teacher", "teacher", ["depth=20", *recipe]),
        ("ResNet-8 alone", "alone", ["depth=8", *recipe]),
        ("ResNet-8 distilled", "distilled", ["depth=8", *recipe, f"distill.teacher={teacher}"]),
        ("ResNet-20 pruned 50%", "pruned50", [*finetune, "prune.sparsity=0.5"]),
        ("ResNet-20 pruned 80%", "pruned80", [*finetune, "prune.sparsity=0.8"]),
    ]


def _row(model: str, r: dict) -> str:
    cells = [model, r["format"], r["quantize"], f"{r['sparsity']:.0%}", f"{r['bytes'] / 1e3:,.0f}"]
    cells += [f"{r['gzip_bytes'] / 1e3:,.0f}", f"{r['accuracy']:.4f}", f"{r['top1_agreement']:.4f}"]
    cells += [f"{r['b1_median_ms']:.2f}", f"{r['b32_median_ms']:.2f}"]
    return "| " + " | ".join(cells) + " |"


def _caption(args, environ: str | None, trained: dict, export: dict, examples: int, wall: float) -> str:
    import tensorflow as tf

    from resnet_train.runtime import onednn
    from resnet_train.tools.artifacts import cores

    cpu, command = onednn.cpu_identity(), shlex.join(["python", "scripts/compression_table.py", *sys.argv[1:]])
    dnn = f"oneDNN {'on' if onednn.enabled() else 'off'} ({onednn.ENV}{'=' + environ if environ else ' unset'})"
    seconds = ", ".join(f"{m} {trained[m]['seconds']:.0f} s" for m in trained)
    return (
        f"`{command}` ({wall / 60:.1f} min) on {cores()} cores of an {cpu['model']} (family {cpu['family']}), "
        f"TensorFlow {tf.__version__}, {dnn}; the {examples} test images; agreement with each run's own Keras "
        f"model; latency: median of 20 calls after a warm-up (TensorFlow, LiteRT+XNNPACK, onnxruntime). "
        f"Training: teacher and students {args.epochs} epochs each (distilled: T=4, alpha=0.5), pruning "
        f"{args.finetune_epochs} fine-tune epochs at lr 0.02, cosine ({seconds}; exports {sum(export.values()):.0f} s)."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="keeps the runs and their exports here (default: a temp folder)")
    parser.add_argument("--epochs", type=int, default=15, help="teacher and students (15: the digits recipe)")
    parser.add_argument("--finetune-epochs", type=int, default=10, help="each pruning fine-tune")
    args = parser.parse_args()
    started = time.perf_counter()
    from resnet_train.runtime import onednn, threads, tuning

    environ = os.environ.get(onednn.ENV)  # for the caption, before apply() sets it
    measured = tuning.tune()  # as resnet-train does before TensorFlow's import (cached)
    onednn.apply("auto", measured=tuning.choice(measured, "onednn"))
    threads.apply("auto", measured=tuning.choice(measured, "threads"))
    from resnet_train.tools.export import export_run

    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        trained, export, lines = {}, {}, [HEADER]
        for model, folder, overrides in _runs(root, args.epochs, args.finetune_epochs):
            trained[model] = _run(overrides, root / folder)
            print(f"{model}: {trained[model]}", file=sys.stderr)
        for model, folder, _ in _runs(root, args.epochs, args.finetune_epochs):
            begun = time.perf_counter()
            rows = {(r["format"], r["quantize"]): r for r in export_run(root / folder, fmt="all")["rows"]}
            export[model] = time.perf_counter() - begun
            lines += [_row(model, rows[key]) for key in KEEP]
        examples = rows["saved_model", "none"]["examples"]
        caption = _caption(args, environ, trained, export, examples, time.perf_counter() - started)
        text = caption + "\n\n" + "\n".join(lines) + "\n"
        (root / "table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
