"""Throughput measurements: the input pipeline alone and our trainer alone, each on in-memory data,
and the `resnet-train` command itself, end to end.

Used by scripts/bench.py (beside it); the trainer-alone timing is the library's
(resnet_train/runtime/probe.py, which runtime=auto's tuning also uses). Figures are medians over
several timed windows after a warm-up, so tracing and autotuning are not counted; the spread
(min..max) is reported beside them.
"""

from __future__ import annotations

import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from resnet_train.runtime.probe import timed_windows, train_throughput  # noqa: F401 -- bench.py's rows


def smooth_images(n: int, shape, seed: int = 0) -> np.ndarray:
    """Photo-like uint8 images (smooth gradients and blobs): random noise would make JPEGs
    unrealistically large and slow to decode."""
    rng = np.random.default_rng(seed)
    h, w, c = shape
    ys, xs = np.mgrid[0:h, 0:w] / max(h, w)
    out = np.empty((n, h, w, c), np.uint8)
    for i in range(n):
        fx, fy, phase = rng.uniform(1, 6, 3)
        base = 0.5 + 0.5 * np.sin(fx * xs * 6.28 + phase)[..., None] * np.cos(fy * ys * 6.28)[..., None]
        out[i] = np.clip(255 * base * rng.uniform(0.3, 1.0, c), 0, 255)
    return out


def jpeg_bytes(images) -> list[bytes]:
    from PIL import Image

    encoded = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=90)
        encoded.append(buffer.getvalue())
    return encoded


def iterator_throughput(iterator, batch_size: int, windows: int = 5, steps_per_window: int = 20) -> dict:
    return timed_windows(
        lambda: next(iterator), batch_size, warmup=5, windows=windows, steps_per_window=steps_per_window
    )


def pipeline_throughput(
    dataset: tf.data.Dataset,
    size: int,
    batch_size: int,
    augment=None,
    batch_augment=None,
    shuffle_buffer=None,
    windows: int = 5,
    steps_per_window: int = 20,
    load=None,
) -> dict:
    """images/s of the training input pipeline alone (no model) as the command builds it: one
    pipeline over many epochs (pipeline.training_stream)."""
    from resnet_train.data import pipeline

    batches = pipeline.training_stream(
        dataset, size, batch_size, 0, 0, 10**6, augment, batch_augment, shuffle_buffer=shuffle_buffer, load=load
    )
    return iterator_throughput(iter(batches), batch_size, windows, steps_per_window)


def file_pipelines(photos: list[bytes], windows: int):
    """(label, images/s) of the training pipeline at 224 px (augment=standard: inception crop +
    flip) for the same JPEGs read from files: a class folder streamed from disk (data.cache=false),
    and TFRecord shards (data=tfrecord)."""
    import tempfile
    from pathlib import Path

    from resnet_train.data import folder, pipeline
    from resnet_train.data.augment import make_augment

    with tempfile.TemporaryDirectory() as tmp:
        for i, photo in enumerate(photos):
            (Path(tmp) / f"class{i % 2}").mkdir(exist_ok=True)
            (Path(tmp) / f"class{i % 2}" / f"{i}.jpg").write_bytes(photo)
        splits = folder.load(tmp, image_size=224, val_fraction=0.1, cache=False)
        info = splits.info
        augment = make_augment({"crop": "inception", "horizontal_flip": True}, info.image_shape)
        loader = pipeline.file_loader(info)
        yield (
            "pipeline folder streamed, JPEG 500x375 -> 224",
            pipeline_throughput(
                splits.train, info.train_size, 64, augment, windows=windows, steps_per_window=3, load=loader
            ),
        )
        records = Path(tmp) / "records"
        records.mkdir()
        yield "pipeline TFRecords, JPEG 500x375 -> 224", _tfrecord_pipeline(photos, records, windows)


def _tfrecord_pipeline(photos: list[bytes], tmp, windows: int) -> dict:
    """The same JPEGs in 4 TFRecord shards (the ImageNet scripts' features), read as data=tfrecord
    reads them: interleaved, decoded fused with the inception crop."""
    from resnet_train import data
    from resnet_train.config.store import data_config
    from resnet_train.data.augment import make_augment

    writers = [tf.io.TFRecordWriter(str(tmp / f"train-{i:05d}-of-00004")) for i in range(4)]
    for i, photo in enumerate(photos):
        feature = {
            "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[photo])),
            "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 2])),
        }
        writers[i % 4].write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    for writer in writers:
        writer.close()
    files = str(tmp / "train-*")
    cfg = data_config(
        {"source": "tfrecord", "train_files": files, "eval_files": files, "mean": [127.5] * 3, "std": [64.0] * 3}
    )
    splits = data.load(cfg)
    augment = make_augment({"crop": "inception", "horizontal_flip": True}, (224, 224, 3), encoded=True)
    stream = splits.train_for_epoch(0, 0).repeat()
    return pipeline_throughput(
        stream, splits.info.train_size, 64, augment, shuffle_buffer=10_000, windows=windows, steps_per_window=3
    )


