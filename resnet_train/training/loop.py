"""train_and_evaluate(cfg, workdir): the one function that trains. The CLI is a thin shell over it.

Reads top to bottom: set up -> data -> model and optimizer -> restore -> train loop -> results.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import math
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tensorflow import errors as tf_errors

from resnet_train import config as config_lib
from resnet_train.config import load_config  # noqa: F401 -- documented for notebooks: train.load_config
from resnet_train import data as data_lib
from resnet_train.runtime import cluster, onednn, devices as runtime, tuning
from resnet_train.training import finetune, run_dir
from resnet_train import models, optim
from resnet_train.report import plots
from resnet_train.optim import schedules
from resnet_train.training.checkpoint import Checkpointer, latest_in
from resnet_train.errors import Preempted, RunDirError, TrainingDiverged, WorkerLost, first_line
from resnet_train.training.interrupts import StopRequests
from resnet_train.training.run_lock import RunLock
from resnet_train.data import pipeline
from resnet_train.data.augment import make_augment, make_batch_augment
from resnet_train.report.metrics import (NullReporter, Reporter, best_logged, best_logged_step, hparams_of, progress,
                                 write_json)
from resnet_train.training.trainer import Trainer

log = logging.getLogger(__name__)
# tf.data's note about reading options in graph mode, raised by distribute_datasets_from_function.
warnings.filterwarnings("ignore", message="To make it possible to preserve tf.data options")


def train_and_evaluate(cfg, workdir, started: float | None = None, overrides=None) -> dict:
    """Trains per `cfg` in `workdir` (resuming what is there) and returns the final metrics.
    `started`: when the process began (for the start-up time in the log); `overrides`: the
    command line's, saved beside the config.

    Before anything is written: the config is validated, the directory locked (one run at a time)
    and, if it holds checkpoints, checked to hold a run of this config."""
    started = started or time.time()
    workdir = Path(workdir)
    config_lib.validate(cfg)  # a bad depth or batch size fails here, before any work
    # An existing run keeps the settings its checkpoints were made with (e.g. an older run's
    # model.padding); before the finished check, which compares with the config it saved.
    cfg, kept = run_dir.run_owned(workdir, cfg)
    finished = run_dir.finished(workdir, cfg)
    if finished is not None:  # e.g. a rerun sweep: finished members are skipped, not retrained
        log.info("Run in %s already finished (%d epochs): skipping; results.json has its metrics",
                 workdir, finished["epochs"])
        return finished
    changed = run_dir.check_resumable(workdir, cfg)
    chief = cfg.runtime.strategy != "multi_worker" or cluster.is_chief()
    if chief:
        run_dir.ensure_writable(workdir)
    held_log = run_dir.HeldLog(workdir)  # written to train.log once the checks below pass
    failed = True
    try:
        # The lock's heartbeat stops the run (as a SIGTERM would) once another process took it over.
        multi_worker = cfg.runtime.strategy == "multi_worker"
        with StopRequests(exit_during_set_up=not multi_worker) as stop, \
                RunLock(workdir, on_lost=stop.request) if chief else contextlib.nullcontext() as lock:
            if changed:
                log.warning("Continuing %s with changed settings: %s", workdir, "; ".join(changed))
            for line in kept:
                log.info(line)
            results = _train(cfg, workdir, started, overrides, stop, held_log, lock)
            failed = False
            return results
    except _LOST_PEER_ERRORS as e:
        if cfg.runtime.strategy != "multi_worker":
            raise
        first = first_line(e, 160)
        raise WorkerLost(f"lost contact with another worker ({type(e).__name__}: {first}): it stopped (its "
                         f"log in {workdir} says why) or is unreachable; rerun every worker's command to "
                         f"resume from {latest_in(workdir / 'checkpoints') or 'the start'}") from None
    except OSError as e:  # a full disk or a vanished directory while writing logs, plots or results
        ours = Path(e.filename).resolve().is_relative_to(workdir.resolve()) if e.filename else \
            e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO)
        if not ours:
            raise
        raise RunDirError(f"could not write {e.filename or 'to ' + str(workdir)} ({e.strerror}): free disk "
                          f"space or fix the directory, then rerun the same command; it resumes from "
                          f"{latest_in(workdir / 'checkpoints') or 'the start'}") from None
    finally:
        held_log.close(failed)


# What a collective raises when a peer process is gone (it exited after its own error, or died).
_LOST_PEER_ERRORS = (tf_errors.UnavailableError, tf_errors.CancelledError, tf_errors.DeadlineExceededError,
                     tf_errors.AbortedError)


def _train(cfg, workdir: Path, started: float, overrides, stop: StopRequests, held_log, lock=None) -> dict:
    """Set up, the epochs (each: run_epoch, then end_epoch), the final evaluation, the results."""
    run, state = _set_up(cfg, workdir, overrides, stop, held_log)
    stop.training_started()
    try:
        for epoch in range(state.step // run.steps_per_epoch, run.epochs if state.step < run.total_steps else 0):
            timing = _run_epoch(run, state, epoch, stop, lock, started)
            _end_epoch(run, state, epoch, stop, timing)
        final = _final_evaluation(run, state)
    finally:
        run.reporter.close()
        if not run.rt.is_chief:
            shutil.rmtree(run.own_dir, ignore_errors=True)
    results = _results(run, state, final, started)
    if run.rt.is_chief:
        write_json(workdir / run_dir.RESULTS, results)
    return results


@dataclass
class _Run:
    """What the loop needs, made once by _set_up."""
    cfg: object
    workdir: Path
    own_dir: Path  # the chief's is the run directory; other workers' a temporary folder
    rt: runtime.Runtime
    splits: object
    info: object
    model: object
    trainer: Trainer
    checkpointer: Checkpointer
    reporter: object
    epoch_batches: Callable  # (epoch, skip) -> an iterator of that epoch's batches from `skip` on
    distribute_eval: Callable  # (dataset, size) -> the distributed evaluation batches
    eval_ds: object  # the per-epoch evaluation's batches (validation split, else test set)
    eval_split: str  # "val" or "test"
    steps_per_epoch: int
    epochs: int
    total_steps: int
    steps_per_call: int
    every_steps: int
    train_flops: float  # per image, forward + backward
    peak: float  # the measured matmul rate over all replicas: MFU's denominator
    params: int


@dataclass
class _State:
    """What changes as the loop goes."""
    step: int
    best_so_far: float | None  # the best evaluation accuracy logged up to `step`
    eval_metrics: dict | None = None  # the last epoch's
    first_call: bool = True


def _set_up(cfg, workdir: Path, overrides, stop: StopRequests, held_log) -> tuple[_Run, _State]:
    """Runtime, data, model, optimizer, trainer, restore -- each checked before the next costs
    anything; then the run directory becomes this run's."""
    rt, levers = _runtime(cfg, workdir, stop)
    # Only the chief writes; other workers save their (required) checkpoint copies to a temp dir.
    own_dir = workdir if rt.is_chief else Path(tempfile.mkdtemp(prefix="resnet_train_worker_"))
    data = _input(cfg, workdir, rt)
    model, optimizer, trainer = _model_and_trainer(cfg, rt, data, xla=bool(levers["xla"][0]))
    params = models.count_params(model)
    # Model FLOPs utilisation: training FLOPs per image (forward + backward = 3x forward) x images/s
    # over the machine's measured matmul rate.
    train_flops = 3 * models.forward_flops(model)
    peak = runtime.peak_flops(rt.precision) * rt.replicas
    info, lr = data.info, optim.effective_lr(cfg.optimizer, cfg.batch_size)
    log.info("Model %s: %s parameters; %s: %d train / %s%d test images, %d steps/epoch; lr %.4g "
             "(optimizer.lr %g per %d images x batch %d)", model.name, f"{params:,}", info.name,
             info.train_size, f"{info.val_size} val / " if info.val_size else "", info.test_size,
             data.steps_per_epoch, lr, cfg.optimizer.lr, optim.lr_reference(cfg.optimizer, cfg.batch_size),
             cfg.batch_size)
    checkpointer, step = _restore(cfg, workdir, own_dir, rt, model, optimizer, trainer, info, overrides, held_log)
    if step:
        log.info("Continuing at step %d of %d", step, data.total_steps)

    # Every worker takes the same decisions (saving is collective under several workers): the
    # best accuracy so far comes from the records up to the restored step only.
    best_so_far = best_logged(workdir, "eval", "accuracy", up_to_step=step)
    if checkpointer.best_set_aside and best_so_far is not None:  # best/ was past the restored step
        checkpointer.adopt_best(best_logged_step(workdir, "eval", "accuracy", up_to_step=step))
    reporter = Reporter(workdir, resumed_at=step) if rt.is_chief else NullReporter()
    reporter.hparams(hparams_of(cfg, info.name))
    run = _Run(cfg=cfg, workdir=workdir, own_dir=own_dir, rt=rt, splits=data.splits, info=info, model=model,
               trainer=trainer, checkpointer=checkpointer, reporter=reporter, epoch_batches=data.epoch_batches,
               distribute_eval=data.distribute_eval, eval_ds=data.eval_ds, eval_split=data.eval_split,
               steps_per_epoch=data.steps_per_epoch, epochs=data.epochs, total_steps=data.total_steps,
               steps_per_call=int(levers["steps_per_call"][0]),
               every_steps=cfg.checkpoint.every_steps or 0, train_flops=train_flops, peak=peak, params=params)
    return run, _State(step=step, best_so_far=best_so_far)


