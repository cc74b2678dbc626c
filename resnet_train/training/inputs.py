"""The data side of a run: the dataset, the run's length, the evaluation batches and the training
batches' source (one pipeline for every epoch left, for in-memory data)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf

from resnet_train import config as config_lib
from resnet_train import data as data_lib
from resnet_train.data import pipeline
from resnet_train.data.augment import make_augment, make_batch_augment
from resnet_train.errors import ConfigError
from resnet_train.optim import schedules
from resnet_train.report import class_metrics
from resnet_train.training import run_dir

log = logging.getLogger(__name__)


@dataclass
class Input:
    """The data side of a run: what make() made."""

    splits: object
    info: object
    steps_per_epoch: int
    epochs: int
    total_steps: int
    eval_split: str
    eval_ds: object
    distribute_eval: Callable
    epoch_batches: Callable
    class_weights: list[float] | None = None  # data.class_weights, resolved (one per class)


def make(cfg, workdir: Path, rt) -> Input:
    """The dataset, the run's length, the evaluation batches and the training batches' source."""
    strategy = rt.strategy
    splits = data_lib.load(cfg.data)
    info = splits.info
    config_lib.check_against_data(cfg, info)
    run_dir.check_same_data(workdir, info)  # a resume finds its own dataset, wherever it now lives
    class_weights, balanced_classes = _imbalance(cfg, splits)
    steps_per_epoch = info.train_size // config_lib.step_batch(cfg)  # optimizer steps
    # `steps` when set (epochs derived, the last one cut short), else `epochs` whole epochs; a
    # warm-up longer than the run is refused here when its units differ from the run's.
    epochs, total_steps = schedules.run_length(cfg, steps_per_epoch)
    if cfg.steps is not None:
        log.info(
            "steps=%d: %d epochs of %d steps, the last one %d steps (epochs=%s is not used)",
            total_steps,
            epochs,
            steps_per_epoch,
            total_steps - (epochs - 1) * steps_per_epoch,
            cfg.epochs,
        )
    eval_split, eval_ds, distribute_eval = _evaluation(cfg, splits, strategy)
    shuffle_buffer = cfg.data.shuffle_buffer or (info.train_size if not info.encoded else 10_000)
    log.info(
        "Global batch %d = %d replica(s) x %d; shuffle buffer %d of %d training examples",
        cfg.batch_size,
        rt.replicas,
        cfg.batch_size // rt.replicas,
        min(shuffle_buffer, info.train_size),
        info.train_size,
    )
    epoch_batches = _training_batches(cfg, splits, strategy, epochs, shuffle_buffer, balanced_classes)
    return Input(
        splits=splits,
        info=info,
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        total_steps=total_steps,
        eval_split=eval_split,
        eval_ds=eval_ds,
        distribute_eval=distribute_eval,
        epoch_batches=epoch_batches,
        class_weights=class_weights,
    )


def _evaluation(cfg, splits, strategy):
    """(the split evaluated each epoch, its distributed batches, distribute_eval(ds, size))."""
    info = splits.info
    # Per-epoch evaluation on the validation split when one is carved out, else on the test set.
    eval_split = "val" if splits.val is not None else "test"
    if eval_split == "test":
        log.info(
            "No validation split (data.val_split): the per-epoch test figures are for watching only; no "
            "best checkpoint is chosen on them, and the tools use the final checkpoint"
        )

    def distribute_eval(ds, size):
        batches = pipeline.eval_batches(ds, cfg.batch_size, pipeline.eval_preprocess(info), size, info.image_shape)
        # Every worker its share of each padded batch, as for in-memory data: left to AUTO, data read
        # from files (TFRecords, tfds) would be split by file, unevenly or not at all.
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return strategy.experimental_distribute_dataset(batches.with_options(options))

    eval_ds = (
        distribute_eval(splits.val, info.val_size)
        if splits.val is not None
        else distribute_eval(splits.test, info.test_size)
    )
    return eval_split, eval_ds, distribute_eval


def _imbalance(cfg, splits):
    """(data.class_weights resolved, or None; the classes data.sampling=balanced draws, or None)."""
    info, d = splits.info, cfg.data
    if d.class_weights is None and d.sampling == "natural":
        return None, None
    if d.sampling == "balanced" and info.encoded:
        raise ConfigError(
            f"data.sampling=balanced draws each class from its own stream of the data, which {info.name}'s "
            f"streamed files cannot give cheaply: use data.class_weights=auto instead"
        )
    counts = data_lib.class_counts(splits)
    weights = class_metrics.class_weights(counts, d.class_weights, d.sampling)
    if weights and d.sampling == "balanced":
        log.info(
            "data.class_weights=%s with data.sampling=balanced: %s",
            d.class_weights,
            "every class weighs 1, as the sampling already draws them equally often"
            if d.class_weights == "auto"
            else "the weights scaled to a mean of 1 over the classes, each drawn equally often",
        )
    shown = ", ".join(
        f"{name} {n}" + (f" (weight {w:.3g})" if weights else "")
        for name, n, w in list(zip(info.class_names, counts, weights or counts))[:20]
    ) + (f", ... ({len(counts)} classes: {min(counts)} to {max(counts)} examples)" if len(counts) > 20 else "")
    log.info("Training examples per class: %s%s", shown, "; sampled equally often" if d.sampling == "balanced" else "")
    balanced = [c for c, n in enumerate(counts) if n > 0] if d.sampling == "balanced" else None
    return weights, balanced


def _training_batches(cfg, splits, strategy, epochs: int, shuffle_buffer: int, balanced_classes=None) -> Callable:
    """epoch_batches(epoch, skip): an iterator whose next batches are `epoch`'s, from batch `skip`
    on. In-memory data: one iterator over every epoch left, made at the first call and returned
    again after; streamed files: a new one per epoch."""
    info = splits.info
    augment = make_augment(cfg.augment, info.image_shape, info.mean, encoded=info.encoded)
    batch_augment = make_batch_augment(cfg.augment, info.num_classes)
    stream = []

    def epoch_batches(epoch, skip):
        if stream:
            return stream[0]

        def dataset_fn(ctx):  # a tf.distribute.InputContext
            sharded = cfg.data.shard == "files" and ctx.num_input_pipelines > 1
            shards = dict(
                shuffle_buffer=shuffle_buffer,
                pipelines=ctx.num_input_pipelines,
                pipeline_id=ctx.input_pipeline_id,
                replica_batch=ctx.get_per_replica_batch_size(cfg.batch_size),
                load=pipeline.file_loader(info),
                sharded=sharded,
                balanced_classes=balanced_classes,
                repeats=cfg.data.repeated_aug,
            )
            # Whole optimizer steps (accumulated micro-batches) per epoch; batches of micro-batches.
            args = (info.train_size, config_lib.step_batch(cfg), cfg.seed, epoch)
            if sharded:  # this pipeline's own files (a folder's files, every N-th in-memory example)
                source = splits.train_shard(cfg.seed, epoch, ctx.num_input_pipelines, ctx.input_pipeline_id)
            else:
                source = splits.train_for_epoch(cfg.seed, epoch) if splits.train_for_epoch else splits.train
            if splits.train_for_epoch:  # streamed files, ordered per epoch in Python: a pipeline per epoch
                return pipeline.train_batches(source, *args, augment, batch_augment, skip_batches=skip, **shards)
            return pipeline.training_stream(source, *args, epochs, augment, batch_augment, skip_batches=skip, **shards)

        iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
        if not splits.train_for_epoch:
            stream.append(iterator)
        return iterator

    return epoch_batches
