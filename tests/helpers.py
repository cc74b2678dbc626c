"""Helpers the tests import (`from helpers import ...`): configs, the CLI run in or out of this
process, fake archives in the real formats, a small model trained through our Trainer. Fixtures
live in conftest.py, which pytest loads first (its guards are in place before these run)."""

from __future__ import annotations

import io
import re
import socket
import sys
import tarfile
import time
from pathlib import Path

import launches
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).with_name("resnet-train")


CIFAR_LAYOUT = {
    # name: (archive, folder in it, train files, test files, label files, label bytes per record, classes)
    "cifar10": (
        "cifar-10-binary.tar.gz",
        "cifar-10-batches-bin",
        [f"data_batch_{i}.bin" for i in range(1, 6)],
        ["test_batch.bin"],
        ["batches.meta.txt"],
        1,
        [10],
    ),
    "cifar100": (
        "cifar-100-binary.tar.gz",
        "cifar-100-binary",
        ["train.bin"],
        ["test.bin"],
        ["coarse_label_names.txt", "fine_label_names.txt"],
        2,
        [20, 100],
    ),
}


def write_fake_cifar(path: Path, name: str = "cifar10", per_file: int = 4, seed: int = 0):
    """A CIFAR binary archive in the real layout: label byte(s) + 3072 bytes (R, G, B planes).

    Returns ({file: (fine labels, images)}, fine class names)."""
    _, folder, train_files, test_files, label_files, n_labels, classes = CIFAR_LAYOUT[name]
    rng = np.random.default_rng(seed)
    written = {}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:

        def add(file, data: bytes):
            info = tarfile.TarInfo(f"{folder}/{file}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for file in train_files + test_files:
            n = per_file * (5 if name == "cifar100" and file in train_files else 1)
            labels = np.stack([rng.integers(0, c, n) for c in classes], axis=1).astype(np.uint8)
            images = rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8)
            planes = images.transpose(0, 3, 1, 2).reshape(n, 3072)
            add(file, np.concatenate([labels, planes], axis=1).tobytes())
            written[file] = (labels[:, -1], images)
        names = {}
        for file, count in zip(label_files, classes):
            names[file] = [f"{file.split('_')[0]}_class_{i}" for i in range(count)]
            add(file, ("\n".join(names[file]) + "\n\n").encode())
    return written, names[label_files[-1]]


