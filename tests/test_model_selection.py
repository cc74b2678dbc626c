"""Model selection stays off the test set: best/ is chosen on a validation split or not at all, and
the tools' default checkpoint (auto) is then the final one."""

import json
import logging
import shutil

import pytest
import tensorflow as tf
from helpers import TINY, compose

from resnet_train.tools.evaluate import evaluate_run
from resnet_train.training.loop import train_and_evaluate
from resnet_train.training.runs import load_run, resolve


def test_without_a_validation_split_nothing_is_chosen_on_the_test_set(tmp_path, caplog):
    run = tmp_path / "run"
    results = train_and_evaluate(compose(*TINY, "epochs=2"), run)
    assert results["eval_split"] == "test"
    assert not (run / "checkpoints" / "best").exists()
    # The best-over-epochs test figure is kept only under a name that says it is optimistic.
    assert "best_test_accuracy" not in results and "best_test_accuracy_optimistic" in results
    assert (
        json.loads((run / "results.json").read_text())["best_test_accuracy_optimistic"]
        == results["best_test_accuracy_optimistic"]
    )

    with caplog.at_level(logging.INFO):
        loaded = load_run(run)  # checkpoint=auto, the tools' default
    assert loaded.checkpoint == results["checkpoint"] == tf.train.latest_checkpoint(str(run / "checkpoints"))
    assert "Using the final checkpoint" in caplog.text and "no validation split" in caplog.text
    assert evaluate_run(run)["checkpoint"] == results["checkpoint"]

    # A run of an earlier version kept best/ chosen on the test set: asked for by name, it is used
    # with a warning that its test accuracy is optimistic.
    best = run / "checkpoints" / "best"
    best.mkdir()
    for f in run.glob("checkpoints/ckpt-8.*"):
        shutil.copy(f, best / f.name)
    (best / "checkpoint").write_text('model_checkpoint_path: "ckpt-8"\n')
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert resolve(run, "best", has_validation=False) == str(best / "ckpt-8")
    assert "chose best/ on the test set" in caplog.text and "checkpoint=last" in caplog.text
    assert load_run(run).checkpoint == results["checkpoint"]  # auto still takes the final one


def test_with_a_validation_split_best_is_chosen_on_it_and_is_the_default(tmp_path):
    run = tmp_path / "run"
    results = train_and_evaluate(compose(*TINY, "epochs=2", "data.val_split=32"), run)
    assert results["eval_split"] == "val" and "best_val_accuracy" in results
    assert results["test"]["examples"] == 64 and results["eval"]["examples"] == 32
    best = tf.train.latest_checkpoint(str(run / "checkpoints" / "best"))
    assert best and load_run(run).checkpoint == best
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert results["best_val_accuracy"] == max(r["accuracy"] for r in records if r["split"] == "eval")


def saved_by_the_earlier_version(run, section, key):
    """Removes a setting the earlier version did not have from both of the run's saved configs."""
    from omegaconf import OmegaConf

    for saved in (run / ".hydra" / "config.yaml", run / "checkpoints" / "config.yaml"):
        old = OmegaConf.load(saved)
        del old[section][key]
        OmegaConf.save(old, saved)


def test_a_run_made_with_tf_same_padding_still_resumes_and_loads(tmp_path, caplog):
    """Runs saved before model.padding existed were trained with TF's 'same' padding and hold no
    padding layers: they continue, and load in the tools, with that geometry (run_dir.RUN_OWNED)."""
    from omegaconf import OmegaConf

    run = tmp_path / "old"
    train_and_evaluate(compose(*TINY, "epochs=1", "model.padding=same"), run)
    saved_by_the_earlier_version(run, "model", "padding")
    (run / "results.json").unlink()

    assert load_run(run).model.get_layer("stage2_block1_conv1").padding == "same"
    with caplog.at_level(logging.INFO):
        results = train_and_evaluate(compose(*TINY, "epochs=2"), run)  # today's default: symmetric
    assert "Resumed from" in caplog.text and "with its own model.padding=same" in caplog.text
    assert results["steps"] == 8
    assert OmegaConf.load(run / "checkpoints" / "config.yaml").model.padding == "same"
    again = train_and_evaluate(compose(*TINY, "epochs=2"), run)  # the next rerun: finished, skipped
    assert again == json.loads((run / "results.json").read_text()) and again["wall_time_s"] == results["wall_time_s"]

    # A new run keeps its own symmetric padding whatever a rerun's command says.
    new = tmp_path / "new"
    train_and_evaluate(compose(*TINY, "epochs=1"), new)
    (new / "results.json").unlink()
    train_and_evaluate(compose(*TINY, "epochs=2", "model.padding=same"), new)
    model = load_run(new).model
    assert model.get_layer("stage2_block1_conv1").padding == "valid" and model.get_layer("stage2_block1_conv1_pad")


def test_a_run_made_before_split_seed_resumes_on_its_own_validation_split(tmp_path, caplog):
    run = tmp_path / "old"
    common = (*TINY, "data.val_split=32")
    train_and_evaluate(compose(*common, "epochs=1"), run)
    saved_by_the_earlier_version(run, "data", "split_seed")
    (run / "results.json").unlink()
    with caplog.at_level(logging.INFO):
        results = train_and_evaluate(compose(*common, "epochs=2"), run)
    assert "with its own data.split_seed=legacy" in caplog.text and "Resumed from" in caplog.text
    assert results["eval"]["examples"] == 32 and results["steps"] == 6


