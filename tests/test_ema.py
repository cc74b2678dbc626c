"""EMA of the weights: a run's checkpoint gives back the averages training evaluated, and export,
eval and predict use them (the raw weights on request)."""

import json

import keras
import numpy as np
import pytest
from helpers import TINY, compose
from omegaconf import OmegaConf

from resnet_train.errors import UserError
from resnet_train.training.loop import train_and_evaluate
from resnet_train.training.runs import load_run


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("ema") / "run"
    cfg = compose(*TINY, "epochs=2", "ema.decay=0.9", "runtime.precision=float32")
    train_and_evaluate(cfg, run)  # writes .hydra/config.yaml as the CLI's Hydra run does
    return run


def weights(model):
    return [v.numpy() for v in model.trainable_variables]


def test_a_loaded_run_has_the_ema_weights_training_evaluated(ema_run):
    from resnet_train.tools.evaluate import evaluate_run

    results = json.loads((ema_run / "results.json").read_text())
    ema = evaluate_run(ema_run, "last")
    assert ema["weights"] == "ema"
    assert ema["loss"] == pytest.approx(results["test_ema"]["loss"], rel=1e-4)
    raw, averaged = load_run(ema_run, "last", ema=False), load_run(ema_run, "last")
    assert (raw.weights, averaged.weights) == ("raw", "ema")
    assert results["test_ema"]["loss"] != pytest.approx(results["test"]["loss"], rel=1e-4)
    assert any(not np.allclose(a, b) for a, b in zip(weights(raw.model), weights(averaged.model)))
    # The batch-norm moving statistics are not averaged (README, EMA): the run's own at that step.
    moving = [
        (a.path, a.numpy(), b.numpy())
        for a, b in zip(raw.model.non_trainable_variables, averaged.model.non_trainable_variables)
    ]
    assert moving and all("moving" in path for path, _, _ in moving)
    for _, plain, ema in moving:
        np.testing.assert_array_equal(plain, ema)


def test_export_writes_the_ema_weights(ema_run, tmp_path):
    from resnet_train.tools.export import export_run

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


@pytest.mark.parametrize("name, loss_scaling", [("sgd", False), ("adamw", True), ("lars", False)])
def test_ema_weights_come_back_for_every_optimizer_and_under_loss_scaling(tmp_path, name, loss_scaling):
    """The averages are optimizer variables saved by position: restore_ema rebuilds the run's
    optimizer (kind, decay policy, loss-scale wrapper) to find them."""
    import tensorflow as tf

    from resnet_train import optim
    from resnet_train.models import build
    from resnet_train.training.checkpoint import Checkpointer
    from resnet_train.training.runs import restore_ema

    cfg = OmegaConf.create(
        {"optimizer": {"name": name, "weight_decay": 1e-4}, "ema": {"decay": 0.5}, "finetune": {"freeze": "none"}}
    )
    keras.utils.set_random_seed(0)
    model = build(8, 10, variant="cifar")
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5)  # as training: a schedule
    opt = optim.build_optimizer(
        cfg.optimizer, schedule, loss_scaling=loss_scaling, ema_decay=0.5, variables=model.trainable_variables
    )
    opt.build(model.trainable_variables)
    rng = np.random.default_rng(0)
    for _ in range(3):
        grads = [tf.constant(rng.normal(size=v.shape).astype("float32")) for v in model.trainable_variables]
        if loss_scaling:
            grads = [g * opt.dynamic_scale for g in grads]
        opt.apply_gradients(zip(grads, model.trainable_variables))
    inner = getattr(opt, "inner_optimizer", opt)
    averages = [a.numpy() for a in inner._model_variables_moving_average]
    path = Checkpointer(tmp_path, model, opt).save(3, 1)

    keras.utils.set_random_seed(1)
    fresh = build(8, 10, variant="cifar")
    restore_ema(fresh, cfg, path)
    for got, want, raw in zip(weights(fresh), averages, weights(model)):
        np.testing.assert_array_equal(got, want)
    assert any(not np.allclose(a, r) for a, r in zip(averages, weights(model)))
