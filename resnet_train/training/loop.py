"""train_and_evaluate(cfg, workdir): the one function that trains. The CLI is a thin shell over it.

Reads top to bottom: the run directory's checks and lock (train_and_evaluate) -> set_up (setup.py:
runtime, data, model and optimizer, restore) -> per epoch _run_epoch (the steps) and _end_epoch
(evaluation, best, checkpoint, curves, stop) -> _final_evaluation -> _results.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import time
import warnings
from pathlib import Path

from resnet_train import config as config_lib
from resnet_train.errors import Preempted
from resnet_train.report import plots, step_log, tracking
from resnet_train.report.held_log import HeldLog
from resnet_train.report.metrics import progress, write_json
from resnet_train.runtime import cluster, environ_restored
from resnet_train.training import epoch_log, failures, run_dir, selection
from resnet_train.training import results as results_lib
from resnet_train.training.interrupts import StopRequests
from resnet_train.training.run_lock import RunLock
from resnet_train.training.setup import Run, State, set_up
from resnet_train.training.trial_stop import TrialStop

log = logging.getLogger(__name__)
# tf.data's note about reading options in graph mode, raised by distribute_datasets_from_function.
warnings.filterwarnings("ignore", message="To make it possible to preserve tf.data options")


@environ_restored()  # what the run set in os.environ (MLflow's file store switch) is undone
def train_and_evaluate(cfg, workdir, started: float | None = None, overrides=None, trial=None) -> dict:
    """Trains per `cfg` in `workdir` (resuming what is there) and returns the final metrics.
    `started`: when the process began (for the start-up time in the log); `overrides`: the
    command line's, saved beside the config; `trial`: a search member's Optuna trial (trial_stop.py).

    Before anything is written: the config is validated, the directory locked (one run at a time)
    and, if it holds checkpoints, checked to hold a run of this config."""
    started, workdir = started or time.time(), Path(workdir)
    config_lib.validate(cfg)  # a bad depth or batch size fails here, before any work
    # An existing run keeps the settings its checkpoints were made with (e.g. an older run's
    # model.padding); before the finished check, which compares with the config it saved.
    cfg, kept = run_dir.run_owned(workdir, cfg)
    finished = run_dir.finished(workdir, cfg)
    if finished is not None:  # e.g. a rerun sweep: finished members are skipped, not retrained
        log.info("Run in %s already finished (%d epochs): skipping; results.json has its metrics", workdir,
                 finished["epochs"])  # fmt: skip
        if cfg.runtime.strategy != "multi_worker" or cluster.is_chief():  # ended before its trackers did:
            tracking.complete(cfg, workdir, finished, run_dir.FINAL_FILES, RunLock)  # what they lack
        return finished
    changed = run_dir.check_resumable(workdir, cfg)
    chief = cfg.runtime.strategy != "multi_worker" or cluster.is_chief()
    if chief:
        run_dir.ensure_writable(workdir)
    held_log = HeldLog(workdir)  # written to train.log once the checks below pass
    failed = True
    try:
        # The lock's heartbeat stops the run (as a SIGTERM would) once another process took it over.
        multi_worker = cfg.runtime.strategy == "multi_worker"
        with (
            StopRequests(exit_during_set_up=not multi_worker) as stop,
            RunLock(workdir, on_lost=stop.request) if chief else contextlib.nullcontext() as lock,
        ):
            if changed:
                log.warning("Continuing %s with changed settings: %s", workdir, "; ".join(changed))
            for line in kept:
                log.info(line)
            results = _train(cfg, workdir, started, overrides, stop, held_log, lock, trial)
            failed = False
            return results
    except failures.LOST_PEER_ERRORS as e:
        if cfg.runtime.strategy != "multi_worker":
            raise
        raise failures.lost_peer(e, workdir) from None
    except OSError as e:  # a full disk or a vanished directory while writing logs, plots or results
        error = failures.write_failure(e, workdir)
        if error is None:
            raise
        raise error from None
    finally:
        held_log.close(failed)


def _train(cfg, workdir: Path, started: float, overrides, stop: StopRequests, held_log, lock=None, trial=None) -> dict:
    """Set up, the epochs (each: run_epoch, then end_epoch), the final evaluation, the results."""
    run, state = set_up(cfg, workdir, overrides, stop, held_log)
    state.trial_stop = TrialStop(trial, state.step // run.steps_per_epoch)
    stop.training_started()
    status = "FAILED"  # for the experiment trackers
    try:
        # Stopped early and killed before its results (a run whose patience ran out in its last
        # epoch did not stop early: it ended).
        if 0 < state.step < run.total_steps and (state.patience.exhausted() or state.trial_stop.pruned_at_epoch):
            state.stopped_early_at_epoch = state.step // run.steps_per_epoch
        last = run.epochs if state.step < run.total_steps and not state.stopped_early_at_epoch else 0
        for epoch in range(state.step // run.steps_per_epoch, last):
            timing = _run_epoch(run, state, epoch, stop, lock, started)
            _end_epoch(run, state, epoch, stop, timing)
            if state.stopped_early_at_epoch:  # saved like any epoch end; the results follow
                break
        final = _final_evaluation(run, state)
        results = results_lib.results(run, state, final, started)
        if run.rt.is_chief:
            pictures = _pictures(run, final["confusion"], f"{run.model.name}, test split, step {state.step}")
            write_json(workdir / run_dir.RESULTS, results)  # after the pictures: it marks the run finished
            run.reporter.finish(results, [*pictures, workdir / run_dir.RESULTS])
        status = "FINISHED"
    except (Preempted, KeyboardInterrupt):
        status = "KILLED"  # to be continued by the same command
        raise
    except failures.DATA_ERRORS as e:  # a file or record failing mid-run: one line naming it, checkpoints kept
        raise failures.data_failed(e, run.splits, state.step, run.checkpointer) from None
    finally:
        run.reporter.close(status)
        if not run.rt.is_chief:
            shutil.rmtree(run.own_dir, ignore_errors=True)
    return results


def _pictures(run: Run, confusion, title: str) -> list[Path]:
    """curves.png, and the test split's confusion matrix drawn beside it."""
    plots.training_curves(run.workdir / run_dir.METRICS, run.workdir / run_dir.CURVES)
    if confusion is None:  # data.task=multilabel: no confusion matrix of several labels per image
        return [run.workdir / run_dir.CURVES]
    path = run.workdir / run_dir.CONFUSION
    plots.confusion_matrix(confusion, run.info.class_names, path, title)
    return [run.workdir / run_dir.CURVES, path]


