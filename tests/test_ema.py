"""EMA of the weights: a run's checkpoint gives back the averages training evaluated, and export,
eval and predict use them (the raw weights on request)."""
import json

import keras
import numpy as np
import pytest
from omegaconf import OmegaConf

from conftest import TINY, compose
from resnet_train.errors import UserError
from resnet_train.runs import load_run
from resnet_train.train import train_and_evaluate


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("ema") / "run"
    cfg = compose(*TINY, "epochs=2", "ema.decay=0.9", "runtime.precision=float32")
    train_and_evaluate(cfg, run)  # writes .hydra/config.yaml as the CLI's Hydra run does
    return run


def weights(model):
    return [v.numpy() for v in model.trainable_variables]


def test_a_loaded_run_has_the_ema_weights_training_evaluated(ema_run):
    from resnet_train.evaluate import evaluate_run

    results = json.loads((ema_run / "results.json").read_text())
    ema = evaluate_run(ema_run, "last")
    assert ema["weights"] == "ema"
    assert ema["loss"] == pytest.approx(results["test_ema"]["loss"], rel=1e-4)
    raw, averaged = load_run(ema_run, "last", ema=False), load_run(ema_run, "last")
    assert (raw.weights, averaged.weights) == ("raw", "ema")
    assert results["test_ema"]["loss"] != pytest.approx(results["test"]["loss"], rel=1e-4)
    assert any(not np.allclose(a, b) for a, b in zip(weights(raw.model), weights(averaged.model)))


def test_export_writes_the_ema_weights(ema_run, tmp_path):
    from resnet_train.export import export_run

    summary = export_run(ema_run, "last", fmt="keras", out=tmp_path)
    assert summary["weights"] == "ema" and summary["top1_agreement"] == 1.0
    exported = keras.saving.load_model(summary["path"], safe_mode=True)
    averaged, raw = load_run(ema_run, "last").model, load_run(ema_run, "last", ema=False).model
    for got, ema, plain in zip(weights(exported), weights(averaged), weights(raw)):
        np.testing.assert_array_equal(got, ema)
    assert any(not np.allclose(g, p) for g, p in zip(weights(exported), weights(raw)))


def test_asking_for_ema_weights_of_a_run_without_them_is_a_clear_error(ema_run, tmp_path):
    import shutil

    plain = tmp_path / "plain"
    shutil.copytree(ema_run, plain)
    cfg = OmegaConf.load(plain / ".hydra" / "config.yaml")
    cfg.ema.decay = None
    OmegaConf.save(cfg, plain / ".hydra" / "config.yaml")
    assert load_run(plain, "last").weights == "raw"
    with pytest.raises(UserError, match="trained without ema.decay"):
        load_run(plain, "last", ema=True)
