"""Data sources and pipelines. `load(data_cfg)` picks the source named by `data.source`."""

from __future__ import annotations

import logging

from resnet_train.data.info import DatasetInfo, Splits
from resnet_train.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["load", "DatasetInfo", "Splits"]


def load(cfg) -> Splits:
    """`cfg` is the `data` config group (a mapping, typed here by its source's schema: unset keys
    take the schema's defaults). `limit_train` / `limit_test` keep the first N examples of each
    split (quick trials, tests)."""
    from resnet_train.config.store import data_config

    cfg = data_config(cfg)
    splits = _load_source(cfg)
    if cfg.task == "multilabel" and splits.info.task != "multilabel":
        raise ConfigError(
            f"data.task=multilabel: data={cfg.source} has one label per image (use data=folder or tfrecord)"
        )
    splits = select_classes(splits, cfg.classes)
    splits = _limited(splits, cfg.limit_train, cfg.limit_test)
    return carve_validation(splits, cfg.val_split, cfg.split_seed, cfg.split_method)


def class_counts(splits: Splits) -> list[int]:
    """Training examples per class: the source's count, or the labels counted (in-memory data and
    a folder's file list in a moment; streamed data reads its files once, with a log line).
    Multi-label data: the examples that have each class (the multi-hot vectors summed)."""
    import numpy as np

    info = splits.info
    if info.class_counts is not None:
        return list(info.class_counts)
    if info.encoded:
        log.info("Counting the classes of %d streamed training examples (a pass over the files)", info.train_size)
    counts = np.zeros(info.num_classes, np.int64)
    for labels in splits.train.map(lambda x, y: y).batch(65536):
        if info.task == "multilabel":
            counts += np.rint(labels.numpy().sum(0)).astype(np.int64)
        else:
            counts += np.bincount(labels.numpy(), minlength=info.num_classes)
    info.class_counts = [int(c) for c in counts]
    return info.class_counts


def count_one(total, element):
    return total + 1


def select_classes(splits: Splits, classes) -> Splits:
    """Keeps the listed classes (by index), relabelled 0..k-1 in the order given."""
    if not classes:
        return splits
    import tensorflow as tf

    info = splits.info
    classes = [int(c) for c in classes]
    if len(set(classes)) != len(classes) or not all(0 <= c < info.num_classes for c in classes) or len(classes) < 2:
        raise ConfigError(
            f"data.classes must be 2 or more distinct class indices in 0..{info.num_classes - 1} (got {classes})"
        )
    if info.encoded:
        raise ConfigError("data.classes needs in-memory data (data.cache=true)")
    mapping = [-1] * info.num_classes
    for new, old in enumerate(classes):
        mapping[old] = new
    table = tf.constant(mapping, tf.int64)

    def wanted(image, label):
        return tf.gather(table, label) >= 0

    def relabel(image, label):
        return image, tf.gather(table, label)

    def keep(ds):
        ds = ds.filter(wanted).map(relabel).cache()
        return ds, int(ds.reduce(0, count_one))

    splits.train, info.train_size = keep(splits.train)
    splits.test, info.test_size = keep(splits.test)
    info.class_names = [info.class_names[c] for c in classes]
    info.num_classes = len(classes)
    return splits


# The split of runs made before data.split_seed: a TF shuffle (seed 1234 mixed with TF's global
# seed, which training sets to `seed`), kept only so that such a run resumes on its own split.
LEGACY_SPLIT = "legacy"
# How data.val_split draws: each class its share, or uniformly (runs made before, run_dir.RUN_OWNED).
SPLIT_METHODS = ("stratified", "uniform")


def held_out_indices(size: int, count: int, split_seed: int = 0):
    """The indices of the `count` examples (of `size`) held out for validation, sorted.

    A pure function of (size, count, split_seed), drawn by numpy's own generator: TensorFlow's
    seeded ops mix in the global seed, which training sets to `seed`, so a tf.data shuffle would
    hold out other images in every run of another seed, and others again in resnet-eval."""
    import numpy as np

    return np.sort(np.random.default_rng(int(split_seed)).permutation(size)[:count])


def stratified_held_out(labels, count: int, split_seed: int = 0):
    """The indices of the `count` examples held out for validation, sorted, drawn class by class:
    each class its share of `count` (by largest remainders), so that a rare class is in validation
    too. Every class with 2 or more examples gets at least one when `count` allows it, and keeps at
    least one for training. A pure function of (labels, count, split_seed), like held_out_indices."""
    import numpy as np

    labels = np.asarray(labels)
    classes, sizes = np.unique(labels, return_counts=True)
    take = _class_shares(sizes, count)
    rng = np.random.default_rng(int(split_seed))
    held = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
    return np.sort(np.concatenate(held))


def _class_shares(sizes, count: int):
    """How many of each class's `sizes` examples to hold out: `count` in all, proportionally."""
    import numpy as np

    quota = count * sizes / sizes.sum()
    cap = np.where(sizes >= 2, sizes - 1, 0)  # a class keeps one training example ...
    if count > cap.sum():
        cap = sizes  # ... unless the count asked for cannot leave one to every class
    least = np.minimum(sizes >= 2, cap) if (sizes >= 2).sum() <= count else np.zeros_like(sizes)
    take = np.clip(np.floor(quota).astype(int), least, cap)
    while take.sum() < count:  # the largest remainders first
        take[np.argmax(np.where(take < cap, quota - take, -np.inf))] += 1
    while take.sum() > count:  # the minimum of one took too many: from the most over their share
        take[np.argmax(np.where(take > least, take - quota, -np.inf))] -= 1
    return take


