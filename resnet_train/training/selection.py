"""What chooses: the figure that picks a run's best/ checkpoint, stops it early and is a search's
objective. It is checkpoint.best_metric on the validation split (data.val_split), measured on the
weights the tools deploy: the EMA weights when ema.decay is set (eval_ema), else the raw ones.
Never the test set: without a validation split nothing is chosen (no best/, no early stop, no
objective for a sweeper)."""

from __future__ import annotations


def records_split(cfg) -> str:
    """The split of metrics.jsonl whose figures choose (eval_ema: the EMA weights' evaluation)."""
    return "eval_ema" if cfg.ema.decay else "eval"


def objective_key(cfg) -> str:
    """results.json's key of the figure behind best/: the best validation `best_metric`."""
    return f"best_val_{cfg.checkpoint.best_metric}"


def objective(cfg, results: dict) -> float | None:
    """What a sweeper optimises: the figure behind best/; None without a validation split (a
    sweeper that optimises is refused then: cli._check_search_has_validation)."""
    value = results.get(objective_key(cfg)) if results.get("eval_split") == "val" else None
    return None if value is None else float(value)


# Hydra's own sweeper (a plain run or `-m` grid) ignores what a job returns; every other sweeper
# (Optuna, Nevergrad, Ax, a user's) may optimise it.
NON_OPTIMISING_SWEEPERS = ("hydra._internal.core_plugins.basic_sweeper.BasicSweeper",)


def search_refusal(sweeper_target: str, val_split) -> str | None:
    """Why a sweeper may not run without a validation split (None: it may): optimising what
    resnet-train returns would tune on the test set."""
    if val_split or not sweeper_target or sweeper_target in NON_OPTIMISING_SWEEPERS:
        return None
    fix = "(data.val_split=0.1 or a count): it would otherwise tune on the test set"
    if "optuna" in sweeper_target.lower():
        return f"hparams_search=optuna needs a validation split to optimise {fix}"
    return f"the sweeper {sweeper_target} optimises what resnet-train returns and needs a validation split {fix}"
