"""early_stop.patience: stop when the figure that chooses best/ (selection.py: checkpoint.best_metric
on the validation split, the EMA weights' under ema.decay) has not improved by more than
early_stop.min_delta for `patience` epochs. Every worker evaluates the same all-reduced figures, so
every worker takes the same decision; after a resume it is rebuilt from metrics.jsonl up to the
restored step, as best/ is."""

from __future__ import annotations

from dataclasses import dataclass

from resnet_train.report.metrics import read_metrics
from resnet_train.training import selection


@dataclass
class Patience:
    patience: int | None  # None: never stop early
    min_delta: float
    best: float | None = None
    stale: int = 0  # epochs since the last improvement

    def update(self, value: float) -> bool:
        """Records an epoch's figure; True when the run should stop after this epoch."""
        if self.best is None or value > self.best + self.min_delta:
            self.best, self.stale = value, 0
        else:
            self.stale += 1
        return self.exhausted()

    def exhausted(self) -> bool:
        return self.patience is not None and self.stale >= self.patience


def restored(cfg, workdir, up_to_step: int) -> Patience:
    """The patience state after the epochs logged up to `up_to_step` (a resumed run's)."""
    state = Patience(cfg.early_stop.patience, cfg.early_stop.min_delta)
    key, split = cfg.checkpoint.best_metric, selection.records_split(cfg)
    records = [r for r in read_metrics(workdir) if r.get("split") == split and key in r]
    for record in sorted(records, key=lambda r: r.get("step", 0)):
        if record.get("step", 0) <= up_to_step:
            state.update(record[key])
    return state
