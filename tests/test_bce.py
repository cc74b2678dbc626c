"""loss=bce: binary cross-entropy on the (mixed, smoothed) one-hot targets, as "ResNet strikes back"
trains, proven against Keras' own BinaryCrossentropy; the target threshold; under float16 loss
scaling and over two replicas."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import TINY, compose, train_small_model

from resnet_train.config import validate
from resnet_train.errors import ConfigError
from resnet_train.runtime import devices
from resnet_train.training.losses import Loss

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(0, 3, (64, 10)).astype(np.float32)
SOFT = RNG.dirichlet(np.full(10, 0.3), 64).astype(np.float32)  # mixup/cutmix-like soft targets


def keras_bce(targets, logits):
    return keras.losses.BinaryCrossentropy(from_logits=True, reduction=None)(targets, logits).numpy()


def test_bce_equals_keras_binary_crossentropy_on_soft_targets():
    ours = Loss(10, kind="bce")(tf.constant(SOFT), tf.constant(LOGITS)).numpy()
    np.testing.assert_allclose(ours, keras_bce(SOFT, LOGITS), rtol=1e-5)


def test_integer_labels_are_one_hot_and_smoothing_is_e_over_k_as_in_timm():
    labels = RNG.integers(0, 10, 64)
    ours = Loss(10, label_smoothing=0.1, kind="bce")(tf.constant(labels), tf.constant(LOGITS)).numpy()
    smoothed = np.eye(10, dtype=np.float32)[labels] * 0.9 + 0.01  # timm: off 0.1/10, on 1 - 0.1 + 0.01
    np.testing.assert_allclose(ours, keras_bce(smoothed, LOGITS), rtol=1e-5)
    assert not np.allclose(ours, keras_bce(np.eye(10)[labels], LOGITS), rtol=1e-3)


def test_the_threshold_turns_targets_above_it_into_one_and_the_rest_into_zero():
    mixed = np.zeros((2, 10), np.float32)
    mixed[0, [1, 4]] = 0.7, 0.3  # a mixup of classes 1 and 4
    mixed[1, [2, 5]] = 0.9, 0.1
    logits = tf.constant(LOGITS[:2])
    loss = Loss(10, kind="bce", target_threshold=0.2)
    assert loss.targets(tf.constant(mixed), tf.float32).numpy().tolist() == [
        [0, 1, 0, 0, 1, 0, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0, 0, 0, 0, 0],
    ]
    hard = (mixed > 0.2).astype(np.float32)
    np.testing.assert_allclose(loss(tf.constant(mixed), logits).numpy(), keras_bce(hard, LOGITS[:2]), rtol=1e-5)
    unthresholded = Loss(10, kind="bce")(tf.constant(mixed), logits).numpy()
    assert not np.allclose(unthresholded, keras_bce(hard, LOGITS[:2]), rtol=1e-3)


def test_float16_logits_give_the_float32_loss_to_float16_precision():
    ours = Loss(10, kind="bce")(tf.constant(SOFT), tf.constant(LOGITS, tf.float16)).numpy()
    assert ours.dtype == np.float16
    np.testing.assert_allclose(ours.astype(np.float32), keras_bce(SOFT, LOGITS), rtol=5e-3)


def test_two_cpu_replicas_give_the_one_device_weights_under_bce():
    """The per-example BCE is averaged over the global batch like ce, so two replicas' summed
    gradients are one device's."""
    one, one_metrics = train_small_model(devices.make_strategy("one_device"), loss="bce", label_smoothing=0.1)
    two, two_metrics = train_small_model(
        devices.make_strategy("mirrored", cpu_replicas=2), loss="bce", label_smoothing=0.1
    )
    for a, b in zip(one, two):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-6)
    assert one_metrics["loss"] == pytest.approx(two_metrics["loss"], rel=1e-6)
    ce, _ = train_small_model(devices.make_strategy("one_device"), label_smoothing=0.1)
    assert not all(np.allclose(a, b, rtol=1e-3) for a, b in zip(one, ce))  # the loss did change


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["loss.name=focal"], "loss.name must be ce or bce (got 'focal')"),
        (["loss=bce", "loss.target_threshold=1.0"], "loss.target_threshold is for loss=bce, in [0, 1) (got 1"),
        (["loss.target_threshold=0.2"], "loss.target_threshold is for loss=bce, in [0, 1) (got 0.2 with loss=ce)"),
    ],
)
def test_bad_settings_are_one_line(overrides, message):
    with pytest.raises(ConfigError) as error:
        validate(compose(*TINY, *overrides))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_mixed_float16_run_with_bce_and_cutmix_trains(tmp_path):
    from resnet_train.training.loop import train_and_evaluate

    run = tmp_path / "run"
    cfg = compose(
        *TINY,
        "epochs=4",
        "data.limit_test=32",
        "loss=bce",
        "loss.target_threshold=0.2",
        "augment=cutmix",
        "runtime.precision=mixed_float16",
    )
    train_and_evaluate(cfg, run)
    saved = (run / ".hydra" / "config.yaml").read_text()
    assert "name: bce" in saved and "target_threshold: 0.2" in saved
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r.get("split") == "train" and "loss" in r]
    assert all(np.isfinite(losses)) and losses[-1] < 0.9 * losses[0], losses
