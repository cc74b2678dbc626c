"""The `data` group's schema: what every source has (DataConfig) and each source's own keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from omegaconf import MISSING

from resnet_train.config.hints import with_hint


# --- data ------------------------------------------------------------------------------------
@dataclass
class DataConfig:
    """What every source has: the subset and split of its examples."""

    source: str = MISSING
    lr_batch_reference: Optional[int] = None
    classes: Optional[List[int]] = None
    limit_train: Optional[int] = None
    limit_test: Optional[int] = None
    val_split: Any = with_hint("a fraction of train (0.1) or a count of images (5000)", None)
    # An integer; "legacy" only for runs made before split_seed existed (run_dir.RUN_OWNED).
    split_seed: Any = 0
    # How val_split draws: each class its share, or uniformly (runs made before stratification: run_dir.RUN_OWNED).
    split_method: str = with_hint("stratified (each class its share of val_split) | uniform", "stratified")
    # Several input pipelines (workers): each reads all and keeps its slice of every global batch
    # (batches: the batches of one process), or reads only its own 1/N of the files (files).
    shard: str = with_hint("batches | files", "batches")
    # Imbalanced classes: weights in the loss (auto: inverse frequency) and/or balanced sampling.
    class_weights: Any = with_hint("null, auto or a list of one weight per class", None)
    sampling: str = with_hint("natural | balanced (each class equally often, seeded per epoch)", "natural")
    shuffle_buffer: Optional[int] = None  # null: the whole training set in memory, 10,000 streamed images
    # Repeated augmentation (Hoffer et al. 2020): each image N times in a row under augmentations of
    # its own, the epoch's length kept (1/N of the images an epoch).
    repeated_aug: int = with_hint("1 (off) or N copies of each image in a batch", 1)
    # multilabel: several labels per image (a folder's labels file, TFRecords' several label
    # values), a sigmoid per class and binary cross-entropy; mAP and per-class F1 (report/label_metrics.py).
    task: str = with_hint("multiclass (one label per image) | multilabel (several labels per image)", "multiclass")
    # multilabel: a label is predicted when its probability is at least this (F1, exact-match accuracy, predict).
    threshold: float = 0.5


@dataclass
class EmbeddedDataConfig(DataConfig):
    source: str = "embedded"
    image_size: int = 32
    test_fraction: float = 0.2


@dataclass
class TfdsDataConfig(DataConfig):
    source: str = "tfds"
    name: Optional[str] = None  # the tensorflow-datasets name (cifar10, imagenet2012, ...); required
    data_dir: Optional[str] = None
    manual_dir: Optional[str] = None
    download: bool = with_hint(
        "false never touches the network, true lets tensorflow-datasets download a dataset that is not prepared", True
    )
    cache: bool = True
    image_size: int = 224  # streamed (cache=false) images are decoded and cropped to this
    train_split: str = "train"
    test_split: str = "test"
    mean: Optional[List[float]] = None
    std: Optional[List[float]] = None


@dataclass
class FolderDataConfig(DataConfig):
    source: str = "folder"
    path: Optional[str] = None
    image_size: int = 32
    val_fraction: float = 0.2
    # auto: decoded into memory when that fits cache_budget_mb, else streamed from the files
    cache: Any = with_hint("auto | true (decode into memory) | false (stream from the files)", "auto")
    cache_budget_mb: int = 2048
    # data.task=multilabel: the image list with each image's labels, a CSV (file,labels: labels
    # separated by spaces) or JSON ({"file": [labels]}) file, relative to each split's folder
    # (null: its labels.csv or labels.json). data/multilabel_folder.py.
    labels_file: Optional[str] = None


@dataclass
class TfrecordDataConfig(DataConfig):
    """TFRecords of tf.train.Example (data/tfrecord_source.py)."""

    source: str = "tfrecord"
    train_files: Any = with_hint("a glob of TFRecord files (or a list of globs), e.g. '/data/train-*'", None)
    eval_files: Any = with_hint("a glob of TFRecord files (or a list of globs), e.g. '/data/validation-*'", None)
    name: Optional[str] = None  # shown in logs and dataset.json (default: the train files' folder)
    image_key: str = "image/encoded"
    label_key: str = "image/class/label"
    text_key: Optional[str] = "image/class/text"  # class names from the records, when present
    label_offset: int = with_hint("the label of the first class (TF's ImageNet scripts: 1)", 0)
    num_classes: Optional[int] = None  # null: from labels_file / class_names, else the largest label + 1
    class_names: Optional[List[str]] = None
    labels_file: Optional[str] = None  # one class name per line, in label order
    image_size: int = 224
    mean: Optional[List[float]] = None
    std: Optional[List[float]] = None


@dataclass
class SyntheticDataConfig(DataConfig):
    source: str = "synthetic"
    image_shape: List[int] = field(default_factory=lambda: [32, 32, 3])
    num_classes: int = 10
    train_size: int = 1024
    test_size: int = 256