def keras_randaugment_batches(dataset, batch_size: int, num_ops: int = 2, magnitude: float = 9):
    """The same pipeline with keras.layers.RandAugment applied per batch, for comparison."""
    import keras

    from resnet_train.data import pipeline

    layer = keras.layers.RandAugment(value_range=(0, 255), num_ops=num_ops, factor=magnitude / 10)

    def batches():
        while True:
            ds = pipeline.train_batches(dataset, 10_000, batch_size, 0, 0)
            yield from ds.map(lambda x, y: (layer(x), y), num_parallel_calls=tf.data.AUTOTUNE)

    return batches()


def keras_fit_throughput(
    depth: int,
    image_shape,
    batch_size: int,
    num_classes: int = 10,
    precision: str = "float32",
    jit_compile=False,
    steps_per_execution: int = 1,
    windows: int = 5,
    steps_per_window: int = 10,
    fused_bn: bool = False,
) -> dict:
    """images/s of keras `model.compile` + `model.fit` on the same architecture, optimizer and
    data, built from Keras' own layers (keras.layers.BatchNormalization) as a Keras user would;
    `fused_bn=True` gives it our fused batch norm instead."""
    import keras

    from resnet_train import models

    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy(precision)
    model = models.build(depth, num_classes, image_shape, fused_bn=fused_bn)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=1e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
    )
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch_size, *image_shape)).astype(np.uint8)
    labels = rng.integers(0, num_classes, batch_size).astype(np.int64)
    data = tf.data.Dataset.from_tensors((images, labels)).repeat().prefetch(2)

    stamps = []

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            stamps.append((batch, time.perf_counter()))

    warmup = 3 * steps_per_execution
    total = warmup + windows * steps_per_window
    total += (-total) % steps_per_execution
    model.fit(data, epochs=1, steps_per_epoch=total, verbose=0, callbacks=[Clock()])
    keras.mixed_precision.set_global_policy("float32")
    # Stamps come once per execution (every steps_per_execution steps): rate between stamps.
    points = [(b + 1, t) for b, t in stamps if b + 1 >= warmup]
    rates = []
    per = max(1, len(points) // windows)
    for i in range(0, len(points) - per, per):
        (s0, t0), (s1, t1) = points[i], points[i + per]
        rates.append((s1 - s0) * batch_size / (t1 - t0))
    return {"images_per_sec": statistics.median(rates), "min": min(rates), "max": max(rates)}


def eval_throughput(depth: int, image_shape, batch_size: int, num_classes: int = 10, batches: int = 20) -> dict:
    """images/s of our evaluation (forward only, metrics summed on the device)."""
    import keras

    from resnet_train import models
    from resnet_train.training.trainer import Trainer

    keras.backend.clear_session()
    strategy = tf.distribute.get_strategy()
    model = models.build(depth, num_classes, image_shape)
    trainer = Trainer(model, keras.optimizers.SGD(0.1), strategy, batch_size, num_classes=num_classes)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch_size, *image_shape)).astype(np.uint8)
    labels = rng.integers(0, num_classes, batch_size).astype(np.int64)
    data = tf.data.Dataset.from_tensors((images, labels, np.ones(batch_size, np.float32))).repeat(batches)
    dist = strategy.experimental_distribute_dataset(data)
    return timed_windows(lambda: trainer.evaluate(dist), batch_size * batches, warmup=1, windows=3, steps_per_window=1)


EXPORTS = (("saved_model", "none"), ("tflite", "none"), ("tflite", "int8_full"), ("onnx", "none"), ("onnx", "int8"))


def export_latency(depth: int, image_shape, num_classes: int = 10, runs: int = 20, exports=EXPORTS) -> dict:
    """{(format, quantize): CPU latency in ms, median and p90 at batch 1 and 32}: a ResNet exported
    by resnet-export's own code (export.export_artifact) and timed as its format=all table times
    it (compare.latency), each in its runtime; random weights, int8 calibrated on 64 smooth images."""
    from types import SimpleNamespace

    from resnet_train import models
    from resnet_train.tools import compare, export

    image_shape = tuple(image_shape)
    model = models.build(depth, num_classes, image_shape)
    info = SimpleNamespace(image_shape=image_shape, class_names=[str(i) for i in range(num_classes)])
    images = smooth_images(64, image_shape)
    images[0, 0, 0], images[0, 0, 1] = 0, 255  # the calibrated input range: raw pixels
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        # What export_artifact reads of an export job (export_job.Job): a multiclass model (no
        # threshold), a scratch folder for the SavedModel the TFLite files share.
        run = SimpleNamespace(model=model, info=info)
        job = SimpleNamespace(run=run, out_dir=Path(tmp), representative=images, threshold=None, scratch=Path(tmp))
        for fmt, quantize in exports:
            predict = export.load_predictor(export.export_artifact(job, fmt, quantize), fmt)
            results[fmt, quantize] = compare.latency(predict, images, runs)
            del predict
    return results


