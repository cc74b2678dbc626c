"""The margin by which a distilled student beats the same student trained alone, over seeds.

tests/test_distill.py's threshold comes from this spread, measured with oneDNN off and on:

    TF_ENABLE_ONEDNN_OPTS=0 python scripts/distill_margin.py --seeds 0 1 2 > off.json
    TF_ENABLE_ONEDNN_OPTS=1 python scripts/distill_margin.py --seeds 0 1 2 > on.json

The embedded digits: a teacher trained once (seed 0, all 1,437 training images), then per seed a
ResNet-8 student on the first 320 of them, for the same epochs and batches, with and without
distill.teacher (the student's budget is the same; the teacher's training is not counted in it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _run(overrides, workdir: Path) -> dict:
    from resnet_train.config import load_config
    from resnet_train.training.loop import train_and_evaluate

    started = time.perf_counter()
    results = train_and_evaluate(load_config(list(overrides)), workdir)
    return {"test_accuracy": results["test"]["accuracy"], "test_loss": results["test"]["loss"],
            "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip


# The setting measured.
TEACHER = ["depth=8", "epochs=10"]
STUDENT = ["depth=8", "epochs=30", "batch_size=32", "data.limit_train=320"]
DISTILL = ["distill.temperature=4", "distill.alpha=0.5"]
# oneDNN: TF_ENABLE_ONEDNN_OPTS as given (read when TensorFlow starts); no measured levers.
BASE = ("runtime=one_device", "runtime.precision=float32", "runtime.xla=false", "runtime.steps_per_call=1",
        "runtime.threads=default")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--teacher", nargs="*", default=TEACHER, help="the teacher's overrides")
    parser.add_argument("--student", nargs="*", default=STUDENT)
    parser.add_argument("--distill", nargs="*", default=DISTILL)
    args = parser.parse_args()
    base = BASE
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        teacher_dir = Path(tmp) / "teacher"
        teacher = _run((*base, *args.teacher, "seed=0"), teacher_dir)
        print(json.dumps({"teacher": teacher}), file=sys.stderr)
        for seed in args.seeds:
            root = Path(tmp) / str(seed)
            alone = _run((*base, *args.student, f"seed={seed}"), root / "alone")
            distilled = _run(
                (*base, *args.student, f"seed={seed}", f"distill.teacher={teacher_dir}", *args.distill),
                root / "distilled",
            )
            margin = distilled["test_accuracy"] - alone["test_accuracy"]
            rows.append({"seed": seed, "alone": alone, "distilled": distilled, "margin": margin})
            print(json.dumps(rows[-1]), file=sys.stderr)
    margins = [r["margin"] for r in rows]
    summary = {"cpu": _cpu(), "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS"), "args": vars(args)}
    summary.update(teacher=teacher, min_margin=min(margins), max_margin=max(margins), runs=rows)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
