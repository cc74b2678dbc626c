"""data=folder data.task=multilabel: images anywhere under the folder, listed with their labels.

Layouts (as for class folders, data/folder.py):
    DIR/labels.csv and the images it lists      split by data.val_fraction, uniformly (seeded)
    DIR/train/labels.csv + DIR/val/labels.csv   (or validation/, test/), each listing its images

The labels file (data.labels_file, relative to each split's folder; default labels.csv, else
labels.json):
    CSV with the header `file,labels`, labels separated by spaces, none for an image without one:
        file,labels
        beach/001.jpg,sea sky
        city/002.jpg,
    JSON: {"beach/001.jpg": ["sea", "sky"], "city/002.jpg": []}

The classes are the sorted label names of the training split's file; a held-out label outside
them is an error. Labels are float32 multi-hot vectors of the class count. The images are decoded
and kept (or streamed) exactly as folder.py does it, with the same functions. Why a uniform split:
stratifying needs one label per image.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import numpy as np

from resnet_train.data import folder
from resnet_train.data.info import Splits, displayable
from resnet_train.errors import DataError

log = logging.getLogger(__name__)

DEFAULT_NAMES = ("labels.csv", "labels.json")
FORMATS = (
    'a CSV with the header "file,labels" (labels separated by spaces) or a JSON object '
    '{"relative/path.jpg": ["label", ...]}'
)


def load(
    path,
    image_size: int = 32,
    val_fraction: float = 0.2,
    split_seed: int = 0,
    cache="auto",
    cache_budget_mb=2048,
    labels_file=None,
) -> Splits:
    """Splits whose labels are float32 multi-hot vectors (DatasetInfo.task = "multilabel")."""
    folder.check_cache(cache, cache_budget_mb)
    root, train_root, held_root = folder.layout(path, image_size, val_fraction, "images and a labels file")
    paths, names_per_image = listed_images(train_root, labels_file)
    classes = sorted({n for names in names_per_image for n in names})
    if len(classes) < 2:
        raise DataError(
            f"{labels_path(train_root, labels_file)} names {len(classes)} label(s) "
            f"({', '.join(classes) or 'none'}): a classifier needs at least two"
        )
    labels = multi_hot(names_per_image, classes)
    held = None
    if held_root is not None:
        held_paths, held_names = listed_images(held_root, labels_file)
        _check_known(held_names, classes, labels_path(held_root, labels_file))
        held = held_paths, multi_hot(held_names, classes)
    in_memory, why = folder.cache_mode(cache, len(paths) + (len(held[0]) if held else 0), image_size, cache_budget_mb)
    train = folder.read_part(paths, labels, image_size, str(train_root), in_memory)
    if held is not None:
        test = folder.read_part(*held, image_size, str(held_root), in_memory)
    else:
        train_idx, held_idx = uniform_split(len(train.y), val_fraction, split_seed)
        train, test = train.subset(train_idx, train.bad), train.subset(held_idx)
    return folder.make_splits(root, classes, train, test, image_size, in_memory, why, task="multilabel")


def uniform_split(size: int, fraction: float, seed: int):
    """Indices (train, held_out), sorted: round(fraction * size) (at least 1) drawn uniformly."""
    order = np.random.default_rng(int(seed)).permutation(size)
    k = min(max(1, int(round(fraction * size))), size - 1) if size > 1 else 0
    return np.sort(order[k:]), np.sort(order[:k])


def multi_hot(names_per_image, classes) -> np.ndarray:
    """(images, classes) float32: 1.0 where the image has the class."""
    index = {name: i for i, name in enumerate(classes)}
    labels = np.zeros((len(names_per_image), len(classes)), np.float32)
    for row, names in enumerate(names_per_image):
        labels[row, [index[n] for n in names]] = 1.0
    return labels


def _check_known(names_per_image, classes, where: Path) -> None:
    unknown = sorted({n for names in names_per_image for n in names} - set(classes))
    if unknown:
        raise DataError(
            f"{displayable(str(where))} names label(s) the training split's labels file does not have "
            f"({', '.join(unknown[:5])}{', ...' if len(unknown) > 5 else ''}); training labels: {', '.join(classes)}"
        )


def labels_path(split_root: Path, labels_file=None) -> Path:
    """The labels file of one split's folder: data.labels_file, or labels.csv, else labels.json."""
    if labels_file:
        found = split_root / str(labels_file)
        if not found.is_file():
            raise DataError(
                f"data.labels_file={labels_file}: no such file in {displayable(str(split_root))} "
                f"(data.task=multilabel lists each split's images with their labels: {FORMATS})"
            )
        return found
    for name in DEFAULT_NAMES:
        if (split_root / name).is_file():
            return split_root / name
    raise DataError(
        f"no labels file in {displayable(str(split_root))}: data.task=multilabel looks for "
        f"{' or '.join(DEFAULT_NAMES)} ({FORMATS}), or the file named by data.labels_file"
    )


