"""tf.data pipelines: uint8 examples -> shuffled, augmented, batched uint8 tensors.

Images stay uint8 all the way to the model (which normalises them itself): a quarter of the
bytes of float32 through the pipeline and across to an accelerator.
"""

from __future__ import annotations

import contextlib

import tensorflow as tf

from resnet_train.data.augment import example_seed

AUTOTUNE = tf.data.AUTOTUNE


def train_batches(
    ds: tf.data.Dataset,
    size: int,
    batch_size: int,
    seed: int,
    epoch: int,
    augment=None,
    batch_augment=None,
    skip_batches: int = 0,
    **kwargs,
) -> tf.data.Dataset:
    """One epoch of training batches. Order and augmentation depend only on (seed, epoch).

    `batch_size` is the global batch. Only full global batches are used (every step sees one).
    `skip_batches` starts the epoch part-way, for resuming a run that stopped mid-epoch: the
    skipped examples are dropped before any augmentation work, and every later example keeps its
    index, hence its randomness. `shuffle_buffer` defaults to the whole dataset (in-memory data).

    Under several workers (`pipelines`), every worker shuffles identically and keeps its own
    slice of each global batch, so the workers together see exactly the single-process batches.
    The yielded batches have `replica_batch` examples (default: the worker's whole slice).
    """
    return training_stream(ds, size, batch_size, seed, epoch, epoch + 1, augment, batch_augment, skip_batches, **kwargs)


def training_stream(
    ds: tf.data.Dataset,
    size: int,
    batch_size: int,
    seed: int,
    first_epoch: int,
    epochs: int,
    augment=None,
    batch_augment=None,
    skip_batches: int = 0,
    shuffle_buffer: int | None = None,
    pipelines: int = 1,
    pipeline_id: int = 0,
    replica_batch: int | None = None,
    load=None,
    sharded: bool = False,
    balanced_classes=None,
    repeats: int = 1,
) -> tf.data.Dataset:
    """Epochs `first_epoch`..`epochs - 1` in one pipeline: each epoch's batches as train_batches
    makes them for that epoch alone (the first one starting `skip_batches` in), one after another.

    Why one pipeline and not one per epoch: building and tracing an epoch's pipeline (shuffle, augmentation functions)
    cost 0.05-0.8 s of every epoch on a 2-core machine, and its first batches were made while the step waited; one
    pipeline is traced once, and its prefetch makes the next epoch's first batches while the last epoch is being
    evaluated. The epoch is a tensor inside it (tests/test_data.py: the same batches as a pipeline per epoch).

    `load` (file_loader) turns a stored element into the image, after the skip and the worker's
    filter, so a file is read only by the worker that trains on it and never for skipped batches.

    `sharded` (data.shard=files): `ds` is this pipeline's own part (Splits.train_shard), shuffled
    alone and repeated to the epoch's size // batch_size batches (workers step together).
    `balanced_classes` (data.sampling=balanced): the classes drawn equally often (`balanced`).
    """
    per_pipeline = batch_size // pipelines
    replica_batch = replica_batch or per_pipeline
    buffer = min(size, shuffle_buffer or size)

    def one_epoch(epoch):
        skip = tf.where(epoch == first_epoch, tf.constant(skip_batches, tf.int64), tf.constant(0, tf.int64))
        d = repeated(_epoch_order(ds, buffer, seed * 7919 + epoch, balanced_classes), size, repeats)
        d = _this_pipelines_examples(d, size, batch_size, skip, pipelines, pipeline_id, sharded)
        if load is not None:
            d = d.map(lambda i, xy: (i, (load(xy[0]), xy[1])), num_parallel_calls=AUTOTUNE)
        if augment is not None:
            d = d.map(lambda i, xy: (augment(xy[0], example_seed(seed, epoch, i)), xy[1]), num_parallel_calls=AUTOTUNE)
        else:
            d = d.map(lambda i, xy: xy)
        d = d.batch(replica_batch, drop_remainder=True)
        if batch_augment is not None:
            per_global = per_pipeline // replica_batch  # this pipeline's batches per global batch

            def mix(k, xy):
                index = k * pipelines + pipeline_id  # unique over workers
                return batch_augment(xy[0], xy[1], example_seed(seed, epoch, index, stream=1))

            d = d.enumerate(start=skip * per_global).map(mix, num_parallel_calls=AUTOTUNE)
        return d

    return tf.data.Dataset.range(first_epoch, epochs).flat_map(one_epoch).prefetch(AUTOTUNE)


def _epoch_order(ds, buffer: int, seed, balanced_classes=None) -> tf.data.Dataset:
    """The epoch's examples in their seeded order: shuffled, or drawn class-balanced."""
    with _seeded_by_op_only():
        if balanced_classes:
            return balanced(ds, balanced_classes, buffer, seed)
        return ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=False)


