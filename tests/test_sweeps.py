"""Multirun sweeps, their summary, failures, Optuna search, the joblib launcher, recipes, EMA."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY, compose, run_cli
from resnet_train.train import train_and_evaluate

SMALL = (*TINY, "epochs=1", "data.limit_train=64", "data.limit_test=32")


def rows(sweep):
    with open(sweep / "summary.csv") as f:
        return list(csv.DictReader(f))


def test_two_member_sweep_summary_and_rerun_skips_finished(tmp_path):
    sweep = tmp_path / "sweep"
    done = run_cli("-m", *SMALL, "optimizer.lr=0.05,0.2", f"hydra.sweep.dir={sweep}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (sweep / "0" / "results.json").exists() and (sweep / "1" / "results.json").exists()
    table = rows(sweep)
    assert [r["status"] for r in table] == ["finished", "finished"]
    assert sorted(r["overrides"].split()[-1] for r in table) == ["optimizer.lr=0.05", "optimizer.lr=0.2"]
    best = [float(r["best_eval_accuracy"]) for r in table]
    assert best == sorted(best, reverse=True)  # sorted by the target metric
    assert "| member | status | overrides |" in (sweep / "summary.md").read_text()
    assert list((sweep / "0" / "tensorboard").glob("events.out.tfevents.*"))  # the HParams record

    again = run_cli("-m", *SMALL, "optimizer.lr=0.05,0.2", f"hydra.sweep.dir={sweep}")
    assert again.returncode == 0
    assert again.stdout.count("Test accuracy") == 2
    for member in ("0", "1"):
        assert "already finished" in (sweep / member / "train.log").read_text()


def test_a_failed_member_is_reported_and_the_others_finish(tmp_path):
    sweep = tmp_path / "sweep"
    others = [o for o in SMALL if not o.startswith("depth=")]
    done = run_cli("-m", *others, "depth=9,8", f"hydra.sweep.dir={sweep}")
    assert done.returncode != 0
    assert "depth=9" in done.stderr  # Hydra names the failed member's overrides
    table = {r["overrides"].split()[-1]: r for r in rows(sweep)}
    assert table["depth=8"]["status"] == "finished" and (sweep / "1" / "results.json").exists()
    assert table["depth=9"]["status"] == "failed" and "6n+2" in table["depth=9"]["error"]
    report = subprocess.run([str(Path(sys.executable).with_name("resnet-sweep-report")), str(sweep)],
                            capture_output=True, text=True, timeout=60)
    assert report.returncode == 1 and "failed members: 0" in report.stderr
    assert "| 1 | finished |" in report.stdout


def test_optuna_search_runs_two_trials_with_storage_in_the_sweep_dir(tmp_path):
    sweep = tmp_path / "search"
    done = run_cli("hparams_search=optuna", "hydra.sweeper.n_trials=2", *SMALL, f"hydra.sweep.dir={sweep}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (sweep / "optuna.db").exists() and (sweep / "optimization_results.yaml").exists()
    assert len(rows(sweep)) == 2 and all("optimizer.lr=" in r["overrides"] for r in rows(sweep))
    # Optuna optimised the validation accuracy (10% held out by the search's config), never the test set's.
    from omegaconf import OmegaConf

    members = [json.loads((sweep / m / "results.json").read_text()) for m in ("0", "1")]
    assert all(m["eval_split"] == "val" and m["eval"]["examples"] == 6 for m in members)  # 10% of 64
    best = OmegaConf.load(sweep / "optimization_results.yaml").best_value
    assert best == max(m["eval"]["accuracy"] for m in members)


def test_optuna_search_without_a_validation_split_is_refused(tmp_path):
    done = run_cli("hparams_search=optuna", "hydra.sweeper.n_trials=1", *SMALL, "data.val_split=null",
                   f"hydra.sweep.dir={tmp_path / 'search'}")
    assert done.returncode == 2
    assert "hparams_search=optuna needs a validation split to optimise (data.val_split=0.1" in done.stderr
    assert not list((tmp_path / "search").glob("*/results.json"))


def test_joblib_launcher_runs_members_in_parallel_processes(tmp_path):
    sweep = tmp_path / "sweep"
    done = run_cli("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *SMALL, "seed=1,2",
                   f"hydra.sweep.dir={sweep}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Joblib" in done.stdout + done.stderr
    assert [r["status"] for r in rows(sweep)] == ["finished", "finished"]


@pytest.mark.parametrize("name,depth,epochs,lr,schedule", [
    ("cifar10_paper", 56, 182, 0.1, "step"), ("cifar10_preact", 164, 164, 0.1, "step"),
    ("cifar10_fast", 20, 30, 0.1, "cosine"), ("imagenet_90ep", 50, 90, 0.1, "step")])
def test_recipes_compose_and_state_their_reference(name, depth, epochs, lr, schedule):
    cfg = compose(f"experiment={name}")
    assert (cfg.depth, cfg.epochs, cfg.optimizer.lr, cfg.schedule.name) == (depth, epochs, lr, schedule)
    header = (Path(__file__).parents[1] / "configs" / "experiment" / f"{name}.yaml").read_text().split("defaults:")[0]
    assert "resnet-train experiment=" in header and "%" in header and "Ours:" in header


def test_ema_is_evaluated_beside_the_weights_and_checkpointed(tmp_path):
    import tensorflow as tf

    results = train_and_evaluate(compose(*TINY, "epochs=2", "ema.decay=0.9"), tmp_path)
    assert results["test_ema"]["examples"] == results["test"]["examples"] == 64
    assert results["test_ema"]["loss"] != results["test"]["loss"]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["split"] == "eval_ema"] == [1, 2]
    shapes = tf.train.load_checkpoint(results["checkpoint"]).get_variable_to_shape_map()
    head_sized = [k for k, shape in shapes.items() if k.startswith("optimizer/_variables/") and shape == [64, 10]]
    assert len(head_sized) == 2  # the head's momentum and its moving average: EMA is checkpointed
