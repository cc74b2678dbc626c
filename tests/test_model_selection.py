"""Model selection stays off the test set: best/ is chosen on a validation split or not at all, and
the tools' default checkpoint (auto) is then the final one."""

import json
import logging
import shutil

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