def carve_validation(splits: Splits, val_split, split_seed: int = 0, method: str = "stratified") -> Splits:
    """Holds out `val_split` training examples (a fraction in (0, 1) or a count) for validation:
    each class its share (`stratified_held_out`), or drawn uniformly (`method`="uniform": runs made
    before stratification, run_dir.RUN_OWNED; multi-label data always, since stratifying needs one
    label per example).

    The same examples in every run, epoch and seed, and in resnet-eval / resnet-export; the rest
    keep their order. Both parts are cached.
    """
    if val_split is None or val_split == 0:
        return splits
    import numpy as np
    import tensorflow as tf

    info = splits.info
    if info.encoded:
        raise ConfigError(
            f"data.val_split needs in-memory data; {info.name} is streamed: use its own "
            f"validation split (data.test_split) instead"
        )
    if isinstance(val_split, float) and 0 < val_split < 1:
        count = int(round(val_split * info.train_size))
    elif isinstance(val_split, int) and not isinstance(val_split, bool) and val_split > 0:
        count = val_split
    else:
        raise ConfigError(f"data.val_split must be a fraction in (0, 1) or a count of examples (got {val_split!r})")
    if not 0 < count < info.train_size:
        raise ConfigError(
            f"data.val_split={val_split} leaves no training examples (of {info.train_size}): use a smaller value"
        )
    if split_seed == LEGACY_SPLIT:  # a run made before split_seed, resumed (run_dir.RUN_OWNED)
        shuffled = splits.train.shuffle(info.train_size, seed=1234, reshuffle_each_iteration=False)
        splits.val, splits.train = shuffled.take(count).cache(), shuffled.skip(count).cache()
        info.train_size, info.val_size = info.train_size - count, count
        return splits
    if isinstance(split_seed, bool) or not isinstance(split_seed, int) or split_seed < 0:
        raise ConfigError(f"data.split_seed must be a non-negative integer (got {split_seed!r})")
    if method not in SPLIT_METHODS:
        raise ConfigError(f"data.split_method must be stratified or uniform (got {method!r})")
    held = np.zeros(info.train_size, bool)
    held[_held_out(splits, count, split_seed, method)] = True
    table = tf.constant(held)
    indexed = splits.train.enumerate()

    def part(keep_held: bool):
        return indexed.filter(lambda i, xy: tf.equal(tf.gather(table, i), keep_held)).map(lambda i, xy: xy).cache()

    splits.val, splits.train = part(True), part(False)
    info.train_size, info.val_size = info.train_size - count, count
    return splits


def _held_out(splits: Splits, count: int, split_seed: int, method: str):
    info = splits.info
    if method == "uniform" or info.task == "multilabel":
        why = "data.split_method=uniform" if method == "uniform" else "multi-label: stratifying needs one label"
        log.info("data.val_split: %d of %d training examples held out for validation, drawn uniformly (%s)",
                 count, info.train_size, why)  # fmt: skip
        return held_out_indices(info.train_size, count, split_seed)
    import numpy as np

    labels = np.concatenate([y.numpy() for y in splits.train.map(lambda x, y: y).batch(65536)])
    present = int((np.bincount(labels) >= 2).sum())
    if count < present:
        log.warning("data.val_split holds out %d examples for %d classes: some classes are not in validation, "
                    "and balanced accuracy / macro-F1 leave them out; hold out more", count, present)  # fmt: skip
    log.info("data.val_split: %d of %d training examples held out for validation, each class its share",
             count, info.train_size)  # fmt: skip
    return stratified_held_out(labels, count, split_seed)


def _limited(splits: Splits, limit_train, limit_test) -> Splits:
    info = splits.info
    for key, value in (("limit_train", limit_train), ("limit_test", limit_test)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigError(f"data.{key} must be a positive integer or null (got {value!r})")
    if limit_train and limit_train < info.train_size:
        splits.train, info.train_size = splits.train.take(limit_train), limit_train
        splits.train_for_epoch = None  # the first N in file order, the same N every epoch
        info.class_counts = None
    if limit_test and limit_test < info.test_size:
        splits.test, info.test_size = splits.test.take(limit_test), limit_test
    return splits


def _load_source(cfg) -> Splits:
    """`cfg`: typed by store.data_config, so its source is one the schema knows."""
    if cfg.source == "embedded":
        from resnet_train.data import embedded

        return embedded.load(image_size=cfg.image_size, test_fraction=cfg.test_fraction)
    if cfg.source == "tfds":
        from resnet_train.data import tfds_source

        if not cfg.name:
            raise ConfigError("data=tfds needs data.name=NAME, a tensorflow-datasets dataset name")
        return tfds_source.load(
            cfg.name,
            data_dir=cfg.data_dir,
            manual_dir=cfg.manual_dir,
            download=cfg.download,
            mean=cfg.mean,
            std=cfg.std,
            train_split=cfg.train_split,
            test_split=cfg.test_split,
            in_memory=cfg.cache,
            image_size=cfg.image_size,
        )
    if cfg.source == "folder":
        from resnet_train.data import folder, multilabel_folder

        kwargs = dict(
            image_size=cfg.image_size,
            val_fraction=cfg.val_fraction,
            split_seed=cfg.split_seed,
            cache=cfg.cache,
            cache_budget_mb=cfg.cache_budget_mb,
        )
        if cfg.task == "multilabel":  # an image list with several labels per image
            return multilabel_folder.load(cfg.path, labels_file=cfg.labels_file, **kwargs)
        return folder.load(cfg.path, **kwargs)
    if cfg.source == "tfrecord":
        from resnet_train.data import tfrecord_source

        return tfrecord_source.load(cfg)
    from resnet_train.data import synthetic

    return synthetic.load(
        image_shape=tuple(cfg.image_shape),
        num_classes=cfg.num_classes,
        train_size=cfg.train_size,
        test_size=cfg.test_size,
    )
