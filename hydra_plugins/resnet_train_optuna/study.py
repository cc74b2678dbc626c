"""The search's study: trial i runs in member i, a study continues where it stopped, and several
invocations of one search (processes, machines sharing the storage) add trials to it at once.

- job i of the search is trial i of the study (hydra.job.num = the trial's number), so a trial's
  member directory is <sweep dir>/<trial number> and a continued study adds members;
- n_trials caps the trials the study holds that ran to their end or are running (complete,
  pruned, running; as Optuna's MaxTrialsCallback counts, running ones included): each invocation
  asks for the missing ones, n_jobs at a time, and ends when none is missing; two invocations
  together run exactly n_trials, each trial once (claims.py: the count and the asks under one lock,
  each trial's owner recorded);
- a trial left RUNNING by an invocation that is gone (preempted, killed: claims.Claims.orphaned)
  is resumed first, with the parameters it was given, in its own member directory (from its
  checkpoint), and its result told to the study; a trial whose invocation lives is its own. If its
  member refuses to run (e.g. another live run holds its lock) it stays RUNNING and the next rerun
  tries again;
- a failed trial stays failed (Optuna does not reopen a finished trial) and does not count towards
  n_trials: a new trial runs in its place; its member keeps its failed.json;
- a member that its pruner stopped marks its trial (trial_pruning.py); the search records it PRUNED,
  and never launches it again;
- a seeded sampler is seeded with seed + the number of trials the study holds (`reseed`): a
  continued search is reproducible and does not draw the same points again, nor do two invocations
  asking in turn.
"""

from __future__ import annotations

import logging

from hydra.core.utils import JobStatus

from hydra_plugins.resnet_train_optuna.claims import Claims
from resnet_train.tools.trial_pruning import PRUNED_AT

log = logging.getLogger(__name__)
DONE = ("COMPLETE", "PRUNED")  # trials that ran to their end


def left_as_it_was(job_return) -> bool:
    """Whether a failed job was refused by a member holding a run, which it left as it was (the
    sweep callback marks the error: sweep.SweepCallback.on_job_end)."""
    return bool(getattr(job_return._return_value, "member_left_as_it_was", False))


class Study:
    """One invocation's work on the study: resume the orphaned trials, then new trials in batches of n_jobs."""

    def __init__(self, study, storage, launcher, n_jobs: int, max_failure_rate: float, claims: Claims | None = None,
                 reseed=None):  # fmt: skip
        self.study, self.storage, self.launcher = study, storage, launcher
        self.n_jobs, self.max_failure_rate = max(1, int(n_jobs)), max_failure_rate
        self.claims = claims or Claims(storage, None)
        self.reseed = reseed  # held -> a sampler seeded for it, or None

    def run(self, n_trials: int, distributions: dict, fixed: dict) -> None:
        overlap = sorted(set(distributions) & set(fixed))
        if overlap:
            raise ValueError(f"{overlap} are both searched and fixed")
        with self.claims.beating():
            while True:
                self.resume_interrupted()
                trials = self.ask(n_trials, distributions, fixed)
                if not trials:
                    return
                returns = []
                for run in _consecutive(trials):  # one launch per run of numbers (one, under the lock)
                    overrides = [_overrides(trial.params, fixed) for trial in run]
                    returns += self.launcher.launch(overrides, initial_job_idx=run[0].number)
                numbers = [t.number for t in trials]
                failures = [ret for number, ret in zip(numbers, returns) if not self.tell(number, ret)]
                self.check_failures(failures, len(returns))

    def ask(self, n_trials: int, distributions: dict, fixed: dict) -> list:
        """Up to n_jobs new trials, claimed, or none when the study holds n_trials. The command's
        fixed settings are recorded with each before the lock is let go: whoever resumes it needs them."""
        with self.claims.locked():
            held = self.study.get_trials(deepcopy=False)
            missing = n_trials - sum(t.state.name in DONE + ("RUNNING", "WAITING") for t in held)
            if missing <= 0:
                return []
            if self.reseed is not None:
                self.study.sampler = self.reseed(len(held))
            trials = [self.study.ask(distributions) for _ in range(min(self.n_jobs, missing))]
            for trial in trials:
                for key, value in fixed.items():
                    trial.set_user_attr(key, value)
                self.claims.claim(trial)
        if self.storage is None:
            return trials
        held = self.study.get_trials(deepcopy=False)
        surplus = [t for t in trials if self.claims.surplus(t, held, n_trials)]
        for trial in surplus:
            self.study.tell(trial, state=_state("FAIL"))
        return [t for t in trials if t not in surplus]

    def resume_interrupted(self) -> None:
        with self.claims.locked():
            running = self.study.get_trials(deepcopy=False, states=(_state("RUNNING"),))
            interrupted = [trial for trial in running if self.claims.orphaned(trial)]
            for trial in interrupted:
                self.claims.claim(trial)
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
        self.claims.release(number)
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


def _consecutive(trials: list) -> list[list]:
    """The trials in runs of consecutive numbers (a launch numbers its jobs from its first)."""
    runs: list[list] = []
    for trial in trials:
        if runs and trial.number == runs[-1][-1].number + 1:
            runs[-1].append(trial)
        else:
            runs.append([trial])
    return runs


def _overrides(params: dict, fixed: dict) -> tuple:
    return tuple(f"{key}={value}" for key, value in {**params, **fixed}.items())


def _state(name: str):
    from optuna.trial import TrialState

    return TrialState[name]
