"""TFRecord files of tf.train.Example, as TF's ImageNet scripts (and most pipelines) write them:
`image/encoded` (JPEG/PNG bytes), `image/class/label` (int64), optional `image/class/text`.

    resnet-train data=tfrecord data.train_files='/data/train-*' data.eval_files='/data/validation-*'

Streamed: the encoded images go to the pipeline, which decodes them fused with the crop as for
ImageNet from tfds. Before training, one pass over each split reads only the labels (and texts):
it counts the examples (a run's length needs them), checks every label against the class count,
and names the classes from the records' texts when no labels file or class_names is given. It
decodes no image (data/faults.py measured why): a record whose image fails to decode while training
is looked for then (Splits.locate) and named. TF's ImageNet scripts number the classes 1..1000:
data.label_offset=1 makes them 0..999.

data.task=multilabel: a record holds several `image/class/label` values (none: no label), and its
label is a float32 multi-hot vector of the class count; the label pass checks every value and
counts each class's images (a value repeated in one record counts once).
"""

from __future__ import annotations

import functools
import glob
import logging
from pathlib import Path

import numpy as np
import tensorflow as tf

from resnet_train.data import faults
from resnet_train.data.info import DatasetInfo, Splits
from resnet_train.errors import DataError

log = logging.getLogger(__name__)

CYCLE = 16  # files read at once (interleaved): the read parallelism of a stream of many shards


def match_files(pattern, key: str) -> list[str]:
    """The sorted files of a glob (or a list of globs); none is an error naming the pattern."""
    if not pattern:
        raise DataError(f"data=tfrecord needs data.{key}=GLOB, the TFRecord files of that split")
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    files = sorted({f for p in patterns for f in glob.glob(str(Path(str(p)).expanduser()))})
    if not files:
        raise DataError(f"data.{key}={pattern} matches no file: give a glob of TFRecord files, e.g. '/data/train-*'")
    return files


def _multilabel(cfg) -> bool:
    return getattr(cfg, "task", "multiclass") == "multilabel"


def _features(cfg, with_image: bool) -> dict:
    if _multilabel(cfg):  # several values per record
        features = {cfg.label_key: tf.io.VarLenFeature(tf.int64)}
        text = tf.io.VarLenFeature(tf.string)
    else:
        features = {cfg.label_key: tf.io.FixedLenFeature([], tf.int64)}
        text = tf.io.FixedLenFeature([], tf.string, default_value="")
    if with_image:
        features[cfg.image_key] = tf.io.FixedLenFeature([], tf.string)
    elif cfg.text_key:
        features[cfg.text_key] = text
    return features


