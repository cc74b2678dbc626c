"""model.drop_path: stochastic depth (Huang et al. 2016) as timm applies it to ResNets, one
per-example drop of each residual branch, its rate rising linearly with the block's index."""

import json

import numpy as np
import pytest
from helpers import TINY, compose

from resnet_train import models
from resnet_train.errors import ConfigError
from resnet_train.models.drop_path import DropPath, block_rates


def test_kept_branches_are_scaled_by_one_over_keep_and_dropped_ones_are_zero():
    layer = DropPath(0.25, seed=3)
    branch = np.random.default_rng(0).uniform(0.5, 1.5, (4000, 2, 2, 3)).astype(np.float32)
    out = layer(branch, training=True).numpy()
    kept = (out != 0).reshape(len(out), -1)
    # one decision per example: all of an example's values are dropped, or all kept and scaled
    assert np.all(kept == kept[:, :1])
    kept = kept[:, 0]
    np.testing.assert_allclose(out[kept], branch[kept] / 0.75, rtol=1e-6)
    assert abs((~kept).mean() - 0.25) < 0.03  # 4000 draws: 4 standard deviations
    assert abs(out.mean() / branch.mean() - 1) < 0.03  # the expected branch is unchanged
    again = layer(branch, training=True).numpy()
    assert not np.array_equal(again, out)  # a new mask each call


def test_identity_at_inference():
    branch = np.random.default_rng(1).normal(size=(64, 4, 4, 8)).astype(np.float32)
    layer = DropPath(0.5)
    assert np.array_equal(layer(branch, training=False).numpy(), branch)
    assert np.array_equal(layer(branch).numpy(), branch)


def test_rates_rise_linearly_to_drop_path_at_the_last_block():
    assert block_rates(0.3, 4) == pytest.approx([0.0, 0.1, 0.2, 0.3])
    model = models.build(14, 10, (32, 32, 3), drop_path=0.2)  # CIFAR, 2 blocks per stage: 6
    rates = {layer.name: layer.rate for layer in model.layers if isinstance(layer, DropPath)}
    # the first block's rate is 0: no layer
    assert rates == pytest.approx(
        {
            f"stage{s}_block{b}_drop": 0.2 * i / 5
            for i, (s, b) in enumerate([(1, 2), (2, 1), (2, 2), (3, 1), (3, 2)], start=1)
        }
    )


@pytest.mark.parametrize(
    "variant,depth,shape", [("cifar", 8, (32, 32, 3)), ("preact", 20, (32, 32, 3)), ("imagenet", 18, (64, 64, 3))]
)
def test_every_family_gets_it_and_keeps_its_parameter_count(variant, depth, shape):
    plain = models.build(depth, 10, shape, variant=variant)
    dropping = models.build(depth, 10, shape, variant=variant, drop_path=0.1)
    assert models.count_params(dropping) == models.count_params(plain)
    count = sum(isinstance(layer, DropPath) for layer in dropping.layers)
    assert count == sum(models.resolve_layout(depth, shape, variant).stages) - 1
    images = np.random.default_rng(2).uniform(0, 255, (4,) + shape).astype(np.float32)
    for layer in plain.layers:
        dropping.get_layer(layer.name).set_weights(layer.get_weights())
    assert np.array_equal(dropping(images).numpy(), plain(images).numpy())  # identity at inference


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_a_rate_outside_0_1_is_refused_in_one_line(rate):
    with pytest.raises(ConfigError, match=r"model.drop_path must be in \[0, 1\)"):
        from resnet_train.config import validate

        validate(compose(*TINY, f"model.drop_path={rate}"))


def test_a_run_with_drop_path_trains(tmp_path, monkeypatch):
    from resnet_train.training.loop import train_and_evaluate

    run = tmp_path / "run"
    train_and_evaluate(compose(*TINY, "epochs=4", "model.drop_path=0.3", "data.limit_test=32"), run)
    losses = [
        r["loss"]
        for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        if r.get("split") == "train" and "loss" in r
    ]
    assert len(losses) >= 2 and losses[-1] < 0.9 * losses[0], losses

    # The tools load it, and init_from takes its learned weights (not DropPath's draw counts) into
    # a model without stochastic depth, and back.
    from resnet_train.training.finetune import initialise_from
    from resnet_train.training.runs import load_run

    loaded = load_run(run)
    plain = models.build(
        8, loaded.info.num_classes, loaded.info.image_shape, mean=loaded.info.mean, std=loaded.info.std
    )
    done = initialise_from(plain, str(run))
    assert done["new"] == [] and not any(name.endswith("_drop") for name in done["loaded"])
    images = np.random.default_rng(3).uniform(0, 255, (4, *loaded.info.image_shape)).astype(np.float32)
    np.testing.assert_allclose(plain(images).numpy(), loaded.model(images).numpy(), rtol=1e-5, atol=1e-5)
    from resnet_train.training import finetune

    info = loaded.info
    dropping = models.build(8, info.num_classes, info.image_shape, mean=info.mean, std=info.std, drop_path=0.3)
    monkeypatch.setattr(finetune, "load_source", lambda spec: (plain, spec, None, "multiclass"))  # no DropPath there
    assert initialise_from(dropping, "plain")["new"] == []
    np.testing.assert_allclose(dropping(images).numpy(), loaded.model(images).numpy(), rtol=1e-5, atol=1e-5)


def test_a_checkpoint_holds_the_draws_so_a_restored_model_draws_the_same_masks(tmp_path):
    import tensorflow as tf

    model = models.build(8, 10, (32, 32, 3), drop_path=0.5)
    branch = np.ones((64, 4, 4, 64), np.float32)
    model.get_layer("stage3_block1_drop")(branch, training=True)  # one draw before the save
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    expected = model.get_layer("stage3_block1_drop")(branch, training=True).numpy()
    restored = models.build(8, 10, (32, 32, 3), drop_path=0.5)
    tf.train.Checkpoint(model=restored).restore(path)
    assert np.array_equal(restored.get_layer("stage3_block1_drop")(branch, training=True).numpy(), expected)
