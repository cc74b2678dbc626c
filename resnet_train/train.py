"""train_and_evaluate(cfg, workdir): the one function that trains. The CLI is a thin shell over it.

Reads top to bottom: set up -> data -> model and optimizer -> restore -> train loop -> results.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path


from resnet_train import config as config_lib
from resnet_train import data as data_lib
from resnet_train import models, optim, runtime
from resnet_train.checkpoint import Checkpointer
from resnet_train.data import pipeline
from resnet_train.data.augment import make_augment, make_batch_augment
from resnet_train.report import Reporter, progress, write_json
from resnet_train.trainer import Trainer

log = logging.getLogger(__name__)


def train_and_evaluate(cfg, workdir) -> dict:
    """Trains per `cfg` in `workdir` (resuming what is there) and returns the final metrics."""
    started = time.time()
    workdir = Path(workdir)
    # ---- set up ---------------------------------------------------------------------------
    config_lib.validate(cfg)  # a bad depth or batch size fails here, before any work
    workdir.mkdir(parents=True, exist_ok=True)
    strategy = runtime.configure(cfg.seed, cfg.runtime.get("deterministic", False))

    # ---- input pipeline -------------------------------------------------------------------
    splits = data_lib.load(cfg.data)
    info = splits.info
    config_lib.check_against_data(cfg, info)
    write_json(workdir / "dataset.json", info.to_dict())
    steps_per_epoch = info.train_size // cfg.batch_size
    total_steps = steps_per_epoch * cfg.epochs
    augment = make_augment(cfg.augment, info.image_shape, info.mean, encoded=info.encoded)
    batch_augment = make_batch_augment(cfg.augment, info.num_classes)
    # Per-epoch evaluation on the validation split when one is carved out, else on the test set.
    eval_split = "val" if splits.val is not None else "test"
    distribute_eval = lambda ds: strategy.experimental_distribute_dataset(  # noqa: E731
        pipeline.eval_batches(ds, cfg.batch_size, pipeline.eval_preprocess(info)))
    shuffle_buffer = cfg.data.get("shuffle_buffer") or (info.train_size if not info.encoded else 10_000)
    log.info("Shuffle buffer: %d of %d training examples", min(shuffle_buffer, info.train_size), info.train_size)
    eval_ds = distribute_eval(splits.val if splits.val is not None else splits.test)

    # ---- model and optimizer --------------------------------------------------------------
    m = cfg.model
    with strategy.scope():
        model = models.build(
            depth=m.depth, num_classes=info.num_classes, image_shape=info.image_shape,
            variant=m.get("variant", "auto"), block=m.get("block", "auto"),
            shortcut=m.get("shortcut", "auto"), mean=info.mean, std=info.std,
            init_mode=m.get("init_mode", "fan_out"), bn_momentum=m.get("bn_momentum", 0.9),
            bn_epsilon=m.get("bn_epsilon", 1e-5),
        )
        schedule = optim.lr_schedule(cfg.schedule, float(cfg.optimizer.lr), total_steps, steps_per_epoch)
        optimizer = optim.build_optimizer(cfg.optimizer, schedule)
        optimizer.build(model.trainable_variables)  # slots exist before a restore fills them
    params = models.count_params(model)
    log.info("Model %s: %s parameters; %s: %d train / %s%d test images, %d steps/epoch",
             model.name, f"{params:,}", info.name, info.train_size,
             f"{info.val_size} val / " if info.val_size else "", info.test_size, steps_per_epoch)
    trainer = Trainer(model, optimizer, strategy, cfg.batch_size,
                      weight_decay=float(cfg.optimizer.get("weight_decay", 0.0)),
                      decay_bn=bool(cfg.optimizer.get("decay_bn", False)), num_classes=info.num_classes,
                      label_smoothing=float(cfg.augment.get("label_smoothing", 0.0) or 0.0))

    # ---- restore: this run's own checkpoint, else from scratch ---------------------------
    checkpointer = Checkpointer(workdir / "checkpoints", model, optimizer,
                                max_to_keep=int(cfg.checkpoint.get("keep", 3)))
    checkpointer.restore_latest()
    step = int(optimizer.iterations.numpy())
    if step:
        log.info("Continuing at step %d of %d", step, total_steps)

    # ---- train loop -----------------------------------------------------------------------
    reporter = Reporter(workdir)
    steps_per_call = int(cfg.runtime.get("steps_per_call", 1))
    eval_metrics = None
    try:
        for epoch in range(step // steps_per_epoch, cfg.epochs):
            skip = step - epoch * steps_per_epoch
            ds = pipeline.train_batches(splits.train, info.train_size, cfg.batch_size, cfg.seed,
                                        epoch, augment, batch_augment, skip_batches=skip,
                                        shuffle_buffer=shuffle_buffer)
            iterator = iter(strategy.experimental_distribute_dataset(ds))
            trainer.reset_train_metrics()
            bar = progress(steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}")
            bar.update(skip)
            t0 = time.perf_counter()
            while step < (epoch + 1) * steps_per_epoch:
                n = min(steps_per_call, (epoch + 1) * steps_per_epoch - step)
                trainer.train_steps(iterator, n)
                step += n
                bar.update(n)
                if not bar.disable:
                    current = trainer.train_metrics()
                    bar.set_postfix(loss=f"{current['loss']:.3f}", acc=f"{current['accuracy']:.3f}",
                                    lr=f"{trainer.learning_rate():.4g}",
                                    img_s=f"{bar.n * cfg.batch_size / (time.perf_counter() - t0):.0f}")
            seconds = time.perf_counter() - t0
            bar.close()
            train_metrics = {**trainer.train_metrics(), "lr": trainer.learning_rate(),
                             "images_per_sec": (steps_per_epoch - skip) * cfg.batch_size / seconds}
            eval_metrics = trainer.evaluate(eval_ds)
            reporter.log("train", step, epoch + 1, train_metrics)
            reporter.log("eval", step, epoch + 1, eval_metrics)
            checkpointer.save(step, epoch + 1)
            log.info("epoch %d/%d  loss %.4f  acc %.4f | %s loss %.4f  acc %.4f | lr %.4g  %.0f img/s",
                     epoch + 1, cfg.epochs, train_metrics["loss"], train_metrics["accuracy"], eval_split,
                     eval_metrics["loss"], eval_metrics["accuracy"], train_metrics["lr"],
                     train_metrics["images_per_sec"])
        if eval_metrics is None:  # the run had already finished: report its final state again
            eval_metrics = trainer.evaluate(eval_ds)
        best = reporter.best("eval", "accuracy")
        test_metrics = eval_metrics if eval_split == "test" else trainer.evaluate(distribute_eval(splits.test))
        if eval_split == "val":
            reporter.log("test", step, cfg.epochs, test_metrics)
    finally:
        reporter.close()

    results = {
        "test": test_metrics,
        "eval_split": eval_split,
        "eval": eval_metrics,
        f"best_{eval_split}_accuracy": max(best or 0.0, eval_metrics["accuracy"]),
        "epochs": cfg.epochs,
        "steps": step,
        "parameters": params,
        "model": model.name,
        "dataset": info.name,
        "wall_time_s": round(time.time() - started, 1),
        "run_dir": str(workdir),
        "checkpoint": checkpointer.latest,
    }
    write_json(workdir / "results.json", results)
    return results


def load_config(overrides=(), config_name: str = "train"):
    """Composes the packaged configs with overrides, for notebooks and tests (no Hydra app run)."""
    from hydra import compose, initialize_config_dir

    config_dir = Path(__file__).parent / "configs"
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        return compose(config_name=config_name, overrides=list(overrides))


__all__ = ["train_and_evaluate", "load_config"]