def _run_epoch(run: Run, state: State, epoch: int, stop: StopRequests, lock, started: float) -> dict:
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
    run.step_log.start_epoch(epoch, run.epochs, state.step, end, trainer)
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
            raise failures.diverged(step, nonfinite, trainer, checkpointer)
        if stop_now and lock is not None and lock.lost:  # another process owns the directory now
            raise failures.lock_lost(lock, step, epoch, run.workdir, checkpointer)
        if state.first_call:
            log.info(
                "first step after %.1f s (process start to first optimizer step; the first call, "
                "tracing the step included, took %.1f s)",
                time.time() - started,
                in_steps,
            )
            state.first_call = False
        if stop_now and step < end:  # SIGTERM/SIGINT here or on
            raise failures.preempted(stop, step, run.total_steps, epoch, checkpointer)  # another worker
        stopping = stop_now  # at the epoch's end: finish the epoch (eval, save), then stop
        if run.every_steps and step % run.every_steps < done and step < end:
            checkpointer.save(step, epoch)
        bar.update(done)
        run.step_log.after_call(step, trainer)
        if not bar.disable:
            _show_progress(bar, run, skip, t0, step)
    seconds = time.perf_counter() - t0
    bar.close()
    return {
        "images": (end - epoch * run.steps_per_epoch - skip) * config_lib.step_batch(cfg),
        "seconds": seconds,
        "in_steps": in_steps,
        "made": made,
        "stopping": stopping,
    }


def _show_progress(bar, run: Run, skip: int, t0: float, step: int) -> None:
    """The tqdm bar's figures (on a terminal only): the epoch's loss and accuracy so far, lr,
    images/s, MFU and the run's ETA."""
    trainer = run.trainer
    current = trainer.train_metrics()
    rate = (bar.n - skip) * config_lib.step_batch(run.cfg) / (time.perf_counter() - t0)
    bar.set_postfix(
        loss=f"{current['loss']:.3f}",
        acc=f"{current['accuracy']:.3f}",
        lr=f"{trainer.learning_rate():.4g}",
        img_s=f"{rate:.0f}",
        mfu=f"{run.train_flops * rate / run.peak:.1%}",
        run_eta=step_log.duration(run.step_log.eta(step)[1]),
    )


