"""Progress inside an epoch at the log points (log.every_steps steps or log.every_seconds seconds,
whichever comes first): per-step TensorBoard scalars (batch/loss, batch/lr, batch/images_per_sec)
and, when stderr is not a terminal (SLURM logs, nohup, CI: no tqdm bar), one log line with the
step, loss, accuracy, lr, images/s and the ETA of the epoch and of the run. The trainer's sums
are read from the device only at those points, not after every step."""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)


def duration(seconds: float) -> str:
    """h:mm:ss or m:ss; "?" while there is no pace to go by yet (NaN)."""
    if seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class StepLog:
    def __init__(self, every_steps, every_seconds, reporter, total_steps: int, step_batch: int, lines: bool):
        self.every_steps, self.every_seconds = every_steps, every_seconds
        self.reporter, self.total_steps, self.step_batch, self.lines = reporter, total_steps, step_batch, lines

    def start_epoch(self, epoch: int, epochs: int, step: int, end: int, trainer) -> None:
        self.epoch, self.epochs, self.end = epoch, epochs, end
        self.epoch_step, self.epoch_time = step, None  # timed from the first call's end (no tracing)
        self._mark(step, trainer)

    def _mark(self, step: int, trainer) -> None:
        self.last_step, self.last_time = step, time.perf_counter()
        self.last_sums = {k: float(v.numpy()) for k, v in trainer.sums.items()}

    def due(self, step: int) -> bool:
        if self.every_steps is not None and step - self.last_step >= self.every_steps:
            return True
        return self.every_seconds is not None and time.perf_counter() - self.last_time >= self.every_seconds

    def eta(self, step: int) -> tuple[float, float]:
        """Seconds left in the epoch and in the run, at this epoch's pace so far (evaluation not counted)."""
        if self.epoch_time is None or step <= self.epoch_step:
            return float("nan"), float("nan")
        per_step = (time.perf_counter() - self.epoch_time) / (step - self.epoch_step)
        return (self.end - step) * per_step, (self.total_steps - step) * per_step

    def after_call(self, step: int, trainer) -> None:
        if self.epoch_time is None:  # the first call of the epoch traced or warmed up: time from here
            self.epoch_step, self.epoch_time = step, time.perf_counter()
        if not self.due(step):
            return
        sums = {k: float(v.numpy()) for k, v in trainer.sums.items()}
        count = sums["count"] - self.last_sums["count"]
        rate = (step - self.last_step) * self.step_batch / max(time.perf_counter() - self.last_time, 1e-9)
        loss = (sums["loss"] - self.last_sums["loss"]) / count if count else float("nan")
        lr = trainer.learning_rate()
        self.reporter.scalars("train", step, {"batch/loss": loss, "batch/lr": lr, "batch/images_per_sec": rate})
        if self.lines:
            epoch_left, run_left = self.eta(step)
            accuracy = sums["correct"] / sums["count"] if sums["count"] else float("nan")
            log.info("epoch %d/%d  step %d/%d  loss %.4f  acc %.4f  lr %.4g  %.0f img/s  ETA epoch %s, run %s",
                     self.epoch + 1, self.epochs, step, self.total_steps, loss, accuracy, lr, rate,
                     duration(epoch_left), duration(run_left))  # fmt: skip
        self._mark(step, trainer)
