"""The search's study: trial i runs in member i, and a study continues where it stopped.

- job i of the search is trial i of the study (hydra.job.num = the trial's number), so a trial's
  member directory is <sweep dir>/<trial number> and a continued study adds members;
- n_trials is the number of trials the study should hold that ran to their end (complete or
  pruned, as Optuna's MaxTrialsCallback counts): a rerun runs the missing ones (none once it holds
  them);
- a trial that an earlier invocation left RUNNING (preempted, killed) is resumed first, with the
  parameters it was given, in its own member directory (from its checkpoint), and its result told
  to the study; if its member refuses to run (e.g. another live run holds its lock) it stays
  RUNNING and the next rerun tries again;
- a failed trial stays failed (Optuna does not reopen a finished trial) and does not count towards
  n_trials: the rerun runs a new trial in its place; its member keeps its failed.json;
- a member that its pruner stopped marks its trial (trial_pruning.py); the search records it PRUNED,
  and never launches it again;
- a seeded sampler is seeded with seed + the number of trials the study holds: a continued search
  is reproducible and does not draw the same points again.

One search per study at a time: trials of two invocations of one study interleaving are refused
(their members' numbers would not be consecutive).
"""

from __future__ import annotations

import logging

from hydra.core.utils import JobStatus

from resnet_train.tools.trial_pruning import PRUNED_AT

log = logging.getLogger(__name__)
DONE = ("COMPLETE", "PRUNED")  # trials that count towards n_trials


def left_as_it_was(job_return) -> bool:
    """Whether a failed job was refused by a member holding a run, which it left as it was (the
    sweep callback marks the error: sweep.SweepCallback.on_job_end)."""
    return bool(getattr(job_return._return_value, "member_left_as_it_was", False))


class Study:
    """One invocation's work on the study: resume, then new trials in batches of n_jobs."""

    def __init__(self, study, storage, launcher, n_jobs: int, max_failure_rate: float):
        self.study, self.storage, self.launcher = study, storage, launcher
        self.n_jobs, self.max_failure_rate = max(1, int(n_jobs)), max_failure_rate

    def done(self) -> int:
        return sum(t.state.name in DONE for t in self.study.get_trials(deepcopy=False))

    def run(self, n_trials: int, distributions: dict, fixed: dict) -> None:
        self.resume_interrupted()
        while (missing := n_trials - self.done()) > 0:
            trials = [self.study.ask(distributions) for _ in range(min(self.n_jobs, missing))]
            numbers = [t.number for t in trials]
            if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
                for trial in trials:
                    self.study.tell(trial, state=_state("FAIL"))
                raise RuntimeError(
                    f"trials {numbers} of study {self.study.study_name} are not consecutive: another "
                    f"search is adding trials to it; run one search per study at a time"
                )
            overlap = sorted(set(distributions) & set(fixed))
            if overlap:
                raise ValueError(f"{overlap} are both searched and fixed")
            for trial in trials:
                for key, value in fixed.items():
                    trial.set_user_attr(key, value)
            overrides = [_overrides(trial.params, fixed) for trial in trials]
            returns = self.launcher.launch(overrides, initial_job_idx=numbers[0])
            failures = [ret for number, ret in zip(numbers, returns) if not self.tell(number, ret)]
            self.check_failures(failures, len(returns))

    def resume_interrupted(self) -> None:
        interrupted = self.study.get_trials(deepcopy=False, states=(_state("RUNNING"),))
        failures = []
        for trial in interrupted:
            # As it was launched: the sampled parameters, then the command's fixed ones.
            overrides = _overrides(trial.params, trial.user_attrs)
            log.info(f"Resuming trial {trial.number}, left running by an earlier search: {' '.join(overrides)}")
            (ret,) = self.launcher.launch([overrides], initial_job_idx=trial.number)
            if ret.status != JobStatus.COMPLETED and left_as_it_was(ret):
                log.warning(f"Trial {trial.number} stays running: its member was not run ({ret._return_value})")
            elif not self.tell(trial.number, ret):
                failures.append(ret)
        self.check_failures(failures, len(interrupted))

    def tell(self, number: int, ret) -> bool:
        """The member's outcome to its trial: PRUNED (the member said so in the storage), COMPLETE
        with the value it returned, or FAIL. False when the trial failed."""
        if ret.status == JobStatus.COMPLETED:
            pruned = self.pruned_at(number)
            if pruned is not None:
                log.info(f"Trial {number} was pruned after epoch {pruned}")
                self.study.tell(number, state=_state("PRUNED"))
                return True
            value = ret.return_value
            try:
                values = [float(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
            except (TypeError, ValueError):
                log.warning(f"Trial {number} returned {value!r}, not a number: failed")
            else:
                self.study.tell(number, values)
                return True
        self.study.tell(number, state=_state("FAIL"))
        return False

    def pruned_at(self, number: int):
        if self.storage is None:
            return None
        study_id = self.storage.get_study_id_from_name(self.study.study_name)
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(study_id, number)
        return self.storage.get_trial(trial_id).system_attrs.get(PRUNED_AT)

    def check_failures(self, failures: list, launched: int) -> None:
        if failures and len(failures) / launched > self.max_failure_rate:
            log.error(f"{len(failures)} of {launched} trials failed (max_failure_rate={self.max_failure_rate})")
            for ret in failures:
                ret.return_value  # raises the member's error, as Hydra's sweepers do


def _overrides(params: dict, fixed: dict) -> tuple:
    return tuple(f"{key}={value}" for key, value in {**params, **fixed}.items())


def _state(name: str):
    from optuna.trial import TrialState

    return TrialState[name]
