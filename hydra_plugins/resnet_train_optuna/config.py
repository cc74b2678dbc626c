"""hydra/sweeper=optuna and its samplers, in Hydra's ConfigStore: the keys of hydra-optuna-sweeper
(sampler, direction, study_name, storage, n_trials, n_jobs, max_failure_rate, params) and pruner.
The README's search section and configs/hparams_search/optuna.yaml say what each does."""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

TARGET = "hydra_plugins.resnet_train_optuna.sweeper.OptunaSweeper"
PRUNERS = ("none", "median", "hyperband", "successive_halving")


@dataclass
class OptunaSweeperConf:
    _target_: str = TARGET
    # The sampler's settings reach the sweeper as written (it builds the sampler: optuna.samplers only).
    _recursive_: bool = False
    defaults: List[Any] = field(default_factory=lambda: [{"sampler": "tpe"}])
    sampler: Any = MISSING
    direction: Any = "minimize"  # or maximize; a list of them for several objectives
    storage: Optional[str] = None  # a journal file path or a database URL (resnet_train/tools/optuna_storage.py)
    study_name: Optional[str] = None
    n_trials: int = 20  # trials the study should hold, complete, pruned or running (all invocations together)
    n_jobs: int = 1  # trials launched together (at the same time under joblib or submitit)
    max_failure_rate: float = 0.0
    params: Optional[Dict[str, str]] = None
    pruner: str = "none"  # one of PRUNERS
    pruner_kwargs: Any = None  # the pruner class's own arguments, a dict (Any: a dict given replaces it whole)


SAMPLERS = {
    "tpe": "TPESampler",
    "random": "RandomSampler",
    "grid": "GridSampler",
    "cmaes": "CmaEsSampler",
    "nsgaii": "NSGAIISampler",
    "qmc": "QMCSampler",
}

store = ConfigStore.instance()
store.store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="resnet_train")
for name, cls in SAMPLERS.items():
    store.store(
        group="hydra/sweeper/sampler",
        name=name,
        node={"_target_": f"optuna.samplers.{cls}", **({} if name == "grid" else {"seed": None})},
        provider="resnet_train",
    )