def _runtime(cfg, workdir: Path, stop: StopRequests):
    """Strategy, precision (a resumed run keeps what `auto` chose when it started), the measured
    levers; the checks that need the replica count. Returns (runtime.Runtime, levers)."""
    r = cfg.runtime
    precision, precision_kept = run_dir.resume_precision(workdir, r.precision)
    rt = runtime.configure(cfg.seed, r.deterministic, r.strategy, precision, r.devices, r.cpu_replicas)
    if precision_kept:
        log.info(precision_kept)
    levers = tuning.resolve(r)
    log.info("oneDNN kernels %s (%s); XLA %s (%s); %d step(s) per call (%s); threads: %s",
             "on" if onednn.enabled() else "off", onednn.apply(r.onednn),
             "on" if levers["xla"][0] else "off", levers["xla"][1], levers["steps_per_call"][0],
             levers["steps_per_call"][1], tuning.threads_in_effect())
    stop.install()  # after the strategy: see StopRequests.install
    config_lib.check_replicas(cfg, rt.replicas)
    if levers["xla"][0]:
        runtime.check_xla()
    optim.check(cfg)  # a bad optimizer, schedule or EMA setting fails here, before any data is read
    return rt, levers


@dataclass
class _Input:
    """The data side of a run: what _input made."""
    splits: object
    info: object
    steps_per_epoch: int
    epochs: int
    total_steps: int
    eval_split: str
    eval_ds: object
    distribute_eval: Callable
    epoch_batches: Callable


