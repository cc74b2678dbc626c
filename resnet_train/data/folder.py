"""The user's own images: one sub-folder per class.

Layouts:
    DIR/train/<class>/*.jpg  and  DIR/val/<class>/... (or DIR/test/<class>/...)
    DIR/<class>/*.jpg        split into train / held-out by `val_fraction` (stratified, fixed seed)

Every image is decoded once (in threads) by `preprocess.preprocess`, the function that
resnet-predict and the exported SavedModel's `serving_encoded` also use, to image_size x
image_size RGB: below 128 px the whole image resized, from 128 px on the ImageNet geometry (short
side to image_size / 0.875, centre crop), for the training images as for the held-out ones, so
training, evaluation and prediction see one geometry (the inception crop of `augment=standard`
then works inside that centre crop). An unreadable file is named in a warning and skipped; the
count is reported.

data.cache decides where the decoded images live: in memory as uint8 (true; auto when they fit
data.cache_budget_mb), or nowhere: the pipeline reads and decodes each file again when it needs
it (false; auto over the budget), with the same function, so both give the same batches. Why not
the ImageNet stream's fused decode-and-crop: its inception crop sees the whole picture, which
would make a run's result depend on which mode `auto` picked.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from resnet_train.data import faults
from resnet_train.data.files import channel_stats_of_sums, decode_files
from resnet_train.data.info import DatasetInfo, Splits, displayable
from resnet_train.errors import ConfigError, DataError

log = logging.getLogger(__name__)

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
HELD_OUT_NAMES = ("val", "validation", "test")


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def images_in(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())


def list_files(root: Path, class_names=None):
    """(paths, labels, class_names) of one tree; classes are the sorted sub-folder names, as
    displayable text (info.displayable: a folder name that is not UTF-8 shows its bytes escaped)."""
    dirs = _class_dirs(root)
    names = class_names or [displayable(d.name) for d in dirs if images_in(d)]
    if len(set(names)) < len(names):
        raise DataError(f"{root}: two class folders have the same displayed name ({', '.join(names)}): rename one")
    index = {name: i for i, name in enumerate(names)}
    paths, labels = [], []
    for d in dirs:
        files = images_in(d)
        if not files:
            continue
        name = displayable(d.name)
        if name not in index:
            raise DataError(
                f"class folder {displayable(str(d))} is not among the training classes ({', '.join(names)}): "
                f"give the held-out tree the same class folders as the training tree"
            )
        paths += files
        labels += [index[name]] * len(files)
    return paths, np.asarray(labels, dtype=np.int64), names


def _stratified_split(labels, fraction: float, seed: int):
    """Indices (train, held_out): `fraction` of each class held out, at least one per class."""
    rng = np.random.default_rng(seed)
    train, held = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = max(1, int(round(fraction * len(idx)))) if len(idx) > 1 else 0
        held += list(idx[:k])
        train += list(idx[k:])
    return np.sort(train), np.sort(held)


def cache_mode(cache, files: int, image_size: int, budget_mb: int) -> tuple[bool, str]:
    """(in_memory, why) for data.cache = auto | true | false: auto keeps the decoded images in
    memory when they fit data.cache_budget_mb (either way the model sees the same pixels)."""
    decoded_mb = files * image_size * image_size * 3 / 2**20
    size = f"{files} images decode to {decoded_mb:,.1f} MB at {image_size}x{image_size}"
    if cache == "auto":
        fits = decoded_mb <= budget_mb
        return fits, f"{size}, {'within' if fits else 'over'} data.cache_budget_mb={budget_mb} (data.cache=auto)"
    return bool(cache), f"{size}; data.cache={str(cache).lower()}"


def load(
    path, image_size: int = 32, val_fraction: float = 0.2, split_seed: int = 0, cache="auto", cache_budget_mb=2048
) -> Splits:
    """In memory: the decoded uint8 images. Streamed (`cache` false, or auto over the budget): the
    files' paths, which the pipeline reads and decodes with the same function (DatasetInfo.files,
    pipeline.file_loader), so a run's figures do not depend on which was chosen. Either way every
    file is decoded once here: unreadable ones are named and skipped before training starts (never
    a failure mid-epoch), and the channel statistics are measured."""
    check_cache(cache, cache_budget_mb)
    root, train_root, held_root = layout(path, image_size, val_fraction)
    paths, labels, names = list_files(train_root)
    if not paths:
        raise DataError(
            f"no images in {train_root}: expected one sub-folder per class holding {', '.join(EXTENSIONS)} files"
        )
    if len(names) < 2:
        raise DataError(f"{train_root} has one class ({names[0]}): a classifier needs at least two class folders")
    held = list_files(held_root, names) if held_root is not None else None
    in_memory, why = cache_mode(cache, len(paths) + (len(held[0]) if held else 0), image_size, cache_budget_mb)

    train = read_part(paths, labels, image_size, str(train_root), in_memory)
    if held is not None:
        test = read_part(held[0], held[1], image_size, str(held_root), in_memory)
    else:
        train_idx, held_idx = _stratified_split(train.y, val_fraction, split_seed)
        train, test = train.subset(train_idx, train.bad), train.subset(held_idx)
    return make_splits(root, names, train, test, image_size, in_memory, why)


def make_splits(root, names, train: Part, test: Part, image_size: int, in_memory: bool, why: str, task="multiclass"):
    """The Splits of a folder's two parts (also data/multilabel_folder.py's): channel statistics
    of the training images, the log line, DatasetInfo, and for streamed files Splits.locate."""
    if len(train.y) == 0 or len(test.y) == 0:
        raise DataError(f"{root}: after skipping unreadable files there is no training or held-out image left")
    mean, std = channel_stats_of_sums(train.sums, train.squares, image_size * image_size)
    skipped = train.bad + test.bad
    log.info(
        "Folder %s: %d classes, %d train / %d held-out images at %dx%d%s; %s: %s",
        displayable(str(root)),
        len(names),
        len(train.y),
        len(test.y),
        image_size,
        image_size,
        f", {skipped} unreadable skipped" if skipped else "",
        "in memory" if in_memory else "streamed from the files",
        why,
    )
    info = DatasetInfo(
        name=displayable(root.name) or "folder",
        num_classes=len(names),
        image_shape=(image_size, image_size, 3),
        train_size=len(train.y),
        test_size=len(test.y),
        class_names=names,
        mean=mean,
        std=std,
        skipped_files=skipped,
        files=not in_memory,
        task=task,
    )
    splits = Splits(train.dataset(), test.dataset(), info)
    if not in_memory:  # the files are read again while training: name the one that fails then
        streamed = [*train.x, *test.x]
        splits.locate = lambda: faults.first_unreadable_file(streamed, info.image_shape)
    return splits


def check_cache(cache, budget_mb) -> None:
    if cache not in (True, False, "auto"):
        raise ConfigError(
            f"data.cache must be auto, true (decode into memory) or false (stream from the files) (got {cache!r})"
        )
    if not isinstance(budget_mb, int) or isinstance(budget_mb, bool) or budget_mb < 0:
        raise ConfigError(f"data.cache_budget_mb must be a non-negative integer, in MB (got {budget_mb!r})")


def layout(
    path, image_size, val_fraction, holding="one sub-folder of images per class"
) -> tuple[Path, Path, Path | None]:
    """(root, the training tree, the held-out tree or None) of data.path, checked."""
    if not path:
        raise DataError(f"data=folder needs data.path=DIR ({holding})")
    root = Path(str(path)).expanduser()
    if not root.is_dir():
        raise DataError(f"data.path={root} does not exist or is not a folder")
    if not isinstance(image_size, int) or image_size < 8:
        raise DataError(f"data.image_size must be an integer >= 8 (got {image_size!r})")
    held_root = next((root / n for n in HELD_OUT_NAMES if (root / n).is_dir()), None)
    train_root = root / "train" if (root / "train").is_dir() else root
    if held_root is not None and train_root == root:
        raise DataError(f"{root} has a {held_root.name}/ folder but no train/ folder beside it")
    if held_root is None and not 0 < val_fraction < 1:
        raise DataError(f"data.val_fraction must be between 0 and 1 (got {val_fraction})")
    return root, train_root, held_root


@dataclass
class Part:
    """One split's readable examples: images (in memory) or paths (streamed), labels, pixel sums."""

    x: np.ndarray
    y: np.ndarray
    sums: np.ndarray
    squares: np.ndarray
    bad: int = 0

    def subset(self, index, bad: int = 0) -> Part:
        return Part(self.x[index], self.y[index], self.sums[index], self.squares[index], bad)

    def dataset(self):
        return tf.data.Dataset.from_tensor_slices((self.x, self.y))


def read_part(paths, labels, size: int, what: str, keep: bool) -> Part:
    decoded = decode_files(paths, (size, size, 3), what, keep=keep)
    ok = decoded.ok
    # Paths as bytes (TF's strings are bytes): a file name that is not UTF-8 reads like any other.
    x = decoded.images if keep else np.array([os.fsencode(p) for p in paths], dtype=object)[ok]
    return Part(x, labels[ok], decoded.sums[ok], decoded.squares[ok], int((~ok).sum()))