def test_with_ema_best_and_early_stop_follow_the_ema_weights_figures(tmp_path, monkeypatch):
    """The tools deploy a run's EMA weights: best/, early stopping and the search's figure are the
    EMA weights' validation figures (scripted here to fall after epoch 1), not the raw weights'."""
    from resnet_train.training.trainer import Trainer

    scripted = iter([0.6, 0.5, 0.4, 0.3, 0.2, 0.1])  # the EMA weights' accuracy, per call

    def evaluate_ema(self, dist_dataset):
        return {**self.evaluate(dist_dataset), "accuracy": next(scripted)}

    monkeypatch.setattr(Trainer, "evaluate_ema", evaluate_ema)
    run = tmp_path / "run"
    cfg = compose(*TINY, "epochs=5", "data.val_split=32", "ema.decay=0.9", "early_stop.patience=2")
    results = train_and_evaluate(cfg, run)
    assert results["chosen_on"] == "eval_ema" and results["best_val_accuracy"] == 0.6
    assert results["stopped_early_at_epoch"] == 3  # 0.6, then two epochs without an improvement
    assert tf.train.latest_checkpoint(str(run / "checkpoints" / "best")).endswith("ckpt-3")  # epoch 1 of 3 steps


def test_the_search_objective_is_the_figure_behind_best():
    from resnet_train.training import selection

    results = {"eval_split": "val", "eval": {"accuracy": 0.5, "macro_f1": 0.4}, "best_val_accuracy": 0.75}
    results["best_val_macro_f1"] = 0.7
    assert selection.objective(compose(*TINY), results) == 0.75
    assert selection.objective(compose(*TINY, "checkpoint.best_metric=macro_f1"), results) == 0.7
    on_test = {"eval_split": "test", "eval": {"accuracy": 0.5}, "best_test_accuracy_optimistic": 0.9}
    assert selection.objective(compose(*TINY), on_test) is None  # nothing to optimise on the test set


@pytest.mark.parametrize(
    "sweeper",
    [
        "hydra_plugins.resnet_train_optuna.sweeper.OptunaSweeper",
        "hydra_plugins.hydra_nevergrad_sweeper.nevergrad_sweeper.NevergradSweeper",
        "hydra_plugins.hydra_ax_sweeper.ax_sweeper.AxSweeper",
        "my_lab.sweepers.Bayes",
    ],
)
def test_every_optimising_sweeper_needs_a_validation_split(sweeper):
    from resnet_train.training.selection import search_refusal

    assert "needs a validation split" in search_refusal(sweeper, None)
    assert "tune on the test set" in search_refusal(sweeper, 0)
    assert search_refusal(sweeper, 0.1) is None
    assert search_refusal("hydra._internal.core_plugins.basic_sweeper.BasicSweeper", None) is None  # a grid: no choice


def _member(sweep, name, val_split, metrics, results=None, best_metric="accuracy"):
    """A sweep member as a run leaves it: its config, its records, and its results once finished."""
    member = sweep / name
    (member / ".hydra").mkdir(parents=True)
    (member / ".hydra" / "overrides.yaml").write_text(f"- seed={name}\n")
    (member / ".hydra" / "config.yaml").write_text(
        f"data:\n  val_split: {val_split}\ncheckpoint:\n  best_metric: {best_metric}\nema:\n  decay: null\n"
    )
    lines = [
        {"split": "eval", "step": 3 * (i + 1), "epoch": i + 1, "accuracy": a, "macro_f1": a / 2}
        for i, a in enumerate(metrics)
    ]
    (member / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    if results is not None:
        (member / "results.json").write_text(json.dumps(results))


def test_the_sweep_summary_ranks_on_validation_and_never_on_a_best_test_epoch(tmp_path):
    from resnet_train.tools.sweep import write_summary

    def finished(split, final, **best):
        figures = {"accuracy": final, "macro_f1": final / 2}
        return {"eval_split": split, "eval": figures, "test": figures, "epochs": 2, **best}

    # No validation split: ranked by the final test figure only, never by the best test epoch.
    no_val = tmp_path / "no_val"
    _member(no_val, "0", "null", [0.9, 0.5], finished("test", 0.5, best_test_accuracy_optimistic=0.9))
    _member(no_val, "1", "null", [0.7, 0.7], finished("test", 0.7, best_test_accuracy_optimistic=0.7))
    _member(no_val, "2", "null", [0.99])  # unfinished: its best test epoch counts for nothing
    rows = write_summary(no_val)
    assert [r["member"] for r in rows] == ["1", "0", "2"]
    assert [r["final_test"] for r in rows] == [0.7, 0.5, None] and all(r["best_val"] is None for r in rows)
    assert "| final_test |" in (no_val / "summary.md").read_text()

    # With one: by the figure behind best/ (checkpoint.best_metric), unfinished members by their records so far.
    val = tmp_path / "val"
    _member(val, "0", 0.1, [0.6, 0.5], finished("val", 0.5, best_val_accuracy=0.6, best_val_macro_f1=0.3), "macro_f1")
    _member(val, "1", 0.1, [0.4, 0.9], None, "macro_f1")  # running: best macro-F1 so far 0.45
    rows = write_summary(val)
    assert [(r["member"], r["best_val"], r["metric"]) for r in rows] == [
        ("1", 0.45, "macro_f1"),
        ("0", 0.3, "macro_f1"),
    ]