def _input(cfg, workdir: Path, rt) -> _Input:
    """The dataset, the run's length, the evaluation batches and the training batches' source."""
    strategy = rt.strategy
    splits = data_lib.load(cfg.data)
    info = splits.info
    config_lib.check_against_data(cfg, info)
    run_dir.check_same_data(workdir, info)  # a resume finds its own dataset, wherever it now lives
    steps_per_epoch = info.train_size // cfg.batch_size
    # `steps` when set (epochs derived, the last one cut short), else `epochs` whole epochs; a
    # warm-up longer than the run is refused here when its units differ from the run's.
    epochs, total_steps = schedules.run_length(cfg, steps_per_epoch)
    if cfg.steps is not None:
        log.info("steps=%d: %d epochs of %d steps, the last one %d steps (epochs=%s is not used)", total_steps,
                 epochs, steps_per_epoch, total_steps - (epochs - 1) * steps_per_epoch, cfg.epochs)
    # Per-epoch evaluation on the validation split when one is carved out, else on the test set.
    eval_split = "val" if splits.val is not None else "test"
    if eval_split == "test":
        log.info("No validation split (data.val_split): the per-epoch test figures are for watching only; no "
                 "best checkpoint is chosen on them, and the tools use the final checkpoint")

    def distribute_eval(ds, size):
        batches = pipeline.eval_batches(ds, cfg.batch_size, pipeline.eval_preprocess(info), size, info.image_shape)
        return strategy.experimental_distribute_dataset(batches)

    eval_ds = (distribute_eval(splits.val, info.val_size) if splits.val is not None
               else distribute_eval(splits.test, info.test_size))
    shuffle_buffer = cfg.data.shuffle_buffer or (info.train_size if not info.encoded else 10_000)
    log.info("Global batch %d = %d replica(s) x %d; shuffle buffer %d of %d training examples",
             cfg.batch_size, rt.replicas, cfg.batch_size // rt.replicas,
             min(shuffle_buffer, info.train_size), info.train_size)
    epoch_batches = _training_batches(cfg, splits, strategy, epochs, shuffle_buffer)
    return _Input(splits=splits, info=info, steps_per_epoch=steps_per_epoch, epochs=epochs, total_steps=total_steps,
                  eval_split=eval_split, eval_ds=eval_ds, distribute_eval=distribute_eval,
                  epoch_batches=epoch_batches)


