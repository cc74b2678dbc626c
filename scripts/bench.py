#!/usr/bin/env python
"""Throughput on this machine, everything measured in one run so that the ratios compare.

    python scripts/bench.py                      # table on stdout (about 8 minutes on 2 cores + the rounds)
    python scripts/bench.py --json bench.json --quick
    python scripts/bench.py --only rounds --rounds 3    # command vs peers alone (~10 min a round on 2 cores)

Sections:
- hardware: the measured matmul rate at float32 and bfloat16 (the yardstick of MFU);
- training images/s of our trainer for ResNet-20 / ResNet-56 (32x32, batch 128) and ResNet-50
  (224x224): float32, the `auto` precision, mixed_bfloat16, 1 vs 2 logical CPU replicas,
  steps per call; with model FLOPs utilisation (training FLOPs per image x images/s / matmul rate);
- the command itself: `resnet-train data=synthetic depth=20 batch_size=128` in a fresh process, the
  real input pipeline, augmentation and loop, epochs of 60 steps (30 with --quick), its log's img/s
  after the first epoch, the first call's cost and each epoch's time outside its steps;
- command vs peers, N rounds alternated (`--rounds`, 3; `--only rounds` runs this section alone):
  the command as typed and each peer at its best in turn, round after round; each ratio is the
  median of the per-round ratios with its min and max (scripts/bench_rounds.py);
- peers on the same model and batch: Keras compile + fit (its fastest jit_compile /
  steps_per_execution, and for ResNet-20 oneDNN's other setting in a process of its own), and
  PyTorch eager (channels_last) when torch is installed;
- the input pipeline alone and evaluation, as multiples of training (ImageNet-shaped JPEGs: of
  ResNet-50's, as tfds streams them, from a folder streamed from disk, from TFRecords); start-up time;
- exported ResNet-20's CPU latency at batch 1 and 32 (median, p90) as `resnet-export format=all`
  times it: the SavedModel in TensorFlow, TFLite float and integer-only in LiteRT with XNNPACK, ONNX
  float and int8 in onnxruntime (img/s here is the batch over the median).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter windows (noisier)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the command vs peers section (0: none)")
    parser.add_argument("--only", choices=["rounds"], help="run only this section")
    args = parser.parse_args()

    from resnet_train.runtime import onednn

    onednn_why = onednn.apply("auto")  # as the command decides: every row runs the same kernels
    from resnet_train.runtime.devices import split_cpu

    split_cpu(2)  # before TensorFlow starts: two logical CPUs for the MirroredStrategy rows
    import tensorflow as tf
    from benchmarks import (
        cli_throughput,
        cpu_description,
        eval_throughput,
        export_latency,
        file_pipelines,
        iterator_throughput,
        jpeg_bytes,
        keras_fit_throughput,
        keras_randaugment_batches,
        pipeline_throughput,
        smooth_images,
        train_throughput,
        with_onednn,
    )

    from resnet_train import models
    from resnet_train.data.augment import make_augment, make_batch_augment
    from resnet_train.runtime.devices import auto_precision, make_strategy, matmul_flops

    windows, per_window = (3, 4) if args.quick else (4, 6)
    rows, out = (
        [],
        {
            "tensorflow": tf.__version__,
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "cpu": cpu_description(),
            "onednn": {"on": onednn.enabled(), "why": onednn_why},
        },
    )

    def row(name, result, note=""):
        rows.append({"name": name, **result, "note": note})
        spread = f"({result['min']:.0f}..{result['max']:.0f})" if "min" in result else ""
        print(f"{name:<58} {result['images_per_sec']:>9.1f} img/s {spread:>14} {note}", flush=True)

    auto, why = auto_precision()
    peak = {"float32": matmul_flops("float32"), "bfloat16": matmul_flops("bfloat16")}
    out["peak_flops"] = peak
    print(
        f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores of {out['cpu']['model']} "
        f"(family {out['cpu']['family']}; {', '.join(out['cpu']['flags'])})"
    )
    print(f"oneDNN {'on' if onednn.enabled() else 'off'} ({onednn_why}); auto precision: {auto} ({why})")
    print(f"matmul rate: float32 {peak['float32'] / 1e9:.0f} GFLOP/s, bfloat16 {peak['bfloat16'] / 1e9:.0f} GFLOP/s")

    if args.rounds:  # the headline ratios first: command vs peers, alternated (scripts/bench_rounds.py)
        from bench_rounds import run_rounds

        out["rounds"] = run_rounds(args.rounds, args.quick, auto)
    if args.only == "rounds":
        write(out, args.json)
        return

    def mfu(depth, shape, classes, rate, precision):
        flops = 3 * models.forward_flops(models.build(depth, classes, shape))  # forward + backward
        yardstick = peak["bfloat16" if "bfloat16" in precision else "float32"]
        return f"MFU {flops * rate / yardstick:.1%}"

    one, two = make_strategy("one_device"), make_strategy("mirrored", cpu_replicas=2)
    ours = {}
    best_keras_config = (False, 1)  # replaced by the fastest setting found on ResNet-20
    for depth in (20, 56):
        steps = max(2, per_window // (1 if depth == 20 else 2))
        for precision in dict.fromkeys(["float32", auto, "mixed_bfloat16"]):
            for spc in (1, 5) if precision == "float32" else (1,):
                r = train_throughput(
                    depth,
                    (32, 32, 3),
                    128,
                    windows=windows if spc == 1 else 3,
                    steps_per_window=max(steps, spc),
                    precision=precision,
                    strategy=one,
                    steps_per_call=spc,
                )
                ours[(depth, precision, spc)] = r["images_per_sec"]
                tag = ("auto=" if precision == auto else "") + precision
                row(
                    f"ours ResNet-{depth} b128 {tag}, steps_per_call={spc}",
                    r,
                    mfu(depth, (32, 32, 3), 10, r["images_per_sec"], precision),
                )
        r = train_throughput(depth, (32, 32, 3), 128, windows=windows, steps_per_window=steps, strategy=two)
        row(
            f"ours ResNet-{depth} b128 float32, 2 CPU replicas",
            r,
            f"{r['images_per_sec'] / ours[(depth, 'float32', 1)]:.2f}x 1 replica",
        )
        best_ours = max(v for (d, p, _), v in ours.items() if d == depth and p == "float32")
        configs = [(False, 1), (False, 5), (True, 5)] if depth == 20 else [best_keras_config]
        keras_best = None
        for jit, spe in configs:
            r = keras_fit_throughput(
                depth,
                (32, 32, 3),
                128,
                jit_compile=jit,
                steps_per_execution=spe,
                windows=3,
                steps_per_window=max(steps, spe),
            )
            row(
                f"keras fit ResNet-{depth} b128 float32 jit={jit} spe={spe} (Keras BN)",
                r,
                f"ours {best_ours / r['images_per_sec']:.2f}x",
            )
            if keras_best is None or r["images_per_sec"] > keras_best[0]:
                keras_best, best_keras_config = (r["images_per_sec"], (jit, spe)), (jit, spe)
        if depth == 20:  # Keras fit at its best includes oneDNN's other setting (a process of its own)
            other = not onednn.enabled()
            for jit, spe in [(False, 5), (True, 5)]:
                r = with_onednn(
                    other,
                    "keras_fit_throughput",
                    depth=depth,
                    image_shape=[32, 32, 3],
                    batch_size=128,
                    jit_compile=jit,
                    steps_per_execution=spe,
                    windows=3,
                    steps_per_window=max(steps, spe),
                )
                row(
                    f"keras fit ResNet-{depth} b128 float32 jit={jit} spe={spe}, oneDNN {'on' if other else 'off'}",
                    r,
                    f"ours {best_ours / r['images_per_sec']:.2f}x",
                )
                keras_best = max(keras_best, (r["images_per_sec"], (jit, spe)))
            out["keras_fit_best_resnet20"] = keras_best[0]
        out[f"ratio_ours_vs_keras_fit_resnet{depth}"] = best_ours / keras_best[0]
        if depth == 20:  # the command as users type it, beside the trainer alone and Keras fit
            cli = cli_throughput(20, 128, 30 if args.quick else 60, 3, "runtime.precision=float32")
            # The trainer again right after the command: the ratio uses both of its figures, so a
            # machine that slowed down or sped up during the command moves both sides alike.
            again = train_throughput(
                20, (32, 32, 3), 128, windows=windows, steps_per_window=steps, precision="float32", strategy=one
            )["images_per_sec"]
            cli_rate, trainer_rate = cli["images_per_sec"], (ours[(20, "float32", 1)] + again) / 2
            out["trainer_resnet20_around_cli"] = [ours[(20, "float32", 1)], again]
            row(
                "resnet-train ResNet-20 b128 float32 (the command, real pipeline)",
                cli,
                f"{cli_rate / trainer_rate:.2f}x trainer, {cli_rate / keras_best[0]:.2f}x keras fit; "
                f"{mfu(20, (32, 32, 3), 10, cli_rate, 'float32')}; first call {cli['first_call_s']} s",
            )
            out["cli_resnet20"] = cli
            out["ratio_cli_vs_trainer_resnet20"] = cli_rate / trainer_rate
            out["ratio_cli_vs_keras_fit_resnet20"] = cli_rate / keras_best[0]
            flops = 3 * models.forward_flops(models.build(20, 10, (32, 32, 3)))
            out["mfu_cli_resnet20"] = flops * cli_rate / peak["float32"]
            cli_best = cli_rate
            if auto != "float32":  # the command as typed, with the precision `auto` picks here
                cli_auto = cli_throughput(20, 128, 30 if args.quick else 60, 3, "runtime.precision=auto")
                row(
                    f"resnet-train ResNet-20 b128 auto={auto} (the command)",
                    cli_auto,
                    f"{cli_auto['images_per_sec'] / cli_rate:.2f}x its float32",
                )
                out["cli_auto_resnet20"] = cli_auto
                cli_best = max(cli_best, cli_auto["images_per_sec"])
        if depth == 20:  # the same comparison with our fused batch norm inside Keras' model too
            r = keras_fit_throughput(
                depth,
                (32, 32, 3),
                128,
                jit_compile=best_keras_config[0],
                steps_per_execution=best_keras_config[1],
                windows=3,
                steps_per_window=max(steps, best_keras_config[1]),
                fused_bn=True,
            )
            row(
                f"keras fit ResNet-{depth} b128 float32, our FusedBatchNorm",
                r,
                f"ours {best_ours / r['images_per_sec']:.2f}x (loop alone)",
            )

    try:
        from torch_reference import throughput as torch_throughput

        torch_rates = {}
        for dtype in ("float32", "bfloat16"):
            r = torch_throughput(20, 128, dtype, windows=windows, steps_per_window=per_window)
            torch_rates[dtype] = r["images_per_sec"]
            row(f"pytorch {r['torch']} eager ResNet-20 b128 {dtype}", r, f"{r['threads']} threads")
        best_torch = max(torch_rates.values())
        best_auto = max(v for (d, p, _), v in ours.items() if d == 20 and p == auto)
        out["ratio_ours_auto_vs_torch_best_resnet20"] = best_auto / best_torch
        out["ratio_cli_vs_torch_best_resnet20"] = cli_best / best_torch  # each at its best precision
        print(f"{'':58} the command (best precision) / pytorch best: {cli_best / best_torch:.2f}x")
        print(f"{'':58} ours ({auto}) / pytorch best: {best_auto / best_torch:.2f}x")
    except ImportError:
        print("pytorch not installed: no outside reference (pip install torch==2.13.0)")

    r50 = train_throughput(50, (224, 224, 3), 16, num_classes=1000, windows=3, steps_per_window=2)
    row("ours ResNet-50 224x224 b16 float32", r50, mfu(50, (224, 224, 3), 1000, r50["images_per_sec"], "float32"))
    k50 = keras_fit_throughput(
        50,
        (224, 224, 3),
        16,
        num_classes=1000,
        jit_compile=best_keras_config[0],
        steps_per_execution=2,
        windows=3,
        steps_per_window=2,
    )
    row("keras fit ResNet-50 224x224 b16 float32", k50, f"ours {r50['images_per_sec'] / k50['images_per_sec']:.2f}x")

    train20 = ours[(20, "float32", 1)]
    e = eval_throughput(20, (32, 32, 3), 256)
    row("ours eval ResNet-20 b256 float32", e, f"{e['images_per_sec'] / train20:.1f}x training")
    cifar = tf.data.Dataset.from_tensor_slices((smooth_images(10_000, (32, 32, 3)), tf.zeros([10_000], tf.int64)))
    for label, cfg in [
        ("standard", {"crop": "pad", "padding": 4, "horizontal_flip": True}),
        ("autoaugment", {"crop": "pad", "padding": 4, "horizontal_flip": True, "autoaugment": "cifar"}),
        (
            "randaugment",
            {"crop": "pad", "padding": 4, "horizontal_flip": True, "randaugment": {"num_ops": 2, "magnitude": 9}},
        ),
        (
            "cutout+mixup+cutmix",
            {
                "crop": "pad",
                "padding": 4,
                "horizontal_flip": True,
                "cutout": 16,
                "mixup_alpha": 1.0,
                "cutmix_alpha": 1.0,
            },
        ),
    ]:
        r = pipeline_throughput(
            cifar,
            10_000,
            128,
            make_augment(cfg),
            make_batch_augment(cfg, 10),
            windows=windows,
            steps_per_window=per_window * 2,
        )
        row(f"pipeline CIFAR-shaped, augment={label}", r, f"{r['images_per_sec'] / train20:.1f}x training")
    r = iterator_throughput(keras_randaugment_batches(cifar, 128), 128, windows, per_window * 2)
    row("pipeline CIFAR-shaped, keras.layers.RandAugment", r, f"{r['images_per_sec'] / train20:.1f}x (reference)")
    photos = jpeg_bytes(smooth_images(256, (375, 500, 3), seed=1))
    jpegs = tf.data.Dataset.from_tensor_slices((photos, tf.zeros([len(photos)], tf.int64)))
    augment = make_augment({"crop": "inception", "horizontal_flip": True}, (224, 224, 3), encoded=True)
    train50 = r50["images_per_sec"]
    r = pipeline_throughput(jpegs, len(photos), 64, augment, windows=windows, steps_per_window=3)
    row("pipeline ImageNet-shaped JPEG 500x375 -> 224", r, f"{r['images_per_sec'] / train50:.1f}x ResNet-50 training")
    for label, r in file_pipelines(photos, windows):
        row(label, r, f"{r['images_per_sec'] / train50:.1f}x ResNet-50 training")

    from resnet_train.tools.compare import LATENCY_BATCHES, RUNTIMES

    for (fmt, quantize), r in export_latency(20, (32, 32, 3), runs=10 if args.quick else 20).items():
        for b in LATENCY_BATCHES:
            median, p90 = r[f"b{b}_median_ms"], r[f"b{b}_p90_ms"]
            row(
                f"latency ResNet-20 {fmt} {quantize} b{b} ({RUNTIMES[fmt]})",
                {"images_per_sec": b * 1e3 / median, "median_ms": median, "p90_ms": p90},
                f"median {median:.2f} ms, p90 {p90:.2f} ms",
            )

    out["startup_s"] = startup_seconds()
    print(f"start-up: {out['startup_s']:.1f} s from command to the first training step (resnet-train, ResNet-20)")
    out["rows"] = rows
    write(out, args.json)


def write(out: dict, path: str | None) -> None:
    if path:
        Path(path).write_text(json.dumps(out, indent=2))
        print(f"Wrote {path}")


def startup_seconds() -> float:
    """Runs `resnet-train` for a moment and reads its 'first step after' log line."""
    import tempfile

    cli = Path(sys.executable).with_name("resnet-train")
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            [str(cli), "epochs=1", "data.limit_train=256", f"hydra.run.dir={tmp}"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode:
            print(f"start-up run failed: {done.stderr.strip()[-300:]}")
            return float("nan")
        found = re.search(r"first step after ([\d.]+) s", (Path(tmp) / "train.log").read_text())
    return float(found.group(1)) if found else float("nan")


if __name__ == "__main__":
    main()
