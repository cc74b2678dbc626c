"""Shared fixtures: tiny real-format archives, config composition, running the CLI."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).with_name("resnet-train")


def write_fake_cifar10(path: Path, per_batch: int = 4, test: int = 4, seed: int = 0):
    """cifar-10-binary.tar.gz in the real layout: 1 label byte + 3072 bytes (R, G, B planes)."""
    rng = np.random.default_rng(seed)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    written = {}

    def batch(n):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8)
        planes = images.transpose(0, 3, 1, 2).reshape(n, 3072)
        return labels, images, np.concatenate([labels[:, None], planes], axis=1).tobytes()

    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        def add(name, data: bytes):
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for i in range(1, 6):
            labels, images, raw = batch(per_batch)
            written[f"data_batch_{i}"] = (labels, images)
            add(f"data_batch_{i}.bin", raw)
        labels, images, raw = batch(test)
        written["test_batch"] = (labels, images)
        add("test_batch.bin", raw)
        add("batches.meta.txt", ("\n".join(names) + "\n\n").encode())
    return written, names


@pytest.fixture
def fake_cifar10(tmp_path, monkeypatch):
    """A fake CIFAR-10 archive in manual_dir, registered as the expected download.

    tfds verifies the archive's checksum against the real file's; the test registers the fake
    archive's own checksum instead, so the real builder code runs unchanged on it.
    """
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.download import checksums

    manual = tmp_path / "manual"
    archive = manual / "cifar-10-binary.tar.gz"
    written, names = write_fake_cifar10(archive)
    url = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
    info = checksums.compute_url_info(archive)
    info = checksums.UrlInfo(size=info.size, checksum=info.checksum, filename=archive.name)
    monkeypatch.setattr(tfds.image_classification.Cifar10, "url_infos", {url: info})
    return {"data_dir": tmp_path / "tfds", "manual_dir": manual, "written": written, "names": names}


def compose(*overrides):
    from resnet_train.train import load_config

    return load_config(overrides)


def run_cli(*args, timeout=300, cwd=None):
    """Runs the installed `resnet-train` with overrides; returns the CompletedProcess."""
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd or ROOT)


TINY = ("depth=8", "batch_size=32", "data.limit_train=128", "data.limit_test=64")