def _training_batches(cfg, splits, strategy, epochs: int, shuffle_buffer: int) -> Callable:
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
            shards = dict(shuffle_buffer=shuffle_buffer, pipelines=ctx.num_input_pipelines,
                          pipeline_id=ctx.input_pipeline_id,
                          replica_batch=ctx.get_per_replica_batch_size(cfg.batch_size))
            if splits.train_for_epoch:  # streamed files, ordered per epoch in Python: a pipeline per epoch
                return pipeline.train_batches(splits.train_for_epoch(cfg.seed, epoch), info.train_size, cfg.batch_size,
                                              cfg.seed, epoch, augment, batch_augment, skip_batches=skip, **shards)
            return pipeline.training_stream(splits.train, info.train_size, cfg.batch_size, cfg.seed, epoch, epochs,
                                            augment, batch_augment, skip_batches=skip, **shards)

        iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
        if not splits.train_for_epoch:
            stream.append(iterator)
        return iterator

    return epoch_batches


def _model_and_trainer(cfg, rt, data: _Input, xla: bool):
    """The model (fine-tuning's frozen layers marked), the optimizer with its schedule, the Trainer."""
    info, r = data.info, cfg.runtime
    ft = cfg.finetune
    with rt.strategy.scope():
        model = models.from_config(cfg.model, info)
        models.freeze(model, ft.freeze)  # before the optimizer sees the variables
        lr = optim.effective_lr(cfg.optimizer, cfg.batch_size)
        schedule = schedules.lr_schedule(cfg.schedule, lr, data.total_steps, data.steps_per_epoch)
        optimizer = optim.build_optimizer(cfg.optimizer, schedule, loss_scaling=rt.precision == "mixed_float16",
                                          ema_decay=cfg.ema.decay,
                                          variables=model.trainable_variables)
        optimizer.build(model.trainable_variables)  # slots exist before a restore fills them
    trainer = Trainer(model, optimizer, rt.strategy, cfg.batch_size, head_lr_mult=ft.head_lr_mult,
                      weight_decay=optim.coupled_weight_decay(cfg.optimizer),
                      clip_norm=optim.clip_norm(cfg.optimizer),
                      decay_bn=cfg.optimizer.decay_bn, num_classes=info.num_classes,
                      label_smoothing=cfg.augment.label_smoothing,
                      xla=xla,
                      max_nonfinite_steps=(r.max_nonfinite_steps if rt.precision == "mixed_float16" else 0))
    return model, optimizer, trainer


def _restore(cfg, workdir: Path, own_dir: Path, rt, model, optimizer, trainer, info, overrides, held_log):
    """This run's own checkpoint, else init_from (fine-tuning), else from scratch; then the
    directory becomes this run's (config, resolved settings, dataset saved). Returns
    (Checkpointer, the step the run continues from, the same on every worker)."""
    checkpointer = Checkpointer(own_dir / "checkpoints", model, optimizer,
                                max_to_keep=cfg.checkpoint.keep,
                                read_from=workdir / "checkpoints", extra={"train_sums": trainer.sums})
    # A directory with progress (metrics, best/, damaged checkpoints set aside) but no readable
    # checkpoint is refused on every rerun, never taken for a new run.
    restored = checkpointer.restore_latest(expect_progress=run_dir.has_progress(workdir))
    if not restored and cfg.init_from:
        with rt.strategy.scope():
            initialised = finetune.initialise_from(model, cfg.init_from, info.class_names)
        if rt.is_chief:
            write_json(workdir / "init_from.json", initialised)
    if rt.is_chief:  # the data, model and checkpoint fit: from here on the directory is this run's
        run_dir.save_config(workdir, cfg, overrides)
        run_dir.save_resolved(workdir, rt.precision)
        write_json(workdir / run_dir.DATASET, info.to_dict())
    held_log.release()
    step = int(checkpointer.step.numpy()) if restored else 0
    _check_workers_agree(rt.strategy, step, workdir)
    return checkpointer, step


