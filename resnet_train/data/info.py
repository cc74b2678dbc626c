"""What every data source hands the rest of the program."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import tensorflow as tf

from resnet_train.errors import DataError, first_line


@dataclass
class DatasetInfo:
    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    train_size: int
    test_size: int
    class_names: list[str] = field(default_factory=list)
    # Per-channel statistics of the training images (0..255 scale), for the model's normalisation.
    mean: tuple[float, ...] = (127.5, 127.5, 127.5)
    std: tuple[float, ...] = (64.0, 64.0, 64.0)
    skipped_files: int = 0  # unreadable files left out (folder source)
    val_size: int = 0  # examples carved from the training split for validation (data.val_split)
    encoded: bool = False  # images arrive as encoded bytes (streamed); the pipeline decodes them
    # Images arrive as file paths (a folder streamed from disk); pipeline.file_loader reads them
    # into what the in-memory mode would hold.
    files: bool = False
    # Training examples per class where the source knows them without reading the data again
    # (TFRecords' label pass); data.class_counts(splits) counts the others.
    class_counts: list[int] | None = None
    # multiclass: int64 labels; multilabel: float32 multi-hot vectors of num_classes (data.task).
    task: str = "multiclass"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Splits:
    """uint8 images (H, W, C) and int64 labels, one element per example (data.task=multilabel:
    float32 multi-hot label vectors of num_classes)."""

    train: tf.data.Dataset
    test: tf.data.Dataset
    info: DatasetInfo
    val: tf.data.Dataset | None = None  # carved from train when data.val_split is set
    # Streamed data: train_for_epoch(seed, epoch) is the training stream with its files in an order
    # of that (seed, epoch), so that every epoch reads the files in another order, and a resumed
    # epoch in the same one. None: `train` is read in the same order every epoch (in-memory data is
    # shuffled whole by the pipeline).
    # It takes a shard (count, index): that input pipeline's files only (data.shard=files).
    train_for_epoch: Callable[..., tf.data.Dataset] | None = None
    # Sources read from files while training (a streamed folder, TFRecords): locate() names the first
    # file (and record) that no longer reads or decodes, as (path, record or None, why), else None:
    # after a failure mid-run (data/faults.py).
    locate: Callable[[], tuple[str, int | None, str] | None] | None = None

    def train_shard(self, seed: int, epoch: int, count: int, index: int) -> tf.data.Dataset:
        """Input pipeline `index` of `count`'s own part of the training data (data.shard=files):
        streamed sources give it 1/count of their files; in-memory data and a folder's list of
        files, every count-th example."""
        if self.train_for_epoch:
            return self.train_for_epoch(seed, epoch, (count, index))
        return self.train.shard(count, index)


def channel_stats(images) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of a uint8 NHWC numpy array, on the 0..255 scale."""
    flat = images.reshape(-1, images.shape[-1]).astype("float64")
    return tuple(float(m) for m in flat.mean(0)), tuple(float(s) for s in flat.std(0))


def displayable(name: str) -> str:
    """A file or folder name as text every writer takes (plots, JSON, logs, the console): a name
    that is not UTF-8 on disk (Python holds its bytes as surrogates, os.fsdecode) shows them as
    backslash escapes, `d\\xf6g` for the bytes d, 0xf6, g. UTF-8 names are unchanged."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def read_info(path) -> DatasetInfo:
    """A run's dataset.json: its classes, image shape, sizes and input statistics (what the tools
    build the model with). Damage is one DataError naming the file, not a traceback."""
    import json

    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        raw["image_shape"] = tuple(raw["image_shape"])
        raw["mean"], raw["std"] = tuple(raw["mean"]), tuple(raw["std"])
        raw["class_names"] = [displayable(str(n)) for n in raw.get("class_names", [])]
        info = DatasetInfo(**{k: v for k, v in raw.items() if k in DatasetInfo.__dataclass_fields__})
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # JSONDecodeError is a ValueError
        raise DataError(
            f"{path} is damaged ({type(e).__name__}: {first_line(e, 80)}): it holds the run's classes and input "
            f"statistics, which the tools need; put it back from a copy of the run (rerunning an unfinished "
            f"run's command writes it again from its data)"
        ) from None
    return info
