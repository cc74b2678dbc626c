"""The search of `hparams_search=optuna`: Hydra's Optuna sweeper, made to continue its study.

Why: the plugin numbers a search's jobs from 0 on every invocation and runs n_trials more trials
each time, while members live in `hydra.sweep.subdir=${hydra.job.num}`. So the first trial of a
continued study landed in member 0, a finished run of other parameters (refused; with the
default max_failure_rate=0 the search aborted), and a seeded sampler, created afresh, drew its
first random points again. What ContinuedStudy changes, and nothing else:

- job i of the search is trial i of the study (hydra.job.num = the trial's number), so a trial's
  member directory is <sweep dir>/<trial number> and a continued study adds members;
- n_trials is the number of complete trials the study should hold: a rerun runs the missing ones
  (none once it holds them);
- a trial that an earlier invocation left RUNNING (preempted, killed) is resumed first, with the
  parameters it was given, in its own member directory (from its checkpoint), and its result told
  to the study; if its member refuses to run (e.g. another live run holds its lock) it stays RUNNING
  and the next rerun tries again;
- a failed trial stays failed (Optuna does not reopen a finished trial) and does not count towards
  n_trials: the rerun runs a new trial in its place; its member keeps its failed.json;
- a seeded sampler is seeded with seed + the number of trials the study holds: a continued search
  is reproducible and does not draw the same points again.

One search per study at a time: two invocations adding trials to one study together are refused
(their trials' numbers would not be consecutive).

Why not a subclass named by `hydra.sweeper._target_`: Hydra instantiates sweepers only from the
plugins it found in the `hydra_plugins` package. The plugin's OptunaSweeper builds its
implementation from `_impl.OptunaSweeperImpl` when Hydra instantiates it, so `install()`, called
by SweepCallback.on_multirun_start just before that, sets ContinuedStudy there (in this process).
"""

from __future__ import annotations

import functools
import logging

import optuna
from hydra.core.utils import JobStatus
from hydra_plugins.hydra_optuna_sweeper import _impl
from omegaconf import OmegaConf
from optuna.trial import TrialState

log = logging.getLogger(__name__)


def left_as_it_was(job_return) -> bool:
    """Whether a failed job was refused by a member holding a run, which it left as it was (the
    sweep callback marks the error: sweep.SweepCallback.on_job_start)."""
    return bool(getattr(job_return._return_value, "member_left_as_it_was", False))


class ContinuedStudy(_impl.OptunaSweeperImpl):
    def sweep(self, arguments):
        if self.storage is None or self.study_name is None:  # a new study on every invocation
            return super().sweep(arguments)
        try:
            study = optuna.load_study(study_name=self.study_name, storage=self.storage)
        except KeyError:  # no such study yet: the plugin creates it
            return super().sweep(arguments)
        self._resume_interrupted(study)
        held = study.get_trials(deepcopy=False)
        complete = sum(t.state == TrialState.COMPLETE for t in held)
        if held:
            log.info(
                f"Study {self.study_name} holds {len(held)} trials, {complete} complete: "
                f"{max(0, self.n_trials - complete)} more for n_trials={self.n_trials}"
            )
            self._reseed(len(held))
        self.n_trials = max(0, self.n_trials - complete)
        return super().sweep(arguments)

    def _configure_trials(self, trials, *args, **kwargs):
        numbers = [t.number for t in trials]
        if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
            raise RuntimeError(
                f"trials {numbers} of study {self.study_name} are not consecutive: another "
                f"search is adding trials to it; run one search per study at a time"
            )
        self.job_idx = numbers[0]  # the plugin launches its batch as jobs self.job_idx, +1, ...
        return super()._configure_trials(trials, *args, **kwargs)

    def _resume_interrupted(self, study) -> None:
        interrupted = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        failures = []
        for trial in interrupted:
            # As the plugin launched it: the sampled parameters, then the command's fixed ones.
            overrides = tuple(f"{k}={v}" for k, v in {**trial.params, **trial.user_attrs}.items())
            log.info(f"Resuming trial {trial.number}, left running by an earlier search: {' '.join(overrides)}")
            (ret,) = self.launcher.launch([overrides], initial_job_idx=trial.number)
            if ret.status == JobStatus.COMPLETED:
                value = ret.return_value
                study.tell(trial.number, [float(v) for v in (value if isinstance(value, (list, tuple)) else [value])])
            elif left_as_it_was(ret):
                log.warning(f"Trial {trial.number} stays running: its member was not run ({ret._return_value})")
            else:
                study.tell(trial.number, state=TrialState.FAIL)
                failures.append(ret)
        if failures and len(failures) / len(interrupted) > self.max_failure_rate:
            failures[0].return_value  # raises the member's error, as the plugin does

    def _reseed(self, trials: int) -> None:
        seed = OmegaConf.select(self.config, "hydra.sweeper.sampler.seed")
        if seed is not None and not isinstance(self.sampler, functools.partial):  # GridSampler: no randomness
            # The class the plugin already built from the config, with its arguments: no second
            # config-driven import (README, Security).
            arguments = OmegaConf.to_container(self.config.hydra.sweeper.sampler, resolve=True)
            arguments = {k: v for k, v in arguments.items() if not k.startswith("_")}
            self.sampler = type(self.sampler)(**{**arguments, "seed": int(seed) + trials})
            log.info(f"Sampler seeded with {int(seed) + trials} (its seed + the trials the study holds)")


def install() -> None:
    _impl.OptunaSweeperImpl = ContinuedStudy
