"""The one prepared check for the first machine with a GPU (a few minutes); prints one JSON object.

    python scripts/gpu_check.py > gpu_check.json     # on the GPU machine, after `make setup`
    python scripts/gpu_check.py --smoke              # the same checks, tiny, on any machine (tested)

What it checks, each under its own key (an exception becomes {"error": ...} and the rest goes on):
- devices: the GPUs TensorFlow sees, its CUDA/cuDNN build;
- float16: runtime=one_device with mixed_float16 trains on the GPU with loss scaling, and a step
  whose gradients overflow (an inf in the batch) is skipped with the loss scale halved;
- xla: images/s of `resnet-train` with runtime.xla=false and =true, and the loss both reach;
- mirrored: MirroredStrategy over every GPU equals one device (a conv net without batch norm, TF32
  off) and the command's images/s over every GPU;
- determinism: two runs with op determinism on are bitwise identical;
- resnet50: ResNet-50 at 224x224 images/s of the command against Keras fit on the same GPU and
  precision (the command / Keras fit ratio is the figure docs/performance.md quotes).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import benchmarks  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def devices(_smoke: bool) -> dict:
    info = tf.sysconfig.get_build_info()
    return {
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "tensorflow": tf.__version__,
        "cuda": info.get("cuda_version"),
        "cudnn": info.get("cudnn_version"),
    }


def float16(_smoke: bool) -> dict:
    import keras

    from resnet_train.optim import build_optimizer
    from resnet_train.runtime import devices as runtime
    from resnet_train.training.trainer import Trainer

    rt = runtime.configure(seed=0, strategy="one_device", precision="mixed_float16")
    try:
        with rt.strategy.scope():
            inputs = keras.Input((4,))
            hidden = keras.layers.Dense(8, activation="relu")(inputs)
            model = keras.Model(inputs, keras.layers.Dense(3, dtype="float32")(hidden))
            optimizer = build_optimizer({"name": "sgd", "momentum": 0.9}, 0.1, loss_scaling=True)
            optimizer.build(model.trainable_variables)
        trainer = Trainer(model, optimizer, rt.strategy, 2, num_classes=3)
        trainer.train_steps(iter([(np.ones((2, 4), np.float32), np.array([0, 1]))]), 1)
        before = [v.numpy().copy() for v in model.trainable_variables]
        scale = float(optimizer.dynamic_scale.numpy())
        bad = np.ones((2, 4), np.float32)
        bad[0, 0] = np.inf
        trainer.train_steps(iter([(bad, np.array([0, 1]))]), 1)
        unchanged = all(np.array_equal(a, b.numpy()) for a, b in zip(before, model.trainable_variables))
        return {
            "devices": runtime.strategy_devices(rt.strategy),
            "overflow_step_skipped": unchanged,
            "loss_scale_halved": float(optimizer.dynamic_scale.numpy()) == scale / 2,
        }
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _command(smoke: bool, depth: int, batch: int, *overrides: str) -> dict:
    steps, epochs = (2, 2) if smoke else (20, 3)
    return benchmarks.cli_throughput(depth, batch, steps, epochs, *overrides, "runtime.steps_per_call=1")


def xla(smoke: bool) -> dict:
    depth, batch = (8, 8) if smoke else (56, 128)
    runs = {on: _command(smoke, depth, batch, "runtime=one_device", f"runtime.xla={on}") for on in ("false", "true")}
    return {f"xla_{on}": run for on, run in runs.items()}


def mirrored(smoke: bool) -> dict:
    from helpers import train_small_model

    from resnet_train.runtime import devices as runtime

    tf.config.experimental.enable_tensor_float_32_execution(False)
    try:
        one, _ = train_small_model(runtime.make_strategy("one_device"))
        every, _ = train_small_model(runtime.make_strategy("mirrored"))
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(True)
    depth, batch = (8, 8) if smoke else (56, 128 * max(1, len(tf.config.list_physical_devices("GPU"))))
    return {
        "max_weight_difference": max(float(np.max(np.abs(a - b))) for a, b in zip(one, every)),
        "command": _command(smoke, depth, batch, "runtime=mirrored"),
    }


def determinism(_smoke: bool) -> dict:
    from helpers import train_small_model

    from resnet_train.runtime import devices as runtime

    tf.config.experimental.enable_op_determinism()
    first, _ = train_small_model(runtime.make_strategy("one_device"))
    second, _ = train_small_model(runtime.make_strategy("one_device"))
    return {"bitwise_identical": all(np.array_equal(a, b) for a, b in zip(first, second))}


def resnet50(smoke: bool) -> dict:
    depth, side, batch = (8, 32, 8) if smoke else (50, 224, 128)
    precision = "float32" if smoke else "mixed_float16"
    shape = f"data.image_shape=[{side},{side},3]"
    ours = _command(smoke, depth, batch, "runtime=one_device", f"runtime.precision={precision}", shape)
    windows, steps = (2, 2) if smoke else (5, 10)
    keras_fit = benchmarks.keras_fit_throughput(
        depth, (side, side, 3), batch, precision=precision, windows=windows, steps_per_window=steps
    )
    return {
        "precision": precision,
        "command_images_per_sec": ours["images_per_sec"],
        "keras_fit_images_per_sec": keras_fit["images_per_sec"],
        "ratio": ours["images_per_sec"] / keras_fit["images_per_sec"],
    }


CHECKS = (devices, float16, xla, mirrored, determinism, resnet50)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, any machine: checks the script itself")
    parser.add_argument("--only", nargs="*", choices=[c.__name__ for c in CHECKS], help="these checks alone")
    args = parser.parse_args(argv)
    report = {"smoke": args.smoke, "cpu": benchmarks.cpu_description()}
    for check in (c for c in CHECKS if not args.only or c.__name__ in args.only):
        try:
            report[check.__name__] = check(args.smoke)
        except Exception as e:  # noqa: BLE001  (one failed check must not hide the others' figures)
            report[check.__name__] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]}
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