def _run_epoch(run: _Run, state: _State, epoch: int, stop: StopRequests, lock, started: float) -> dict:
    """The epoch's training steps, from where the run stands; returns its timing and whether every
    worker agreed to stop at its end. Divergence, a lost lock or a stop mid-epoch raise here."""
    cfg, trainer, checkpointer = run.cfg, run.trainer, run.checkpointer
    skip = state.step - epoch * run.steps_per_epoch
    end = min((epoch + 1) * run.steps_per_epoch, run.total_steps)  # the last epoch of a run in steps stops early
    t0 = time.perf_counter()  # the epoch's input pipeline is part of its images/s
    iterator = run.epoch_batches(epoch, skip)
    made = time.perf_counter() - t0
    if not skip:  # resumed mid-epoch, the checkpoint brought the epoch's sums so far
        trainer.reset_train_metrics()
    bar = progress(end - epoch * run.steps_per_epoch, f"epoch {epoch + 1}/{run.epochs}", disable=not run.rt.is_chief)
    bar.update(skip)
    in_steps = 0.0  # seconds inside compiled train calls: the rest of the epoch is overhead
    stopping = False  # a stop agreed by every worker (all-reduced in the train call)
    while state.step < end:
        n = min(run.steps_per_call, end - state.step)
        called = time.perf_counter()
        done, nonfinite, stop_now = trainer.train_steps(iterator, n, stop.requested)
        in_steps += time.perf_counter() - called
        state.step += done
        step = state.step
        if trainer.diverged(nonfinite):
            raise _diverged(step, nonfinite, trainer, checkpointer)
        if stop_now and lock is not None and lock.lost:  # another process owns the directory now
            raise _lock_lost(lock, step, epoch, run.workdir, checkpointer)
        if state.first_call:
            log.info("first step after %.1f s (process start to first optimizer step; the first call, "
                     "tracing the step included, took %.1f s)", time.time() - started, in_steps)
            state.first_call = False
        if stop_now and step < end:  # SIGTERM/SIGINT here or on
            raise _preempted(stop, step, run.total_steps, epoch, checkpointer)  # another worker
        stopping = stop_now  # at the epoch's end: finish the epoch (eval, save), then stop
        if run.every_steps and step % run.every_steps < done and step < end:
            checkpointer.save(step, epoch)
        bar.update(done)
        if not bar.disable:
            current = trainer.train_metrics()
            rate = (bar.n - skip) * cfg.batch_size / (time.perf_counter() - t0)
            bar.set_postfix(loss=f"{current['loss']:.3f}", acc=f"{current['accuracy']:.3f}",
                            lr=f"{trainer.learning_rate():.4g}", img_s=f"{rate:.0f}",
                            mfu=f"{run.train_flops * rate / run.peak:.1%}")
    seconds = time.perf_counter() - t0
    bar.close()
    return {"images": (end - epoch * run.steps_per_epoch - skip) * cfg.batch_size, "seconds": seconds,
            "in_steps": in_steps, "made": made, "stopping": stopping}


