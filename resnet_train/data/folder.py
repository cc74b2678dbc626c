"""The user's own images: one sub-folder per class.

Layouts:
    DIR/train/<class>/*.jpg  and  DIR/val/<class>/... (or DIR/test/<class>/...)
    DIR/<class>/*.jpg        split into train / held-out by `val_fraction` (stratified, fixed seed)

Every image is decoded once (in threads) by `preprocess.preprocess`, the function that
resnet-predict and the exported SavedModel's `serving_encoded` also use, to image_size x
image_size RGB, and kept in memory as uint8: below 128 px the whole image resized, from 128 px on
the ImageNet geometry (short side to image_size / 0.875, centre crop), for the training images as
for the held-out ones, so training, evaluation and prediction see one geometry (the inception crop
of `augment=standard` then works inside that centre crop). An unreadable file is named in a
warning and skipped; the count is reported.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tensorflow as tf

from resnet_train.data.info import DatasetInfo, Splits, channel_stats
from resnet_train.data.preprocess import preprocess_file
from resnet_train.errors import DataError

log = logging.getLogger(__name__)

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
HELD_OUT_NAMES = ("val", "validation", "test")
MAX_NAMED = 10  # unreadable files named one by one; the rest only counted


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())


def list_files(root: Path, class_names=None):
    """(paths, labels, class_names) of one tree; classes are the sorted sub-folder names."""
    dirs = _class_dirs(root)
    names = class_names or [d.name for d in dirs if _images_in(d)]
    index = {name: i for i, name in enumerate(names)}
    paths, labels = [], []
    for d in dirs:
        files = _images_in(d)
        if not files:
            continue
        if d.name not in index:
            raise DataError(
                f"class folder {d} is not among the training classes ({', '.join(names)}): "
                f"give the held-out tree the same class folders as the training tree"
            )
        paths += files
        labels += [index[d.name]] * len(files)
    return paths, np.asarray(labels, dtype=np.int64), names


def decode_all(paths, labels, size: int, what: str):
    """Each file as `preprocess.preprocess` makes it, RGB uint8 (size, size, 3): what prediction
    and the exported model see. In threads (TF's kernels release the GIL); drops and reports
    unreadable files."""
    from tqdm.auto import tqdm

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        images = list(
            tqdm(
                pool.map(lambda p: preprocess_file(p, (size, size, 3)), paths),
                total=len(paths),
                desc=f"decoding {what}",
                unit="img",
                leave=False,
                disable=len(paths) < 2000 or None,
            )
        )
    bad = [p for p, im in zip(paths, images) if im is None]
    if bad:
        named = ", ".join(str(p) for p in bad[:MAX_NAMED])
        more = f" and {len(bad) - MAX_NAMED} more" if len(bad) > MAX_NAMED else ""
        log.warning("Skipped %d unreadable image file(s) in %s: %s%s", len(bad), what, named, more)
    keep = [i for i, im in enumerate(images) if im is not None]
    x = np.stack([images[i] for i in keep]) if keep else np.zeros((0, size, size, 3), np.uint8)
    return x, labels[keep], len(bad)


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


def load(path, image_size: int = 32, val_fraction: float = 0.2, split_seed: int = 0) -> Splits:
    if not path:
        raise DataError("data=folder needs data.path=DIR (one sub-folder of images per class)")
    root = Path(str(path)).expanduser()
    if not root.is_dir():
        raise DataError(f"data.path={root} does not exist or is not a folder")
    if not isinstance(image_size, int) or image_size < 8:
        raise DataError(f"data.image_size must be an integer >= 8 (got {image_size!r})")
    held_root = next((root / n for n in HELD_OUT_NAMES if (root / n).is_dir()), None)
    train_root = root / "train" if (root / "train").is_dir() else root
    if held_root is not None and train_root == root:
        raise DataError(f"{root} has a {held_root.name}/ folder but no train/ folder beside it")

    paths, labels, names = list_files(train_root)
    if not paths:
        raise DataError(
            f"no images in {train_root}: expected one sub-folder per class holding {', '.join(EXTENSIONS)} files"
        )
    if len(names) < 2:
        raise DataError(f"{train_root} has one class ({names[0]}): a classifier needs at least two class folders")

    x, y, bad = decode_all(paths, labels, image_size, str(train_root))
    if held_root is not None:
        held_paths, held_labels, _ = list_files(held_root, names)
        x_test, y_test, bad_test = decode_all(held_paths, held_labels, image_size, str(held_root))
        bad += bad_test
    else:
        if not 0 < val_fraction < 1:
            raise DataError(f"data.val_fraction must be between 0 and 1 (got {val_fraction})")
        train_idx, held_idx = _stratified_split(y, val_fraction, split_seed)
        x, y, x_test, y_test = x[train_idx], y[train_idx], x[held_idx], y[held_idx]
    if len(x) == 0 or len(x_test) == 0:
        raise DataError(f"{root}: after skipping unreadable files there is no training or held-out image left")

    mean, std = channel_stats(x)
    log.info(
        "Folder %s: %d classes, %d train / %d held-out images at %dx%d%s",
        root,
        len(names),
        len(x),
        len(x_test),
        image_size,
        image_size,
        f", {bad} unreadable skipped" if bad else "",
    )
    info = DatasetInfo(
        name=root.name or "folder",
        num_classes=len(names),
        image_shape=(image_size, image_size, 3),
        train_size=len(x),
        test_size=len(x_test),
        class_names=names,
        mean=mean,
        std=std,
        skipped_files=bad,
    )
    return Splits(
        tf.data.Dataset.from_tensor_slices((x, y)), tf.data.Dataset.from_tensor_slices((x_test, y_test)), info
    )
