"""A search member's own Optuna trial, for hydra.sweeper.pruner: each epoch the member reports the
figure that chooses (checkpoint.best_metric on the validation split) to its trial and asks the
study's pruner whether to stop.

The member finds its trial from what Hydra gives every job, whichever launcher ran it: the
sweeper's storage and study name (hydra.sweeper.*) and its trial number (hydra.job.num: member i
is trial i, hydra_plugins/resnet_train_optuna/study.py). The pruner is built here, in the member,
from hydra.sweeper.pruner / pruner_kwargs. A pruned member marks its trial (system attribute
PRUNED_AT = the epoch) and stops like an early stop; the search then records the trial PRUNED.

Like the experiment trackers, a study that cannot be reached is dropped (one warning), never the run.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)
PRUNED_AT = "resnet_train:pruned_at_epoch"
SWEEPER = "hydra_plugins.resnet_train_optuna.sweeper.OptunaSweeper"
PRUNER_CLASSES = {
    "median": "MedianPruner",
    "hyperband": "HyperbandPruner",
    "successive_halving": "SuccessiveHalvingPruner",
}


def make_pruner(name: str, kwargs=None):
    import optuna

    if name in (None, "none"):
        return optuna.pruners.NopPruner()
    return getattr(optuna.pruners, PRUNER_CLASSES[name])(**dict(kwargs or {}))


def from_hydra(hydra_cfg):
    """The member's trial when its search prunes (our sweeper, a pruner, a storage), else None."""
    from omegaconf import OmegaConf

    sweeper = hydra_cfg.get("sweeper") or {}
    if sweeper.get("_target_") != SWEEPER or str(sweeper.get("pruner", "none")) == "none":
        return None
    storage = sweeper.get("storage")
    if not storage or sweeper.get("study_name") is None or hydra_cfg.job.get("num") is None:
        return None
    if "://" not in str(storage) and not Path(storage).is_absolute():  # a journal file, from the launch's cwd
        storage = str(Path(hydra_cfg.runtime.cwd) / storage)
    kwargs = OmegaConf.to_container(sweeper.get("pruner_kwargs") or {}, resolve=True)
    return MemberTrial(str(storage), sweeper.study_name, int(hydra_cfg.job.num), str(sweeper.pruner), kwargs)


class MemberTrial:
    def __init__(self, storage: str, study_name: str, number: int, pruner: str, pruner_kwargs: dict):
        self.spec, self.study_name, self.number = storage, study_name, number
        self.pruner, self.pruner_kwargs = pruner, pruner_kwargs
        self._trial = self._storage = self._trial_id = None
        self.dropped = False

    def _open(self) -> bool:
        if self._trial is None and not self.dropped:
            try:
                import optuna

                from resnet_train.tools.optuna_storage import open_storage

                self._storage = open_storage(self.spec)
                study = optuna.load_study(
                    study_name=self.study_name,
                    storage=self._storage,
                    pruner=make_pruner(self.pruner, self.pruner_kwargs),
                )
                study_id = self._storage.get_study_id_from_name(self.study_name)
                self._trial_id = self._storage.get_trial_id_from_study_id_trial_number(study_id, self.number)
                self._trial = optuna.trial.Trial(study, self._trial_id)
            except Exception as e:  # noqa: BLE001 -- pruning is dropped, never the run
                self._drop(e)
        return self._trial is not None

    def _drop(self, error: BaseException) -> None:
        log.warning("Trial %d of study %s: not reporting to it any more (%s: %s)", self.number, self.study_name,
                    type(error).__name__, error)  # fmt: skip
        self.dropped, self._trial = True, None

    def pruned_at(self) -> int | None:
        """The epoch after which this trial was pruned, when an earlier attempt marked it."""
        if not self._open():
            return None
        value = self._storage.get_trial(self._trial_id).system_attrs.get(PRUNED_AT)
        return None if value is None else int(value)

    def report(self, epoch: int, value: float, last: bool) -> bool:
        """Reports the epoch's figure; True when the pruner stops the trial here (marked in the study)."""
        if not self._open():
            return False
        try:
            self._trial.report(float(value), epoch)
            if last or not self._trial.should_prune():
                return False
            self._storage.set_trial_system_attr(self._trial_id, PRUNED_AT, int(epoch))
        except Exception as e:  # noqa: BLE001 -- e.g. the trial is finished: the run goes on
            self._drop(e)
            return False
        return True