def _end_epoch(run: _Run, state: _State, epoch: int, stop: StopRequests, timing: dict) -> None:
    """Evaluation (and the EMA weights'), the records, best/ then the checkpoint, the curves, and
    the stop agreed during the epoch; in that order on every worker."""
    trainer, checkpointer, reporter, step = run.trainer, run.checkpointer, run.reporter, state.step
    overhead = {"new input pipeline": timing["made"], "loop": timing["seconds"] - timing["in_steps"] - timing["made"]}
    images_per_sec = timing["images"] / timing["seconds"]
    train_metrics = {**trainer.train_metrics(), "lr": trainer.learning_rate(),
                     "images_per_sec": images_per_sec, "mfu": run.train_flops * images_per_sec / run.peak}
    timed = time.perf_counter()
    eval_metrics = state.eval_metrics = trainer.evaluate(run.eval_ds)
    overhead["evaluation"] = time.perf_counter() - timed
    reporter.log("train", step, epoch + 1, train_metrics)
    reporter.log("eval", step, epoch + 1, eval_metrics)
    if trainer.has_ema:
        ema_metrics = trainer.evaluate_ema(run.eval_ds)
        reporter.log("eval_ema", step, epoch + 1, ema_metrics)
        log.info("epoch %d/%d  EMA weights: %s loss %.4f  acc %.4f", epoch + 1, run.epochs, run.eval_split,
                 ema_metrics["loss"], ema_metrics["accuracy"])
    if not math.isfinite(eval_metrics["loss"]):  # e.g. the epoch's last update overflowed
        raise _diverged(step, 0, trainer, checkpointer, "in evaluation after")
    # best/ first: a kill between the two leaves the epoch to be redone, best included.
    # Only a validation split may choose it: a checkpoint picked on the test set would make
    # the test accuracy the tools report an optimistic one.
    if run.eval_split == "val" and checkpointer.save_best(step, epoch + 1, eval_metrics["accuracy"],
                                                          state.best_so_far):
        state.best_so_far = eval_metrics["accuracy"]
    timed = time.perf_counter()
    checkpointer.save(step, epoch + 1)
    overhead["checkpoint"] = time.perf_counter() - timed
    if run.rt.is_chief:
        timed = time.perf_counter()
        plots.training_curves(run.workdir / run_dir.METRICS, run.workdir / run_dir.CURVES)
        overhead["curves"] = time.perf_counter() - timed
    if timing["stopping"] and epoch + 1 < run.epochs:  # the epoch's checkpoint is the stop point
        raise Preempted(f"stopped by {_stop_cause(stop)} after epoch "
                        f"{epoch + 1} (step {step} of {run.total_steps}); checkpoint {checkpointer.latest} "
                        f"written: run the same command again to continue")
    log.info("epoch %d/%d  loss %.4f  acc %.4f | %s loss %.4f  acc %.4f | lr %.4g  %.0f img/s  MFU %.1f%%",
             epoch + 1, run.epochs, train_metrics["loss"], train_metrics["accuracy"], run.eval_split,
             eval_metrics["loss"], eval_metrics["accuracy"], train_metrics["lr"],
             train_metrics["images_per_sec"], 100 * train_metrics["mfu"])
    _log_overhead(epoch + 1, run.epochs, timing["in_steps"], overhead)


def _final_evaluation(run: _Run, state: _State) -> dict:
    """The test set (and the EMA weights' on it), and the best evaluation accuracy logged."""
    trainer, info = run.trainer, run.info
    if state.eval_metrics is None:  # the run had already finished: report its final state again
        state.eval_metrics = trainer.evaluate(run.eval_ds)
    best = run.reporter.best("eval", "accuracy")
    test_metrics = (state.eval_metrics if run.eval_split == "test"
                    else trainer.evaluate(run.distribute_eval(run.splits.test, info.test_size)))
    if run.eval_split == "val":
        run.reporter.log("test", state.step, run.epochs, test_metrics)
    test_ema = (trainer.evaluate_ema(run.distribute_eval(run.splits.test, info.test_size)) if trainer.has_ema
                else None)
    return {"test": test_metrics, "test_ema": test_ema, "best": best}


def _results(run: _Run, state: _State, final: dict, started: float) -> dict:
    """results.json: what the run reached, and what it was."""
    eval_metrics = state.eval_metrics
    results = {
        "test": final["test"],
        "eval_split": run.eval_split,
        "eval": eval_metrics,
        # Over the epochs: with a validation split the figure best/ was chosen by; on the test set
        # only a monitoring figure, biased upwards by the choice of epoch, and named so.
        ("best_val_accuracy" if run.eval_split == "val" else "best_test_accuracy_optimistic"):
            max(final["best"] or 0.0, eval_metrics["accuracy"]),
        "epochs": run.epochs,
        "steps": state.step,
        "parameters": run.params,
        "top_k": run.trainer.top_k,  # the test metrics' f"top{k}" key
        "model": run.model.name,
        "dataset": run.info.name,
        "precision": run.rt.precision,
        "replicas": run.rt.replicas,
        "wall_time_s": round(time.time() - started, 1),
        "run_dir": str(run.workdir),
        "checkpoint": run.checkpointer.latest if run.rt.is_chief else None,
        "config_hash": run_dir.config_hash(run.cfg),
    }
    if final["test_ema"] is not None:
        results["test_ema"] = final["test_ema"]
    return results