def listed_images(split_root: Path, labels_file=None) -> tuple[list[Path], list[list[str]]]:
    """(paths, label names per image) of one split's labels file, every listed file checked to
    exist; the images under the folder that the file does not list are counted in the log."""
    source = labels_path(split_root, labels_file)
    try:
        text = source.read_bytes().decode(
            "utf-8-sig", "backslashreplace"
        )  # -sig: Excel's "CSV UTF-8" starts with a BOM
    except OSError as error:
        raise DataError(f"{displayable(str(source))} cannot be read ({error.strerror})") from None
    read = _read_json if source.suffix.lower() == ".json" else _read_csv
    entries = read(text, displayable(str(source)))
    if not entries:
        raise DataError(f"{displayable(str(source))} lists no image ({FORMATS})")
    paths = []
    for where, name, _ in entries:
        file = split_root / name
        if not file.is_file():
            raise DataError(f"{where}: {name} does not exist (paths are relative to {displayable(str(split_root))})")
        paths.append(file)
    listed = {p.resolve() for p in paths}
    unlisted = sum(1 for p in folder.images_in(split_root) if p.resolve() not in listed)
    if unlisted:
        log.info("%d image(s) under %s are not in %s: not used", unlisted, split_root, source.name)
    return paths, [labels for _, _, labels in entries]


def _read_csv(text: str, what: str) -> list[tuple[str, str, list[str]]]:
    """(where, file, labels) per data row of a `file,labels` CSV; a bad row names its line."""
    rows = csv.reader(io.StringIO(text))
    header = next(rows, None)
    if [h.strip().lower() for h in header or []] != ["file", "labels"]:
        raise DataError(
            f"{what} line 1: the header must be file,labels (got {','.join(header or [])!r}); the format: {FORMATS}"
        )
    entries, seen = [], {}
    for row in rows:
        where = f"{what} line {rows.line_num}"
        if not row or not "".join(row).strip():
            continue
        if len(row) != 2 or not row[0].strip():
            raise DataError(f"{where}: expected a file and its labels separated by one comma (got {','.join(row)!r})")
        name = row[0].strip()
        if name in seen:
            raise DataError(f"{where}: {name} is listed twice (first on line {seen[name]})")
        seen[name] = rows.line_num
        entries.append((where, name, sorted(set(row[1].split()))))
    return entries


def _read_json(text: str, what: str) -> list[tuple[str, str, list[str]]]:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{what} line {error.lineno}: not valid JSON ({error.msg}); the format: {FORMATS}") from None
    if not isinstance(raw, dict):
        raise DataError(f"{what}: expected a JSON object of file -> list of labels (got a {type(raw).__name__})")
    entries = []
    for name, labels in raw.items():
        where = f"{what} entry {name!r}"
        if not isinstance(labels, list) or not all(isinstance(n, str) and n.strip() for n in labels):
            raise DataError(f"{where}: the labels must be a list of names (got {json.dumps(labels)[:80]})")
        entries.append((where, name, sorted({n.strip() for n in labels})))
    return entries
