"""results.json: what a run reached (test figures, best, early stop) and what it was."""

from __future__ import annotations

import logging
import time

from resnet_train.runtime import device_pool
from resnet_train.training import run_dir, selection

log = logging.getLogger(__name__)


def results(run, state, final: dict, started: float) -> dict:
    """results.json: what the run reached, and what it was."""
    eval_metrics = state.eval_metrics
    selected = state.selected_metrics or eval_metrics  # the last epoch's figures that choose (selection.py)
    results = {
        "test": final["test"],
        "eval_split": run.eval_split,
        "eval": eval_metrics,
        # Over the epochs: with a validation split the figure best/ was chosen by (the EMA weights'
        # under ema.decay); on the test set only a monitoring figure, biased upwards by the choice of
        # epoch, and named so.
        ("best_val_accuracy" if run.eval_split == "val" else "best_test_accuracy_optimistic"): max(
            final["best"]["accuracy"] or 0.0, selected["accuracy"]
        ),
        "best_metric": run.cfg.checkpoint.best_metric,  # what chose best/ (with a validation split)
        "chosen_on": selection.records_split(run.cfg),  # eval_ema: best/ and early stop used the EMA weights' figures
        "stopped_early_at_epoch": state.stopped_early_at_epoch,  # early_stop.patience, else null
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
    if device_pool.held():  # runtime.devices=pool: the device this run held, and how long it waited
        results["device_pool"] = device_pool.held()
    if state.trial_stop is not None and state.trial_stop.pruned_at_epoch:  # hydra.sweeper.pruner stopped it
        results["pruned_at_epoch"] = state.trial_stop.pruned_at_epoch
    if run.trainer.pruner is not None:  # the masks' share of zeros in the pruned kernels
        results["sparsity"] = run.trainer.pruner.sparsity()
    if final["test_ema"] is not None:
        results["test_ema"] = final["test_ema"]
    teacher = run.trainer.distill.record if run.trainer.distill is not None else None
    if teacher is not None:  # distill.teacher: its identity, and test figures measured when the run started
        results["teacher"] = teacher
        log.info("Test accuracy: student %.4f, teacher %.4f (distill.teacher=%s)", final["test"]["accuracy"],
                 teacher["test"]["accuracy"], teacher["source"])  # fmt: skip
    metric = run.cfg.checkpoint.best_metric
    if metric != "accuracy" and run.eval_split == "val":
        results[selection.objective_key(run.cfg)] = max(final["best"][metric] or 0.0, selected[metric])
    return results