def cpu_description() -> dict:
    """The CPU a measurement was made on: model name and the flags that decide TF's kernels."""
    from resnet_train.runtime.onednn import cpu_flags, cpu_identity

    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8")
    return {**cpu_identity(), "cores": os.cpu_count(), "flags": [f for f in wanted if f in cpu_flags()]}


EPOCH_LINE = re.compile(r"epoch (\d+)/\d+ .* ([\d.]+) img/s")
OVERHEAD_LINE = re.compile(r"epoch (\d+)/\d+  ([\d.]+) s outside")
FIRST_LINE = re.compile(r"first step after ([\d.]+) s .* took ([\d.]+) s")


def cli_throughput(
    depth: int,
    batch_size: int,
    steps_per_epoch: int,
    epochs: int = 3,
    *overrides: str,
    timeout: int = 1800,
    run_dir: Path | None = None,
) -> dict:
    """images/s of `resnet-train` as a user runs it: a fresh process, data=synthetic through the real
    input pipeline (shuffle, augment=standard, batching, distribute_datasets_from_function), the
    real loop with its per-epoch evaluation, checkpoint and curves. The rate is the median of the
    log's per-epoch img/s after the first epoch (which traces the step: reported apart, with the
    epochs' time outside their steps). `run_dir`: where the run is kept (default: a temporary folder)."""
    cli = Path(sys.executable).with_name("resnet-train")
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(run_dir) if run_dir else Path(tmp) / "run"
        command = [
            str(cli),
            "data=synthetic",
            f"depth={depth}",
            f"batch_size={batch_size}",
            f"epochs={epochs}",
            f"data.train_size={batch_size * steps_per_epoch}",
            "data.test_size=256",
            *overrides,
            f"hydra.run.dir={run}",
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if done.returncode:
            raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()[-500:]}")
        log = (run / "train.log").read_text()
    rates = {int(e): float(r) for e, r in EPOCH_LINE.findall(log)}
    overhead = {int(e): float(s) for e, s in OVERHEAD_LINE.findall(log)}
    later = [rates[e] for e in sorted(rates) if e > 1] or list(rates.values())
    first = FIRST_LINE.search(log)
    onednn = re.search(r"oneDNN kernels (on|off) \((.*)\)", log)
    return {
        "images_per_sec": statistics.median(later),
        "min": min(later),
        "max": max(later),
        "first_epoch_images_per_sec": rates.get(1),
        "first_step_s": float(first.group(1)) if first else None,
        "first_call_s": float(first.group(2)) if first else None,
        "overhead_s_per_epoch": {e: overhead.get(e, 0.0) for e in sorted(rates)},
        "onednn": onednn.group(1) if onednn else None,
    }


def with_onednn(enabled: bool, name: str, **kwargs) -> dict:
    """One of this module's measurements (or "module.function" of a script beside it) in a fresh
    process with oneDNN on or off (TensorFlow fixes it at import): how scripts/bench.py times a peer
    at the oneDNN setting this process lacks."""
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "1" if enabled else "0", "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, __file__, json.dumps({"name": name, **kwargs})],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if done.returncode:
        raise RuntimeError(f"{name} with oneDNN {'on' if enabled else 'off'} failed: {done.stderr.strip()[-500:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["onednn"] != enabled:  # a figure labelled with the wrong kernels would mislead
        raise RuntimeError(
            f"{name}: asked for oneDNN {'on' if enabled else 'off'}, the child ran it "
            f"{'on' if result['onednn'] else 'off'}"
        )
    return result


if __name__ == "__main__":  # with_onednn's child: python scripts/benchmarks.py '{"name": ..., kwargs}'
    from resnet_train.runtime import onednn

    asked = json.loads(sys.argv[1])
    module, _, name = asked.pop("name").rpartition(".")  # "bench_rounds.keras_settings": a module beside this one
    if module == "bench_rounds":  # (named, not imported by a computed name: tests/test_security.py)
        import bench_rounds

        measure = getattr(bench_rounds, name)
    elif module:
        raise SystemExit(f"benchmarks.py: no measurement {module}.{name}")
    else:
        measure = globals()[name]
    print(json.dumps({**measure(**asked), "onednn": onednn.enabled()}))