def read(files, cfg, interleave: bool = False, num_classes: int | None = None) -> tf.data.Dataset:
    """(encoded image, label - label_offset) of the files, in the files' order (interleaved
    CYCLE files at a time, deterministically, when `interleave`). data.task=multilabel: the label
    is the multi-hot float32 vector of `num_classes`."""
    features = _features(cfg, with_image=True)
    offset = int(cfg.label_offset)
    multilabel = _multilabel(cfg)

    def parse(record):
        example = tf.io.parse_single_example(record, features)
        if multilabel:
            hot = tf.one_hot(example[cfg.label_key].values - offset, num_classes)
            return example[cfg.image_key], tf.minimum(tf.reduce_sum(hot, 0), 1.0)
        return example[cfg.image_key], example[cfg.label_key] - offset

    names = tf.data.Dataset.from_tensor_slices(list(files))
    if interleave and len(files) > 1:
        records = names.interleave(
            tf.data.TFRecordDataset,
            cycle_length=min(CYCLE, len(files)),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
    else:
        records = tf.data.TFRecordDataset(names, num_parallel_reads=None)
    return records.map(parse, num_parallel_calls=tf.data.AUTOTUNE)


def scan_labels(files, cfg, key: str):
    """(labels after the offset, {label: text}, records) of every record; a record the parser
    rejects is named by its file. data.task=multilabel: every record's distinct values, flat."""
    features = _features(cfg, with_image=False)
    labels, texts, records = [], {}, 0
    for path in files:
        ds = tf.data.TFRecordDataset(path).map(lambda r: tf.io.parse_single_example(r, features))
        ds = ds.batch(4096, num_parallel_calls=tf.data.AUTOTUNE)
        try:
            for batch in ds:
                found, names, count = _batch_labels(batch, cfg)
                labels.append(found - int(cfg.label_offset))
                records += count
                for label, text in zip(labels[-1], names):
                    texts.setdefault(int(label), text.decode("utf-8", "replace"))
        except tf.errors.OpError as error:
            reason = str(error).splitlines()[0][:200]
            raise DataError(
                f"{path} (data.{key}) is not a TFRecord file of tf.train.Example with an int64 "
                f"{cfg.label_key!r} feature: {reason}"
            ) from None
    return (np.concatenate(labels) if labels else np.zeros(0, np.int64)), texts, records


def _batch_labels(batch, cfg):
    """(label values, their texts or [], records) of one parsed batch."""
    label = batch[cfg.label_key]
    text = batch[cfg.text_key] if cfg.text_key else None
    if not _multilabel(cfg):
        return label.numpy(), (text.numpy() if text is not None else []), len(label)
    rows, values = label.indices.numpy()[:, 0], label.values.numpy()
    names = []
    if text is not None and np.array_equal(text.indices.numpy(), label.indices.numpy()):
        names = text.values.numpy()  # one text per value: name the classes
    distinct = np.unique(np.stack([rows, values], 1), axis=0, return_index=True)[1]
    keep = np.sort(distinct)
    return values[keep], (names[keep] if len(names) else []), int(label.dense_shape[0])


def given_names(cfg) -> list[str] | None:
    """The class names from data.labels_file (one per line) or data.class_names, if given."""
    if cfg.labels_file:
        path = Path(str(cfg.labels_file)).expanduser()
        try:
            text = path.read_bytes().decode("utf-8", "backslashreplace")  # a Latin-1 name shows its bytes escaped
            return [line.strip() for line in text.splitlines() if line.strip()]
        except OSError as error:
            raise DataError(f"data.labels_file={path} cannot be read ({error.strerror})") from None
    return [str(n) for n in cfg.class_names] if cfg.class_names else None


def _checked_labels(labels, records: int, num_classes: int, files, key: str, offset: int) -> None:
    if records == 0:
        raise DataError(f"data.{key} ({files[0]}, ...) holds no example")
    if len(labels) == 0:  # multi-label records that have no label at all
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0:
        raise DataError(
            f"labels in data.{key} start at {low + offset}, below data.label_offset={offset}: "
            f"set data.label_offset={low + offset}"
        )
    if high >= num_classes:
        hint = " (TF's ImageNet scripts number classes from 1: data.label_offset=1)" if high == num_classes else ""
        raise DataError(
            f"a label in data.{key} is {high + offset}, out of range for {num_classes} classes after "
            f"data.label_offset={offset}{hint}"
        )


def _classes(cfg, train, evaluation, texts, train_files, eval_files) -> tuple[int, list[str]]:
    """(the class count, the class names), every label checked against the count. `train` and
    `evaluation`: (labels, records) of each split."""
    (train_labels, train_records), (eval_labels, eval_records) = train, evaluation
    given = given_names(cfg)
    top = int(max(train_labels.max(initial=0), eval_labels.max(initial=0)))
    num_classes = cfg.num_classes or (len(given) if given else top + 1)
    offset = int(cfg.label_offset)
    _checked_labels(train_labels, train_records, num_classes, train_files, "train_files", offset)
    _checked_labels(eval_labels, eval_records, num_classes, eval_files, "eval_files", offset)
    if given and len(given) != num_classes:
        where = "data.labels_file" if cfg.labels_file else "data.class_names"
        raise DataError(f"{where} names {len(given)} classes, data.num_classes is {num_classes}")
    names = given or [texts.get(i) or str(i) for i in range(num_classes)]
    if int(cfg.label_offset) == 0 and not (train_labels == 0).any():
        log.warning(
            "No training example has label 0: if the classes are numbered from 1 (TF's ImageNet "
            "scripts), set data.label_offset=1, or class 0 stays an empty class"
        )
    return num_classes, names


def load(cfg) -> Splits:
    """`cfg`: the data group typed by TfrecordDataConfig."""
    train_files = match_files(cfg.train_files, "train_files")
    eval_files = match_files(cfg.eval_files, "eval_files")
    train_labels, texts, train_size = scan_labels(train_files, cfg, "train_files")
    eval_labels, _, test_size = scan_labels(eval_files, cfg, "eval_files")
    train, evaluation = (train_labels, train_size), (eval_labels, test_size)
    num_classes, names = _classes(cfg, train, evaluation, texts, train_files, eval_files)
    if cfg.mean is None or cfg.std is None:
        log.warning("No data.mean / data.std for these TFRecords: using 127.5 / 64 (set them for better training)")
    mean = tuple(float(m) for m in cfg.mean) if cfg.mean is not None else (127.5,) * 3
    std = tuple(float(s) for s in cfg.std) if cfg.std is not None else (64.0,) * 3
    size = cfg.image_size
    log.info("TFRecords: %d classes, %d train examples in %d files, %d eval in %d files, decoded to %dx%d",
             num_classes, train_size, len(train_files), test_size, len(eval_files), size, size)  # fmt: skip
    info = DatasetInfo(
        name=cfg.name or Path(train_files[0]).parent.name or "tfrecord",
        num_classes=num_classes,
        image_shape=(cfg.image_size, cfg.image_size, 3),
        train_size=train_size,
        test_size=test_size,
        class_names=names,
        mean=mean,
        std=std,
        encoded=True,
        class_counts=[int(c) for c in np.bincount(train_labels, minlength=num_classes)],
        task="multilabel" if _multilabel(cfg) else "multiclass",
    )

    def train_for_epoch(seed: int, epoch: int, shard=(1, 0)):
        # A new file order each epoch (the shuffle buffer mixes only nearby examples), seeded, so
        # a resumed epoch reads the files in its own order again. data.shard=files: this input
        # pipeline's part of that order, every count-th file from its index.
        count, index = shard
        if count > len(train_files):
            raise DataError(
                f"data.shard=files gives each of {count} input pipelines its own files, and data.train_files "
                f"has {len(train_files)}: write the data in more files, or use data.shard=batches"
            )
        order = np.random.default_rng(int(seed) * 100_003 + int(epoch)).permutation(len(train_files))
        files = [train_files[i] for i in order[index::count]]
        if count > 1:
            log.info(
                "data.shard=files: input pipeline %d of %d reads %d of %d training files in epoch %d (%s)",
                index + 1,
                count,
                len(files),
                len(train_files),
                epoch + 1,
                ", ".join(Path(f).name for f in files[:8]) + (", ..." if len(files) > 8 else ""),
            )
        return read(files, cfg, interleave=True, num_classes=num_classes)

    locate = functools.partial(faults.first_bad_record, [*train_files, *eval_files], cfg.image_key)
    train, test = read(train_files, cfg, num_classes=num_classes), read(eval_files, cfg, num_classes=num_classes)
    return Splits(train, test, info, train_for_epoch=train_for_epoch, locate=locate)
