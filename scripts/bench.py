#!/usr/bin/env python
"""Throughput on this machine, measured in one run so the ratios are comparable.

    python scripts/bench.py                 # table on stdout
    python scripts/bench.py --json bench.json --quick

Sections:
- training images/s of our trainer for ResNet-20 and ResNet-56 (32x32, batch 128): float32, the
  `auto` precision, mixed_bfloat16; one replica vs 2 logical CPU replicas (MirroredStrategy);
- the input pipeline alone (CIFAR-shaped in-memory data with each augmentation; ImageNet-shaped
  JPEGs with the fused decode + inception crop), as a multiple of ResNet-20 training. The pipeline
  must deliver >= 10x what training consumes.
"""
from __future__ import annotations

import argparse
import json
import os
import platform

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter windows (noisier)")
    args = parser.parse_args()

    from resnet_train.runtime import split_cpu

    split_cpu(2)  # before TensorFlow starts: two logical CPUs for the MirroredStrategy rows
    import tensorflow as tf

    from resnet_train.bench import (iterator_throughput, jpeg_bytes, keras_randaugment_batches,
                                    pipeline_throughput, smooth_images, train_throughput)
    from resnet_train.data.augment import make_augment, make_batch_augment
    from resnet_train.runtime import auto_precision, make_strategy

    windows, per_window = (3, 10) if args.quick else (5, 20)
    rows = []

    def row(name, result, note=""):
        rows.append({"name": name, **result, "note": note})
        print(f"{name:<56} {result['images_per_sec']:>9.0f} img/s  ({result['min']:.0f}..{result['max']:.0f}) {note}",
              flush=True)

    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}")
    auto, why = auto_precision()
    print(f"auto precision here: {auto} ({why})")
    one, two = make_strategy("one_device"), make_strategy("mirrored", cpu_replicas=2)
    measured = {}
    for depth in (20, 56):
        for precision in dict.fromkeys(["float32", auto, "mixed_bfloat16"]):
            for label, strategy in (("1 replica", one), ("2 CPU replicas", two)):
                if label != "1 replica" and precision != "float32":
                    continue
                result = train_throughput(depth, (32, 32, 3), 128, windows=windows,
                                          steps_per_window=max(2, per_window // (2 if depth == 20 else 6)),
                                          precision=precision, strategy=strategy)
                measured[(depth, precision, label)] = result["images_per_sec"]
                base = measured.get((depth, "float32", "1 replica"))
                note = f"{result['images_per_sec'] / base:.2f}x float32 1 replica" if base else ""
                tag = "auto=" + precision if precision == auto else precision
                row(f"train ResNet-{depth} batch 128, {tag}, {label}", result, note)
    train = {"images_per_sec": measured[(20, "float32", "1 replica")]}

    cifar = tf.data.Dataset.from_tensor_slices(
        (smooth_images(10_000, (32, 32, 3)), tf.zeros([10_000], tf.int64)))
    for label, cfg in [
        ("standard", {"crop": "pad", "padding": 4, "horizontal_flip": True}),
        ("autoaugment", {"crop": "pad", "padding": 4, "horizontal_flip": True, "autoaugment": "cifar"}),
        ("randaugment", {"crop": "pad", "padding": 4, "horizontal_flip": True,
                         "randaugment": {"num_ops": 2, "magnitude": 9}}),
        ("cutout+mixup+cutmix", {"crop": "pad", "padding": 4, "horizontal_flip": True, "cutout": 16,
                                 "mixup_alpha": 1.0, "cutmix_alpha": 1.0}),
    ]:
        result = pipeline_throughput(cifar, 10_000, 128, make_augment(cfg), make_batch_augment(cfg, 10),
                                     windows=windows, steps_per_window=per_window)
        ratio = result["images_per_sec"] / train["images_per_sec"]
        row(f"pipeline CIFAR-shaped, augment={label}", result, f"{ratio:.1f}x training")

    keras_rand = iterator_throughput(keras_randaugment_batches(cifar, 128), 128, windows, per_window)
    row("pipeline CIFAR-shaped, keras.layers.RandAugment", keras_rand,
        f"{keras_rand['images_per_sec'] / train['images_per_sec']:.1f}x training (reference for ours)")

    photos = jpeg_bytes(smooth_images(256, (375, 500, 3), seed=1))
    jpegs = tf.data.Dataset.from_tensor_slices((photos, tf.zeros([len(photos)], tf.int64)))
    augment = make_augment({"crop": "inception", "horizontal_flip": True}, (224, 224, 3), encoded=True)
    row("pipeline ImageNet-shaped JPEG 500x375 -> 224", pipeline_throughput(
        jpegs, len(photos), 64, augment, windows=windows, steps_per_window=max(2, per_window // 4)),
        "decode+inception crop+flip")

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"tensorflow": tf.__version__, "cpus": os.cpu_count(), "rows": rows}, f, indent=2)
        print(f"Wrote {args.json}")


if __name__ == "__main__":
    main()
