"""The errors a run stops with, each saying what happened, what was kept and what to do next."""

from __future__ import annotations

import errno
from pathlib import Path

from tensorflow import errors as tf_errors

from resnet_train.data import faults
from resnet_train.errors import Preempted, RunDirError, TrainingDiverged, WorkerLost, first_line
from resnet_train.training.checkpoint import latest_in

# What a collective raises when a peer process is gone (it exited after its own error, or died).
LOST_PEER_ERRORS = (
    tf_errors.UnavailableError,
    tf_errors.CancelledError,
    tf_errors.DeadlineExceededError,
    tf_errors.AbortedError,
)


# What the input pipeline raises for a file or record that fails mid-run (a missing file, an image
# that does not decode), among errors of other causes: data_failed tells them apart.
DATA_ERRORS = faults.INPUT_ERRORS


def data_failed(error: BaseException, splits, step: int, checkpointer) -> BaseException:
    """One line naming the file (and record) of the data that failed mid-run, the checkpoints kept
    (data/faults.py); any other error as it was."""
    return faults.explain(error, splits, step, checkpointer.latest) or error


def lost_peer(e: BaseException, workdir: Path) -> WorkerLost:
    first = first_line(e, 160)
    return WorkerLost(
        f"lost contact with another worker ({type(e).__name__}: {first}): it stopped (its "
        f"log in {workdir} says why) or is unreachable; rerun every worker's command to "
        f"resume from {latest_in(workdir / 'checkpoints') or 'the start'}"
    )


def write_failure(e: OSError, workdir: Path) -> RunDirError | None:
    """The error for a write into the run directory that failed (a full disk, a vanished folder);
    None when the failed write was not the run's own (the caller re-raises it)."""
    ours = (
        Path(e.filename).resolve().is_relative_to(workdir.resolve())
        if e.filename
        else e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO)
    )
    if not ours:
        return None
    return RunDirError(
        f"could not write {e.filename or 'to ' + str(workdir)} ({e.strerror}): free disk "
        f"space or fix the directory, then rerun the same command; it resumes from "
        f"{latest_in(workdir / 'checkpoints') or 'the start'}"
    )


def diverged(step: int, nonfinite: int, trainer, checkpointer, when: str = "at") -> TrainingDiverged:
    """The error for a non-finite loss: the step, the last good checkpoint (untouched), what to try."""
    good = checkpointer.latest
    where = f"the last good checkpoint {good} is kept" if good else "no checkpoint was written yet"
    what = (
        f", {nonfinite} steps in a row (more than runtime.max_nonfinite_steps={trainer.max_nonfinite_steps})"
        if trainer.max_nonfinite_steps
        else ""
    )
    return TrainingDiverged(
        f"the loss became NaN/Inf {when} step {step}{what}, lr {trainer.learning_rate():.4g}: training stopped "
        f"and {where}; lower optimizer.lr, add schedule.warmup_epochs or optimizer.clip_norm, or check the data"
    )


def stop_cause(stop) -> str:
    return stop.signal_name or stop.reason or "a signal on another worker"


def lock_lost(lock, step: int, epoch: int, workdir: Path, checkpointer) -> RunDirError:
    """Another process took the run lock over: nothing more is written where it now writes (no
    checkpoint through the index, no metrics); this run's state goes to a folder of its own."""
    aside = workdir / "lock_lost" / f"{lock.record['host']}-{lock.record['pid']}" / f"ckpt-{step}"
    try:
        saved = f"this run's state at step {step} is in {checkpointer.save_aside(aside, step, epoch)}"
    except Exception as e:  # noqa: BLE001 -- the stop matters more than the copy
        saved = f"its state at step {step} could not be saved ({type(e).__name__}: {e})"
    return RunDirError(
        f"{lock.lost} (at step {step}); nothing more was written into its checkpoints or metrics: "
        f"{saved} (init_from= it to go on in a new run directory)"
    )


def preempted(stop, step: int, total_steps: int, epoch: int, checkpointer) -> Preempted:
    """Saves the checkpoint of the current step (within one compiled call of the signal)."""
    if checkpointer.latest is None or not checkpointer.latest.endswith(f"-{step}"):
        checkpointer.save(step, epoch)
    return Preempted(
        f"stopped by {stop_cause(stop)} at step {step} of "
        f"{total_steps}; checkpoint {checkpointer.latest} written: run the same command "
        f"again to continue from this step"
    )