def _end_epoch(run: Run, state: State, epoch: int, stop: StopRequests, timing: dict) -> None:
    """Evaluation (and the EMA weights'), the records, best/ then the checkpoint, the curves, and
    the stop agreed during the epoch; in that order on every worker."""
    trainer, checkpointer, reporter, step = run.trainer, run.checkpointer, run.reporter, state.step
    overhead = {"new input pipeline": timing["made"], "loop": timing["seconds"] - timing["in_steps"] - timing["made"]}
    images_per_sec = timing["images"] / timing["seconds"]
    train_metrics = {
        **trainer.train_metrics(),
        "lr": trainer.learning_rate(),
        "images_per_sec": images_per_sec,
        "mfu": run.train_flops * images_per_sec / run.peak,
    }
    timed = time.perf_counter()
    eval_metrics = state.eval_metrics = trainer.evaluate(run.eval_ds)
    state.eval_confusion = trainer.last_confusion  # before the EMA weights' evaluation
    overhead["evaluation"] = time.perf_counter() - timed
    reporter.log("train", step, epoch + 1, train_metrics)
    reporter.log("eval", step, epoch + 1, eval_metrics)
    # What chooses (selection.py): the EMA weights' figures when there are some, as the tools deploy them.
    state.selected_metrics = _evaluate_ema(run, step, epoch) if trainer.has_ema else eval_metrics
    if not math.isfinite(eval_metrics["loss"]):  # e.g. the epoch's last update overflowed
        raise failures.diverged(step, 0, trainer, checkpointer, "in evaluation after")
    # best/ first: a kill between the two leaves the epoch to be redone, best included.
    # Only a validation split may choose it: a checkpoint picked on the test set would make
    # the test accuracy the tools report an optimistic one.
    chosen_by = state.selected_metrics[run.cfg.checkpoint.best_metric]
    if run.eval_split == "val" and checkpointer.save_best(step, epoch + 1, chosen_by, state.best_so_far):
        state.best_so_far = chosen_by
    timed = time.perf_counter()
    checkpointer.save(step, epoch + 1)
    overhead["checkpoint"] = time.perf_counter() - timed
    reporter.commit()  # the epoch's records, now checkpointed, to the experiment trackers
    # The same figures on every worker; patience needs a validation split (config.validate).
    if run.eval_split == "val" and state.patience.update(chosen_by) and epoch + 1 < run.epochs:
        state.stopped_early_at_epoch = epoch + 1
        log.info("Stopping early after epoch %d: %s on %s%s has not improved by more than %g for %d epochs",
                 epoch + 1, run.cfg.checkpoint.best_metric, run.eval_split, " (EMA weights)" * trainer.has_ema,
                 run.cfg.early_stop.min_delta, run.cfg.early_stop.patience)  # fmt: skip
    if run.eval_split == "val" and state.trial_stop.update(epoch + 1, chosen_by, last=epoch + 1 >= run.epochs):
        state.stopped_early_at_epoch = epoch + 1  # pruned: the search's pruner stops it (trial_stop.py)
    timed = time.perf_counter()  # after the last epoch, _pictures draws them
    if run.rt.is_chief and state.curves.epoch_ended(last=timing["stopping"] and epoch + 1 < run.epochs):
        overhead["curves"] = time.perf_counter() - timed
    if timing["stopping"] and epoch + 1 < run.epochs:  # the epoch's checkpoint is the stop point
        raise Preempted(
            f"stopped by {failures.stop_cause(stop)} after epoch "
            f"{epoch + 1} (step {step} of {run.total_steps}); checkpoint {checkpointer.latest} "
            f"written: run the same command again to continue"
        )
    epoch_log.log_epoch(run, epoch, train_metrics, eval_metrics)
    _log_overhead(epoch + 1, run.epochs, timing["in_steps"], overhead)


def _evaluate_ema(run: Run, step: int, epoch: int) -> dict:
    ema_metrics = run.trainer.evaluate_ema(run.eval_ds)
    run.reporter.log("eval_ema", step, epoch + 1, ema_metrics)
    log.info("epoch %d/%d  EMA weights: %s", epoch + 1, run.epochs,
             epoch_log.evaluation_figures(run.eval_split, ema_metrics))  # fmt: skip
    return ema_metrics


def _final_evaluation(run: Run, state: State) -> dict:
    """The test set (and the EMA weights' on it), and the best evaluation accuracy logged."""
    trainer, info = run.trainer, run.info
    if state.eval_metrics is None:  # the run had already finished: report its final state again
        state.eval_metrics = trainer.evaluate(run.eval_ds)
        state.eval_confusion = trainer.last_confusion
        state.selected_metrics = trainer.evaluate_ema(run.eval_ds) if trainer.has_ema else state.eval_metrics
    split = selection.records_split(run.cfg)
    best = {key: run.reporter.best(split, key) for key in {"accuracy", run.cfg.checkpoint.best_metric}}
    if run.eval_split == "test":
        test_metrics, confusion = state.eval_metrics, state.eval_confusion
    else:
        test_metrics = trainer.evaluate(run.distribute_eval(run.splits.test, info.test_size))
        confusion = trainer.last_confusion
    if run.eval_split == "val":
        run.reporter.log("test", state.step, run.epochs, test_metrics)
    test_ema = trainer.evaluate_ema(run.distribute_eval(run.splits.test, info.test_size)) if trainer.has_ema else None
    return {"test": test_metrics, "test_ema": test_ema, "best": best, "confusion": confusion}


def _log_overhead(epoch: int, epochs: int, in_steps: float, overhead: dict) -> None:
    """An epoch's seconds outside its compiled training calls, by part, when they exceed a second:
    building its input pipeline and the loop's own work (both inside the epoch's img/s), then
    evaluation, checkpoint and curves (after it). Tracing the step falls inside the first call."""
    if sum(overhead.values()) > 1.0:
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in overhead.items())
        log.info("epoch %d/%d  %.1f s outside the %.1f s of training steps: %s", epoch, epochs,
                 sum(overhead.values()), in_steps, parts)  # fmt: skip
