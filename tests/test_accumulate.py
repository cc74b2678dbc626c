"""optimizer.accumulate_steps: N micro-batches per optimizer step, on their mean gradient."""

import json

import keras
import numpy as np
import pytest
from helpers import TINY, compose, train_small_model

from resnet_train.runtime import devices as runtime
from resnet_train.training.loop import train_and_evaluate


def _sgd_with_schedule():
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([1], [0.3, 0.1])  # counts optimizer steps
    return keras.optimizers.SGD(schedule, momentum=0.9)


@pytest.mark.parametrize("strategy", ["one_device", "mirrored"])
def test_two_micro_batches_of_16_are_one_batch_of_32_without_batch_norm(strategy):
    """Weights after 2 optimizer steps, with momentum, coupled weight decay, gradient clipping and
    a schedule that changes at step 1: equal within float rounding (the sum's order differs)."""
    make = (lambda: runtime.make_strategy("mirrored", cpu_replicas=2)) if strategy == "mirrored" else None
    make = make or (lambda: runtime.make_strategy("one_device"))
    common = dict(optimizer=_sgd_with_schedule, weight_decay=1e-2, clip_norm=0.5)
    whole, whole_metrics = train_small_model(make(), 2, 32, **common)
    micro, micro_metrics = train_small_model(make(), 2, 16, accumulate_steps=2, **common)
    before, _ = train_small_model(make(), 0, 32, **common)
    assert any(np.abs(a - b).max() > 1e-3 for a, b in zip(whole, before))  # it trained
    for a, b in zip(whole, micro):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert micro_metrics == pytest.approx(whole_metrics, rel=1e-5)  # loss and accuracy over all 64


def test_through_resnet_train_batch_32_twice_is_batch_64_where_batch_norm_is_frozen(tmp_path, cli):
    """finetune.freeze=backbone keeps batch norm in inference mode (its statistics do not depend
    on the batch), so the head trained on 2 micro-batches of 32 is the head trained on 64."""
    runs = {}
    for name, args in (("whole", ["batch_size=64"]), ("micro", ["batch_size=32", "optimizer.accumulate_steps=2"])):
        run = tmp_path / name
        done = cli(*TINY, *args, "epochs=2", "finetune.freeze=backbone", "seed=3", f"hydra.run.dir={run}")
        assert done.returncode == 0, done.stderr[-2000:]
        runs[name] = json.loads((run / "results.json").read_text())
    assert runs["micro"]["steps"] == runs["whole"]["steps"] == 2 * (128 // 64)  # optimizer steps
    assert runs["micro"]["test"]["loss"] == pytest.approx(runs["whole"]["test"]["loss"], rel=1e-5)
    log = (tmp_path / "micro" / "train.log").read_text()
    assert "2 micro-batches of 32 per optimizer step" in log


ACCUMULATED = (
    *TINY,
    "batch_size=16",
    "optimizer.accumulate_steps=2",
    "epochs=2",
    "augment.mixup_alpha=0.4",
    "ema.decay=0.9",
    "checkpoint.every_steps=3",
)


def test_a_run_stopped_mid_epoch_resumes_exactly_and_checkpoints_fall_between_optimizer_steps(tmp_path, monkeypatch):
    """Accumulation lives inside one optimizer step: a stop, a checkpoint and a resume fall
    between steps, never inside one (an interrupted accumulation is redone from its first
    micro-batch), so the resumed run is the uninterrupted one."""
    from helpers import StepStop
    from test_faults import assert_same_run

    from resnet_train.errors import Preempted

    straight = tmp_path / "straight"
    train_and_evaluate(compose(*ACCUMULATED), straight)
    stop = StepStop(monkeypatch, at=5)
    run = tmp_path / "run"
    with pytest.raises(Preempted, match="at step 6 of 8"):  # 128 // (16 x 2) = 4 optimizer steps an epoch
        train_and_evaluate(compose(*ACCUMULATED), run)
    stop.steps = 0
    train_and_evaluate(compose(*ACCUMULATED), run)
    assert stop.steps == 8 - 6
    assert_same_run(run, straight, steps=8)


def test_accumulate_steps_below_one_is_refused(tmp_path, cli):
    done = cli(*TINY, "optimizer.accumulate_steps=0", f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 2 and "optimizer.accumulate_steps must be a positive integer (got 0)" in done.stderr
    too_big = cli(*TINY, "batch_size=96", "optimizer.accumulate_steps=2", f"hydra.run.dir={tmp_path / 'run2'}")
    assert too_big.returncode == 2
    assert "batch_size=96 x optimizer.accumulate_steps=2 is larger than the 128 training images" in too_big.stderr


@pytest.mark.parametrize("bad", [0, 1])
def test_under_float16_an_overflow_in_any_micro_batch_skips_the_whole_step(bad):
    """README: loss scaling counts optimizer steps; an inf in micro-batch `bad` of 2 must leave
    every weight as it was (not apply the other micro-batch's half) and halve the loss scale."""
    import tensorflow as tf

    from resnet_train.optim import build_optimizer
    from resnet_train.training.trainer import Trainer

    keras.mixed_precision.set_global_policy("mixed_float16")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, dtype="float32")(hidden))
    optimizer = build_optimizer({"name": "sgd", "momentum": 0.9}, 0.1, loss_scaling=True)
    optimizer.build(model.trainable_variables)
    trainer = Trainer(model, optimizer, tf.distribute.get_strategy(), 2, num_classes=3, accumulate_steps=2)
    good = (np.ones((2, 4), np.float32), np.array([0, 1]))
    trainer.train_steps(iter([good, good]), 1)  # one optimizer step of two micro-batches
    assert int(optimizer.iterations.numpy()) == 1
    before = [v.numpy().copy() for v in model.trainable_variables]
    scale = float(optimizer.dynamic_scale.numpy())
    overflow = np.ones((2, 4), np.float32)
    overflow[0, 0] = np.inf
    micro_batches = [good, good]
    micro_batches[bad] = (overflow, np.array([0, 1]))
    trainer.train_steps(iter(micro_batches), 1)
    for old, new in zip(before, model.trainable_variables):
        np.testing.assert_array_equal(old, new.numpy())
    assert int(optimizer.iterations.numpy()) == 1 and float(optimizer.dynamic_scale.numpy()) == scale / 2
