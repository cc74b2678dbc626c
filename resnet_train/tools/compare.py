"""resnet-export format=all: every format and quantisation of a run, measured side by side in one
table to choose from (comparison.csv and comparison.md in the export folder, printed too).

A format of resnet-export rather than a command of its own: each row is exactly the export that
`resnet-export format=F quantize=Q` writes and evaluates alone (the same files, names and checks),
and one command loads the run, its test images and its calibration images once for all of them.

Per row: size and gzip size (what a download costs; pruning's zeros show only in the latter), the
test split's accuracy, top-1 agreement and the largest probability difference with the original
model, CPU latency (median and p90 at batch 1 and 32, after a warm-up) in the runtime each format
is deployed with, on this machine's cores: TensorFlow for the SavedModel, LiteRT's interpreter
with XNNPACK for TFLite, onnxruntime for ONNX; and the sparsity of the weights exported (the
fraction of exact zeros in the conv and dense kernels, measured, so a pruned run shows it
whatever its config says).
"""

from __future__ import annotations

import csv
import gc
import io
import logging
import time

import numpy as np

from resnet_train.tools.artifacts import (
    cores,
    figures,
    gzip_size,
    in_batches,
    load_predictor,
    size,
)
from resnet_train.tools.staged import staged
from resnet_train.training.prune import kernel_sparsity  # resnet-eval's measure of the zeros

log = logging.getLogger(__name__)

ARTIFACTS = (
    ("saved_model", "none"),
    ("tflite", "none"),
    ("tflite", "float16"),
    ("tflite", "dynamic"),
    ("tflite", "int8"),
    ("tflite", "int8_full"),
    ("onnx", "none"),
    ("onnx", "int8"),
)
RUNTIMES = {"saved_model": "tensorflow", "tflite": "litert+xnnpack", "onnx": "onnxruntime"}
LATENCY_BATCHES = (1, 32)
LATENCY_RUNS = 20  # timed calls per batch size (latency_runs=N)
WARMUP_CALLS = 3  # tracing, tensor allocation, XNNPACK's weight packing: not what a served call costs

# (column, markdown header, format): the CSV holds the raw values, the markdown these.
COLUMNS = [
    ("format", "format", "{}"),
    ("quantize", "quantize", "{}"),
    ("runtime", "runtime", "{}"),
    ("sparsity", "sparsity", "{:.1%}"),
    ("bytes", "size", "{:,}"),
    ("gzip_bytes", "gzip", "{:,}"),
    ("accuracy", "accuracy", "{:.4f}"),
    ("top1_agreement", "top-1 agreement", "{:.4f}"),
    ("max_probability_difference", "max prob. diff.", "{:.2e}"),
    *((f"b{b}_{stat}_ms", f"b{b} {stat} ms", "{:.3f}") for b in LATENCY_BATCHES for stat in ("median", "p90")),
    ("path", "file", "{}"),
]


def latency(predict, images, runs: int = LATENCY_RUNS) -> dict:
    """Milliseconds per call at each batch size: median and 90th percentile of `runs` timed calls
    on the test images (repeated to fill a batch when there are fewer)."""
    out = {}
    for batch in LATENCY_BATCHES:
        x = np.resize(images, (batch, *images.shape[1:]))
        for _ in range(WARMUP_CALLS):
            predict(x)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            predict(x)
            times.append(1e3 * (time.perf_counter() - start))
        out[f"b{batch}_median_ms"] = float(np.median(times))
        out[f"b{batch}_p90_ms"] = float(np.percentile(times, 90))
    return out


def compare(job, export_artifact, opset, latency_runs: int = LATENCY_RUNS) -> dict:
    """Exports every ARTIFACTS pair with export_artifact(job, fmt, quantize, opset) (export.py's,
    handed in: this module sits under it), measures each, writes the table; returns it."""
    sparsity = kernel_sparsity(job.run.model)["overall"]
    rows = []
    for fmt, quantize in ARTIFACTS:
        path = export_artifact(job, fmt, quantize, opset)
        predict = load_predictor(path, fmt, job.task)
        exported = in_batches(predict, job.images, job.batch_size)
        row = {"format": fmt, "quantize": quantize, "runtime": RUNTIMES[fmt], "sparsity": sparsity}
        row |= {
            "bytes": size(path),
            "gzip_bytes": gzip_size(path),
            **figures(exported, job.original, job.labels, job.threshold),
        }
        row |= {**latency(predict, job.images, latency_runs), "path": path.name}
        rows.append(row)
        log.info("%s %s: accuracy %.4f, b1 median %.3f ms", fmt, quantize, row["accuracy"], row["b1_median_ms"])
        del predict  # its runtime's threads go before the next one is timed
        gc.collect()
    table, markdown = job.out_dir / "comparison.csv", job.out_dir / "comparison.md"
    text = markdown_table(rows, _caption(job, rows, latency_runs))
    with staged(table, markdown) as (csv_temp, md_temp):
        csv_temp.write_text(csv_text(rows))
        md_temp.write_text(text)
    return {
        "format": "all",
        "weights": job.run.weights,
        "split": job.split,
        "examples": rows[0]["examples"],
        "original_accuracy": rows[0]["original_accuracy"],
        "rows": rows,
        "files": [str(table), str(markdown)],
        "markdown": text,
    }


def columns(rows) -> list:
    """COLUMNS, for a multi-label run's rows (which have a map) with mAP and label-set agreement
    beside accuracy, named exact match there."""
    if not rows or "map" not in rows[0]:
        return COLUMNS
    at = [c for c, _, _ in COLUMNS].index("accuracy")
    multilabel = [
        ("accuracy", "exact match", "{:.4f}"),
        ("map", "mAP", "{:.4f}"),
        ("label_agreement", "label-set agreement", "{:.4f}"),
    ]
    return COLUMNS[:at] + multilabel + COLUMNS[at + 1 :]


def csv_text(rows) -> str:
    out = io.StringIO()
    original = ["original_map"] if rows and "map" in rows[0] else []
    fields = [c for c, _, _ in columns(rows)] + ["examples", "original_accuracy", *original]
    writer = csv.DictWriter(out, fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def markdown_table(rows, caption: str) -> str:
    shown = columns(rows)
    lines = [caption, "", "| " + " | ".join(h for _, h, _ in shown) + " |"]
    lines.append("|" + "|".join("---" for _ in shown) + "|")
    lines += ["| " + " | ".join(f.format(row[c]) for c, _, f in shown) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _caption(job, rows, runs: int) -> str:
    from resnet_train.runtime import onednn

    first = rows[0]
    original = (
        f"original mAP {first['original_map']:.4f}, exact match {first['original_accuracy']:.4f}"
        if "original_map" in first
        else f"original accuracy {first['original_accuracy']:.4f}"
    )
    return (
        f"{job.run.run_dir}: {first['examples']} {job.split} images, {original}; "
        f"latency over {runs} calls on {cores()} cores of "
        f"{onednn.cpu_identity()['model']} (TensorFlow's oneDNN {'on' if onednn.enabled() else 'off'})"
    )