def register_fake_archive(monkeypatch, name: str, archive: Path):
    """Makes tfds accept the fake archive: its checksum is registered in place of the real one's,
    so the real builder code runs unchanged on it."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.download import checksums

    builder_cls = type(tfds.builder(name))
    (url,) = builder_cls.url_infos
    info = checksums.compute_url_info(archive)
    info = checksums.UrlInfo(size=info.size, checksum=info.checksum, filename=archive.name)
    monkeypatch.setattr(builder_cls, "url_infos", {url: info})


def compose(*overrides):
    from resnet_train.config import load_config

    return load_config(overrides)


def run_cli(*args, timeout=300, cwd=None, fresh=False):
    """Runs the installed `resnet-train` with overrides (forked from the suite's server, launches.py,
    unless `fresh`: a new interpreter); returns the CompletedProcess."""
    return launches.run(
        [str(CLI), *args], capture_output=True, text=True, timeout=timeout, cwd=cwd or ROOT, fresh=fresh
    )


# What a test does not mean to vary is pinned: runtime=auto / precision=auto would pick another
# strategy on a machine with GPUs and bfloat16 on a CPU with AMX / AVX512-BF16. A test that means
# to vary them sets its own after TINY (Hydra: the last value, and the last group choice, wins).
TINY = (
    "depth=8",
    "batch_size=32",
    "data.limit_train=128",
    "data.limit_test=64",
    "runtime=one_device",
    "runtime.precision=float32",
)


# A ResNet-8 trained 8 epochs on 512 embedded digits (~85% test accuracy): the tools' and the
# compression tests' run.
DIGITS_RUN = ("depth=8", "batch_size=32", "epochs=8", "data.limit_train=512", "data.limit_test=100")


def cli_in_process(monkeypatch, capsys, entry: str, *args):
    """Runs a console script's entry point in this process (TensorFlow already imported, so a
    case takes a fraction of a second); returns (exit code, stdout, stderr)."""
    from resnet_train import cli
    from resnet_train.cli import tools

    functions = {
        "resnet-train": cli.train,
        "resnet-eval": tools.evaluate,
        "resnet-predict": tools.predict,
        "resnet-export": tools.export,
        "resnet-explain": tools.explain,
        "resnet-plot": tools.plot,
        "resnet-show-augment": cli.show_augment,
        "resnet-plot-schedule": cli.plot_schedule,
    }
    function = functions[entry]
    from absl import logging as absl_logging

    # absl's handler holds the stream that was sys.stderr when TF was imported (pytest's capture);
    # Hydra's logging set-up closes every handler, and absl's closes its stream unless it is a
    # standard one: give it the real stderr so the capture survives.
    monkeypatch.setattr(absl_logging.get_absl_handler().python_handler, "stream", sys.__stderr__)
    monkeypatch.setattr(sys, "argv", [entry, *args])
    capsys.readouterr()
    try:
        function()
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:  # Hydra pointed the root logger at this test's captured streams and run dir: undo it
        import logging

        root = logging.getLogger()
        for handler in list(root.handlers):
            root.removeHandler(handler)
            handler.close()
    out, err = capsys.readouterr()
    return code, out, err


# What a process prints when its TensorFlow gRPC server cannot bind the port it was given.
BIND_FAILURE = re.compile(r"failed to add port|could not start grpc server|address already in use", re.I)


def free_ports(n):
    """n ports free on every interface (TF's gRPC server binds 0.0.0.0:port). They cannot stay
    reserved until the processes bind them: the server does not share a port (tried: a socket held
    on it, even with SO_REUSEPORT, makes it fail with "Failed to add port"). Another process may take
    one in the seconds before it is bound: run_on_free_ports sees that and launches again."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def run_on_free_ports(n, commands, logs: Path, timeout=300, attempts=3):
    """Runs to their end the processes `commands(ports)` lists (Popen's keyword arguments, one dict
    each) on `n` free ports: [(exit code, stdout, stderr)] per process. Their output goes to files
    in `logs` (nothing blocks on a full pipe while another process is awaited).

    Should one fail to bind its port (another process took it since free_ports chose it), all are
    stopped (its peers would wait for it until their own timeout) and launched again on new ports."""
    for attempt in range(attempts):
        ports = free_ports(n)
        procs, files = [], []
        try:
            for index, kwargs in enumerate(commands(ports)):
                out, err = (open(logs / f"worker{index}.{name}.{attempt}", "w+") for name in ("out", "err"))
                files.append((out, err))
                procs.append(launches.popen(**kwargs, stdout=out, stderr=err, text=True))
            deadline = time.monotonic() + timeout
            while any(p.poll() is None for p in procs) and not _bind_failed(procs, files):
                assert time.monotonic() < deadline, "the processes did not end"
                time.sleep(0.05)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait()
        outputs = [(p.returncode, _read(out), _read(err)) for p, (out, err) in zip(procs, files)]
        for out, err in files:
            out.close()
            err.close()
        if not any(code and BIND_FAILURE.search(err) for code, _, err in outputs):
            return outputs
    raise AssertionError(f"the processes could not bind their ports in {attempts} attempts: {outputs}")


def _bind_failed(procs, files) -> bool:
    return any(p.returncode not in (None, 0) and BIND_FAILURE.search(_read(err)) for p, (_, err) in zip(procs, files))


def _read(file) -> str:
    file.flush()
    file.seek(0)
    return file.read()


def file_digests(root: Path) -> dict:
    """{relative path: sha256} of every file under `root`: 'no file of the run changed'."""
    import hashlib

    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(root).rglob("*"))
        if p.is_file()
    }