def balanced(ds, classes, buffer: int, seed) -> tf.data.Dataset:
    """An endless stream drawing each of `classes` equally often (uniformly at random, by `seed`),
    each class's examples in a seeded shuffled order, repeated: the frequent classes' examples are
    seen less than once an epoch, the rare ones several times. Each class reads the dataset once
    per repetition (for in-memory data or a folder's file list: no decoding)."""
    per_class = [
        ds.filter(lambda x, y, c=c: tf.equal(y, c))
        .shuffle(buffer, seed=seed + 1 + c, reshuffle_each_iteration=False)
        .repeat()
        for c in classes
    ]
    return tf.data.Dataset.sample_from_datasets(per_class, seed=seed)


def repeated(d, size: int, repeats: int) -> tf.data.Dataset:
    """Repeated augmentation (Hoffer et al. 2020; DeiT's and timm's RASampler): the epoch's first
    ceil(size / N) examples, each N times in a row, so the copies share a batch (or sit side by side
    across replicas) and, their positions differing, get augmentations of their own. The epoch keeps
    its length; the skip of a resume counts copies, so it stays exact. N=1: `d` itself."""
    if repeats == 1:
        return d
    return d.take(-(-size // repeats)).flat_map(lambda *xy: tf.data.Dataset.from_tensors(xy).repeat(repeats))


def _this_pipelines_examples(d, size, batch_size, skip, pipelines, pipeline_id, sharded):
    """(index, example) of the shuffled epoch `d` that this pipeline trains on, from batch `skip`
    on; an example's index (its randomness) is unique over the pipelines."""
    per_pipeline = batch_size // pipelines
    if sharded:  # its own examples, repeated to the epoch's steps
        d = d.repeat().take((size // batch_size) * per_pipeline).skip(skip * per_pipeline).enumerate()
        return d.map(lambda i, xy: ((i + skip * per_pipeline) * pipelines + pipeline_id, xy))
    d = d.enumerate().take((size // batch_size) * batch_size)  # whole global batches, on every worker
    d = d.skip(skip * batch_size)
    if pipelines > 1:  # its slice of each global batch
        d = d.filter(lambda i, xy: (i % batch_size) // per_pipeline == pipeline_id)
    return d


@contextlib.contextmanager
def _seeded_by_op_only():
    """The shuffle's seed pair from its own (seed, epoch) seed alone, not TF's global seed: with a
    tensor seed and a global seed of 0 (the default `seed: 0`), TF's random_seed.get_seed compares
    its seed pair to (0, 0) with `==` and fails on the tensor. Inside our dataset function only."""
    graph = tf.compat.v1.get_default_graph()
    saved, graph.seed = graph.seed, None
    try:
        yield
    finally:
        graph.seed = saved


def eval_batches(
    ds: tf.data.Dataset, batch_size: int, preprocess=None, size: int | None = None, image_shape=None
) -> tf.data.Dataset:
    """(images, labels, weights) batches covering every example exactly once.

    With `size` (and `image_shape`), the last batch is padded to a full batch with weight-0
    examples: every replica (and every worker) then gets a full, equal share of each batch, where
    a ragged last batch would leave some replica an empty one (which oneDNN convolutions reject)
    or a worker with fewer batches than the others. Without `size` the last batch is smaller.
    `preprocess` decodes streamed images (resize + centre crop).
    """
    if preprocess is not None:
        ds = ds.map(lambda x, y: (preprocess(x), y), num_parallel_calls=AUTOTUNE)
    ds = ds.map(lambda x, y: (x, y, tf.constant(1.0)))
    pad = (-size) % batch_size if size else 0
    if pad:
        blank = tf.zeros(tuple(image_shape), tf.uint8)
        label = ds.element_spec[1]  # an int64 class, or a multi-label task's float32 multi-hot vector
        filler = tf.data.Dataset.from_tensors((blank, tf.zeros(label.shape, label.dtype), tf.constant(0.0)))
        filler = filler.repeat(pad)
        ds = ds.concatenate(filler)
    return ds.batch(batch_size, drop_remainder=bool(size)).prefetch(AUTOTUNE)


def file_loader(info):
    """For a folder streamed from disk (info.files): file path -> the uint8 image the in-memory
    mode holds (preprocess.preprocess of the file's bytes); None for other data."""
    if not info.files:
        return None
    from resnet_train.data.preprocess import preprocess

    image_shape = tuple(int(s) for s in info.image_shape)
    return lambda path: preprocess(tf.io.read_file(path), image_shape)


def eval_preprocess(info):
    """The decode step evaluation needs for `info`'s data, or None (in-memory data is at size
    already: the folder source made it with the same function). It is preprocess.preprocess,
    which prediction and the exported model's serving_encoded signature also use."""
    if info.files:
        return file_loader(info)
    if not info.encoded:
        return None
    from resnet_train.data.preprocess import preprocess

    image_shape = tuple(int(s) for s in info.image_shape)
    return lambda encoded: preprocess(encoded, image_shape)
