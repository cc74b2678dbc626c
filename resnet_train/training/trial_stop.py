"""hydra.sweeper.pruner: a search member reports the figure that chooses (selection.py) to its
Optuna trial at every epoch's end and stops when the study's pruner says so, as an early stop does
(the epoch checkpointed, results.json's pruned_at_epoch). The trial is handed in by the CLI
(tools/trial_pruning.MemberTrial: report(epoch, value, last) -> bool, pruned_at()); without one
nothing is reported. A resumed run that was pruned before its results were written stops again."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class TrialStop:
    def __init__(self, trial=None, epochs_done: int = 0):
        self.trial = trial
        self.pruned_at_epoch = None
        if trial is not None and epochs_done:  # marked by an attempt killed before its results
            at = trial.pruned_at()
            self.pruned_at_epoch = at if at is not None and at <= epochs_done else None

    def update(self, epoch: int, value: float, last: bool) -> bool:
        """Reports the epoch's figure; True when the run should stop after this epoch."""
        if self.trial is None or not self.trial.report(epoch, value, last):
            return False
        self.pruned_at_epoch = epoch
        log.info("Pruned after epoch %d: the search's pruner stops trial %d here", epoch, self.trial.number)
        return True
