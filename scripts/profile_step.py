#!/usr/bin/env python
"""Profiles a few training steps with tf.profiler and prints where the time goes (by op type).

    pip install xprof            # the profiler's converter (not a project dependency)
    python scripts/profile_step.py --depth 20 --batch 128 --steps 10 [--precision mixed_bfloat16]
Also writes the trace to --logdir for TensorBoard's profile tab.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--precision", default="float32", choices=["float32", "mixed_bfloat16", "mixed_float16"])
    parser.add_argument("--logdir", default=tempfile.mkdtemp(prefix="resnet_profile_"))
    args = parser.parse_args()

    import keras
    import numpy as np
    import tensorflow as tf

    from resnet_train import models
    from resnet_train.training.trainer import Trainer

    keras.mixed_precision.set_global_policy(args.precision)  # the model's compute dtype, as the command's
    strategy = tf.distribute.get_strategy()
    model = models.build(args.depth, 10, (32, 32, 3))
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer.build(model.trainable_variables)
    trainer = Trainer(model, optimizer, strategy, args.batch, weight_decay=1e-4)
    rng = np.random.default_rng(0)
    batch = (
        rng.integers(0, 256, (args.batch, 32, 32, 3)).astype(np.uint8),
        rng.integers(0, 10, args.batch).astype(np.int64),
    )
    iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())
    for _ in range(3):
        trainer.train_steps(iterator, 1)
    trainer.train_metrics()
    tf.profiler.experimental.start(args.logdir)
    for _ in range(args.steps):
        trainer.train_steps(iterator, 1)
    trainer.train_metrics()
    tf.profiler.experimental.stop()

    from xprof.convert import raw_to_tool_data

    xplanes = [str(p) for p in Path(args.logdir).rglob("*.xplane.pb")]
    data, _ = raw_to_tool_data.xspace_to_tool_data(xplanes, "framework_op_stats", {})
    table = json.loads(data)[0]  # a Google DataTable: columns, then rows of cells
    ids = [c["id"] for c in table["cols"]]
    by_type = {}
    for row in table["rows"]:
        cells = dict(zip(ids, (c.get("v") if c else None for c in row["c"])))
        if cells["operation"] == "IDLE":
            continue
        by_type[cells["type"]] = by_type.get(cells["type"], 0.0) + float(cells["total_self_time"] or 0)
    total = sum(by_type.values()) or 1.0
    where = f"(trace in {args.logdir})"
    print(f"ResNet-{args.depth} {args.precision}, batch {args.batch}, {args.steps} steps: self time by op type {where}")
    for kind, us in sorted(by_type.items(), key=lambda kv: -kv[1])[:15]:
        print(f"  {kind:<40} {us / 1e3 / args.steps:8.1f} ms/step  {us / total:6.1%}")


if __name__ == "__main__":
    main()
