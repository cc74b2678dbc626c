"""The Hydra sweeper plugin: opens the study (optuna_storage.py), builds the sampler, and hands the
trials to study.Study, which numbers members by trial and continues a study (its docstring).

Sampler classes come from optuna.samplers only, built here from hydra.sweeper.sampler's settings:
no config-named import (README, Security). A refusal (an old study, a bad sampler or pruner) is one
line and exit 2, before any member runs."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from hydra.plugins.sweeper import Sweeper
from omegaconf import OmegaConf

from hydra_plugins.resnet_train_optuna.config import PRUNERS

log = logging.getLogger(__name__)
RESEEDED = ("TPESampler", "RandomSampler")


class OptunaSweeper(Sweeper):
    def __init__(self, sampler, direction, storage, study_name, n_trials, n_jobs, max_failure_rate, params,
                 pruner="none", pruner_kwargs=None):  # fmt: skip
        self.sampler_settings = OmegaConf.to_container(sampler, resolve=True) if sampler is not None else {}
        directions = OmegaConf.to_container(direction) if OmegaConf.is_config(direction) else direction
        self.directions = [str(d) for d in (directions if isinstance(directions, list) else [directions])]
        self.storage_spec, self.study_name = storage, study_name
        self.n_trials, self.n_jobs, self.max_failure_rate = n_trials, n_jobs, max_failure_rate
        self.params = params
        self.pruner = str(pruner)
        self.config = self.launcher = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        from hydra.core.plugins import Plugins

        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )
        self.sweep_dir = Path(config.hydra.sweep.dir)

    def sweep(self, arguments: list[str]) -> None:
        from resnet_train.errors import UserError

        try:
            study, storage, distributions, fixed = self._open(arguments)
        except UserError as e:  # every member would fail alike: one line for the search
            print(f"resnet-train: error: {e}", file=sys.stderr)
            sys.exit(e.exit_code)
        from hydra_plugins.resnet_train_optuna.claims import Claims, lock_path
        from hydra_plugins.resnet_train_optuna.study import Study

        n_trials = self.n_trials
        if self.sampler_settings.get("_target_") == "optuna.samplers.GridSampler":
            n_trials = min(n_trials, _grid_size(distributions))
        claims = Claims(storage, lock_path(self.storage_spec, self.sweep_dir))
        reseed = (lambda held: self._sampler(distributions, held)) if self._reseeded() else None
        Study(study, storage, self.launcher, self.n_jobs, self.max_failure_rate, claims, reseed).run(
            n_trials, distributions, fixed
        )
        self._save_results(study)

    def _open(self, arguments):
        import optuna

        from hydra_plugins.resnet_train_optuna.space import search_space
        from resnet_train.errors import UserError
        from resnet_train.tools import optuna_storage

        if self.pruner not in PRUNERS:
            raise UserError(f"hydra.sweeper.pruner={self.pruner}: choose one of {', '.join(PRUNERS)}")
        if self.pruner != "none" and not self.storage_spec:
            raise UserError("hydra.sweeper.pruner needs a storage the members can reach (hydra.sweeper.storage)")
        try:
            distributions, fixed = search_space(self.params, arguments)
        except ValueError as e:
            raise UserError(f"hydra.sweeper.params: {e}") from None
        storage = optuna_storage.open_storage(self.storage_spec, self.sweep_dir)
        held = _held(storage, self.study_name)
        sampler = self._sampler(distributions, held)
        study = optuna.create_study(
            study_name=self.study_name, storage=storage, sampler=sampler, directions=self.directions,
            load_if_exists=True,
        )  # fmt: skip
        log.info(
            f"Study {study.study_name} in {self.storage_spec}: {held} trials held, sampler {type(sampler).__name__}"
        )
        if self.storage_spec:  # where the study is, for resnet-sweep-report
            from resnet_train.tools.sweep_study import STUDY_FILE, where_saved

            self.sweep_dir.mkdir(parents=True, exist_ok=True)
            where = {"storage": where_saved(self.sweep_dir, self.storage_spec), "study_name": study.study_name}
            OmegaConf.save(OmegaConf.create(where), self.sweep_dir / STUDY_FILE)
        return study, storage, distributions, fixed

    def _reseeded(self) -> bool:
        """Whether the sampler is built again for each batch, seeded with seed + the trials held then:
        a seeded TPE or random sampler, whose state is its random stream (the others keep theirs)."""
        target = str(self.sampler_settings.get("_target_", "optuna.samplers.TPESampler"))
        return self.sampler_settings.get("seed") is not None and target.rpartition(".")[2] in RESEEDED

    def _sampler(self, distributions: dict, held: int):
        """The configured optuna.samplers class; a seeded one seeded with seed + trials held."""
        import optuna

        from hydra_plugins.resnet_train_optuna.space import grid
        from resnet_train.errors import UserError

        settings = {k: v for k, v in self.sampler_settings.items() if not k.startswith("_")}
        target = str(self.sampler_settings.get("_target_", "optuna.samplers.TPESampler"))
        module, _, name = target.rpartition(".")
        cls = getattr(optuna.samplers, name, None) if module == "optuna.samplers" else None
        if not isinstance(cls, type) or not issubclass(cls, optuna.samplers.BaseSampler):
            raise UserError(f"hydra.sweeper.sampler: {target} is not one of optuna.samplers' samplers")
        if cls is optuna.samplers.GridSampler:
            try:
                return cls(grid(distributions), **settings)
            except ValueError as e:
                raise UserError(f"hydra.sweeper.sampler: {e}") from None
        if settings.get("seed") is not None and held:
            settings["seed"] = int(settings["seed"]) + held
            log.debug(f"Sampler seeded with {settings['seed']} (its seed + the trials the study holds)")
        return cls(**settings)

    def _save_results(self, study) -> None:
        """optimization_results.yaml, as hydra-optuna-sweeper wrote it."""
        try:
            if len(self.directions) == 1:
                best = study.best_trial
                results = {"name": "optuna", "best_params": best.params, "best_value": best.value}
            else:
                results = {"name": "optuna", "solutions": [{"params": t.params, "values": t.values}
                                                           for t in study.best_trials]}  # fmt: skip
        except ValueError:  # no complete trial
            return
        from resnet_train.report.metrics import write_atomic

        # Whole or not at all: two invocations of one search may end at the same time.
        write_atomic(self.sweep_dir / "optimization_results.yaml", OmegaConf.to_yaml(OmegaConf.create(results)))


def _held(storage, study_name) -> int:
    """How many trials the study already holds (0 for a new one)."""
    if storage is None or study_name is None:
        return 0
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return 0
    return len(storage.get_all_trials(study_id, deepcopy=False))


def _grid_size(distributions: dict) -> int:
    from hydra_plugins.resnet_train_optuna.space import grid

    size = 1
    for values in grid(distributions).values():
        size *= len(values)
    return size
