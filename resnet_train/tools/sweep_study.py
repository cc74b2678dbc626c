"""An Optuna search's part of summary.md (resnet-sweep-report prints it): its trials by state, the
pruned ones with the epochs each ran, and Optuna's parameter importances (fANOVA over the complete
trials, once there are two). The study is found from the sweep's optuna_study.yaml (written by
hydra_plugins/resnet_train_optuna/sweeper.py); a sweep without one gets nothing, and a study that
cannot be read or ranked gets a line saying why, never a failed report."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)
STUDY_FILE = "optuna_study.yaml"


def where_saved(sweep_dir, storage) -> str:
    """How optuna_study.yaml names the storage: a file inside the sweep relative to it, so that a
    copied or moved sweep reports its own study."""
    path = Path(str(storage))
    if "://" not in str(storage) and path.resolve().is_relative_to(Path(sweep_dir).resolve()):
        return str(path.resolve().relative_to(Path(sweep_dir).resolve()))
    return str(storage)


def study_lines(sweep_dir) -> list[str]:
    where = Path(sweep_dir) / STUDY_FILE
    if not where.exists():
        return []
    try:
        study = _load(where)
        trials = study.get_trials(deepcopy=False)
    except Exception as e:  # noqa: BLE001 -- the members' table stands without the study's part
        log.warning("The study named in %s could not be read: %s: %s", where, type(e).__name__, e)
        return ["", f"Study: not readable ({type(e).__name__}: {e})"]
    states = {}
    for trial in trials:
        states[trial.state.name.lower()] = states.get(trial.state.name.lower(), 0) + 1
    lines = [
        "",
        f"## Study {study.study_name}",
        "",
        "Trials: " + ", ".join(f"{n} {s}" for s, n in sorted(states.items())),
    ]
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    if pruned:
        lines += ["", "| pruned trial | epochs run | last reported |", "|---|---|---|"]
        lines += [f"| {t.number} | {t.last_step} | {_figure(t.intermediate_values.get(t.last_step))} |" for t in pruned]
    return lines + ["", *importance_lines(study, trials)]


def importance_lines(study, trials) -> list[str]:
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    if len(complete) < 2:
        return [f"Parameter importances: need 2 complete trials ({len(complete)} so far)"]
    import optuna

    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)  # the same table on every rewrite
        importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except Exception as e:  # noqa: BLE001 -- e.g. trials of different search spaces
        return [f"Parameter importances: not available ({type(e).__name__}: {e})"]
    lines = ["| parameter | importance (fANOVA) |", "|---|---|"]
    return lines + [f"| {name} | {value:.3f} |" for name, value in importances.items()]


def _load(where: Path):
    import optuna
    from omegaconf import OmegaConf

    from resnet_train.tools.optuna_storage import open_storage

    saved = OmegaConf.load(where)
    storage = str(saved.storage)
    if "://" not in storage:  # a journal file, named relative to the sweep when it lies inside it
        storage = str(where.parent / storage)
        if not Path(storage).exists():
            raise FileNotFoundError(f"no study file {storage}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=saved.study_name, storage=open_storage(storage))


def _figure(value) -> str:
    return "" if value is None else f"{value:.4f}"