def train_small_model(strategy, steps=4, global_batch=16, optimizer=None, seed=0, **trainer_args):
    """A conv model without batch norm (so that replicas compute exactly the one-device
    gradient), trained `steps` steps through our pipeline and Trainer on synthetic data.
    Returns (its trainable weights, the train metrics). `optimizer`: a function making one
    (default SGD lr 0.5, momentum 0.9); `trainer_args` go to the Trainer (with accumulate_steps,
    `global_batch` is the micro-batch: each step takes that many of them)."""
    import keras

    from resnet_train.data import pipeline, synthetic
    from resnet_train.training.trainer import Trainer

    keras.utils.set_random_seed(seed)
    with strategy.scope():
        inputs = keras.Input((8, 8, 3))
        x = keras.layers.Rescaling(1 / 255.0)(inputs)
        x = keras.layers.Conv2D(8, 3, activation="relu")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        model = keras.Model(inputs, keras.layers.Dense(4)(x))
        opt = optimizer() if optimizer else keras.optimizers.SGD(0.5, momentum=0.9)
        opt.build(model.trainable_variables)
    trainer = Trainer(model, opt, strategy, global_batch, num_classes=4, **trainer_args)
    data = synthetic.load(image_shape=(8, 8, 3), num_classes=4, train_size=64, test_size=8, seed=seed)

    accumulate = trainer_args.get("accumulate_steps", 1)

    def dataset_fn(ctx):
        return pipeline.train_batches(
            data.train,
            64,
            global_batch * accumulate,
            0,
            0,
            pipelines=ctx.num_input_pipelines,
            pipeline_id=ctx.input_pipeline_id,
            replica_batch=ctx.get_per_replica_batch_size(global_batch),
        )

    if steps:
        trainer.train_steps(iter(strategy.distribute_datasets_from_function(dataset_fn)), steps)
    return [v.numpy() for v in model.trainable_variables], trainer.train_metrics()


# --- TFRecords in the layout TF's ImageNet scripts write (data=tfrecord) ---------------------
COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200)]
NAMES = ["red", "green", "blue"]


def write_records(path, count, offset=1, shards=2, seed=0, size=(40, 30), with_text=True):
    """`count` JPEG examples of three colour classes, labels numbered from `offset`, in `shards`
    files named path-0000i-of-0000n."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    writers = [tf.io.TFRecordWriter(f"{path}-{i:05d}-of-{shards:05d}") for i in range(shards)]
    for i in range(count):
        label = i % 3
        pixels = np.clip(np.array(COLOURS[label]) + rng.integers(-20, 20, (size[1], size[0], 3)), 0, 255)
        feature = {
            "image/encoded": tf.train.Feature(
                bytes_list=tf.train.BytesList(value=[tf.io.encode_jpeg(pixels.astype(np.uint8)).numpy()])
            ),
            "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label + offset])),
            "image/format": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"JPEG"])),
        }
        if with_text:
            feature["image/class/text"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[NAMES[label].encode()]))
        example = tf.train.Example(features=tf.train.Features(feature=feature))
        writers[i % shards].write(example.SerializeToString())
    for writer in writers:
        writer.close()


class StepStop:
    """In-process runs asked to stop as a SIGTERM would ask, without a signal: once the training
    calls of this test have done `at` steps, the run's stop is requested and the next call stops
    there. `steps` counts the steps trained (reset it to count a resumed run's); `at = None`: no
    more stops."""

    def __init__(self, monkeypatch, at: int):
        from resnet_train.training.interrupts import StopRequests
        from resnet_train.training.trainer import Trainer

        self.at, self.steps, requests = at, 0, []
        started, train_steps = StopRequests.training_started, Trainer.train_steps
        monkeypatch.setattr(StopRequests, "training_started", lambda stop: (requests.append(stop), started(stop)))

        def counted(trainer, *args, **kwargs):
            result = train_steps(trainer, *args, **kwargs)
            self.steps += result[0]
            if self.steps == self.at and requests:
                requests[-1].request("a test's stop")
            return result

        monkeypatch.setattr(Trainer, "train_steps", counted)