def _log_overhead(epoch: int, epochs: int, in_steps: float, overhead: dict) -> None:
    """An epoch's seconds outside its compiled training calls, by part, when they exceed a second:
    building its input pipeline and the loop's own work (both inside the epoch's img/s), then
    evaluation, checkpoint and curves (after it). Tracing the step falls inside the first call."""
    if sum(overhead.values()) > 1.0:
        log.info("epoch %d/%d  %.1f s outside the %.1f s of training steps: %s", epoch, epochs,
                 sum(overhead.values()), in_steps, ", ".join(f"{k} {v:.1f} s" for k, v in overhead.items()))


def _check_workers_agree(strategy, step: int, workdir: Path) -> None:
    """Every worker must continue from the same step (else the collectives would hang)."""
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return
    check_steps_agree(strategy, lambda: tf.constant([step], tf.int64), step, workdir)


def check_steps_agree(strategy, replica_step, step: int, workdir: Path) -> None:
    """Gathers every replica's restored step (`replica_step()`, run on each replica) and refuses
    unless all are equal: a sum would pass a worker whose step is the others' mean."""

    steps = strategy.gather(strategy.run(replica_step), axis=0).numpy().tolist()
    if min(steps) != max(steps):
        raise RunDirError(f"the workers restored different checkpoints (steps {steps}; this one: step {step} from "
                          f"{workdir}): give every worker the same hydra.run.dir on a file system they share")


def _diverged(step: int, nonfinite: int, trainer, checkpointer, when: str = "at") -> TrainingDiverged:
    """The error for a non-finite loss: the step, the last good checkpoint (untouched), what to try."""
    good = checkpointer.latest
    where = f"the last good checkpoint {good} is kept" if good else "no checkpoint was written yet"
    what = (f", {nonfinite} steps in a row (more than runtime.max_nonfinite_steps={trainer.max_nonfinite_steps})"
            if trainer.max_nonfinite_steps else "")
    return TrainingDiverged(
        f"the loss became NaN/Inf {when} step {step}{what}, lr {trainer.learning_rate():.4g}: training stopped "
        f"and {where}; lower optimizer.lr, add schedule.warmup_epochs or optimizer.clip_norm, or check the data")


def _stop_cause(stop) -> str:
    return stop.signal_name or stop.reason or "a signal on another worker"


def _lock_lost(lock, step: int, epoch: int, workdir: Path, checkpointer) -> RunDirError:
    """Another process took the run lock over: nothing more is written where it now writes (no
    checkpoint through the index, no metrics); this run's state goes to a folder of its own."""
    aside = workdir / "lock_lost" / f"{lock.record['host']}-{lock.record['pid']}" / f"ckpt-{step}"
    try:
        saved = f"this run's state at step {step} is in {checkpointer.save_aside(aside, step, epoch)}"
    except Exception as e:  # noqa: BLE001 -- the stop matters more than the copy
        saved = f"its state at step {step} could not be saved ({type(e).__name__}: {e})"
    return RunDirError(f"{lock.lost} (at step {step}); nothing more was written into its checkpoints or metrics: "
                       f"{saved} (init_from= it to go on in a new run directory)")


def _preempted(stop, step: int, total_steps: int, epoch: int, checkpointer) -> Preempted:
    """Saves the checkpoint of the current step (within one compiled call of the signal)."""
    if checkpointer.latest is None or not checkpointer.latest.endswith(f"-{step}"):
        checkpointer.save(step, epoch)
    return Preempted(f"stopped by {_stop_cause(stop)} at step {step} of "
                     f"{total_steps}; checkpoint {checkpointer.latest} written: run the same command "
                     f"again to continue from this step")
