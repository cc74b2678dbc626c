"""Strategies and precisions: MirroredStrategy over 2 logical CPUs equals one device, evaluation
counts each example once, float16 loss scaling skips non-finite steps, bfloat16 learns."""

import json
import logging

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import TINY, compose, train_small_model

from resnet_train.config import check_replicas
from resnet_train.errors import ConfigError
from resnet_train.models import build
from resnet_train.optim import build_optimizer
from resnet_train.runtime import devices as runtime
from resnet_train.training.checkpoint import Checkpointer
from resnet_train.training.loop import train_and_evaluate
from resnet_train.training.trainer import Trainer

SEED = 0  # seeds 0-4 measured where a test says so


def weights(checkpoint):
    reader = tf.train.load_checkpoint(checkpoint)
    return {
        k: reader.get_tensor(k)
        for k in reader.get_variable_to_shape_map()
        if k.endswith("VARIABLE_VALUE") and "save_counter" not in k
    }  # model, optimizer slots, step


def test_auto_precision_follows_the_hardware(monkeypatch):
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [])
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx512f", "amx_bf16", "avx512_bf16"})
    monkeypatch.setattr(runtime.onednn, "enabled", lambda: True)
    assert runtime.auto_precision() == ("mixed_bfloat16", "CPU has amx_bf16 and avx512_bf16")
    # Only oneDNN's kernels use bfloat16 instructions: without them bfloat16 is emulated (8x slower).
    monkeypatch.setattr(runtime.onednn, "enabled", lambda: False)
    assert runtime.auto_precision() == (
        "float32",
        "CPU has amx_bf16 and avx512_bf16, but oneDNN's kernels are off (runtime.onednn)",
    )
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx512f", "avx2"})
    assert runtime.auto_precision() == ("float32", "no GPU and no native bfloat16 on this CPU")
    gpu = tf.config.PhysicalDevice("/physical_device:GPU:0", "GPU")
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [gpu] if kind == "GPU" else [])
    monkeypatch.setattr(tf.config.experimental, "get_device_details", lambda d: {"compute_capability": (8, 0)})
    assert runtime.auto_precision()[0] == "mixed_float16"
    monkeypatch.setattr(tf.config.experimental, "get_device_details", lambda d: {"compute_capability": (6, 1)})
    assert runtime.auto_precision()[0] == "float32"


def test_bad_runtime_settings_are_config_errors():
    with pytest.raises(ConfigError, match="needs TF_CONFIG"):
        runtime.make_strategy("multi_worker")
    with pytest.raises(ConfigError, match="does not divide over 2 replicas: use a multiple of 2, e.g. 32 or 34"):
        check_replicas(compose("batch_size=33"), 2)


def test_devices_that_do_not_exist_are_refused_naming_those_that_do():
    """TF's soft placement would run a strategy "over GPU:7" on the CPU, the log naming GPU:7."""
    message = (
        "runtime.devices: /gpu:7 is not a device of this machine, which has /device:CPU:0, /device:CPU:1 "
        "(omit runtime.devices to use every GPU, or the CPU)"
    )
    for strategy in ("mirrored", "one_device", "auto"):
        with pytest.raises(ConfigError) as refused:
            runtime.make_strategy(strategy, ["/cpu:0", "/gpu:7"], cpu_replicas=2)
        assert str(refused.value) == message
    with pytest.raises(ConfigError, match="/cpu:5 is not a device"):
        runtime.make_strategy("mirrored", ["/cpu:5"], cpu_replicas=2)
    with pytest.raises(ConfigError, match="not a device name is not a device"):
        runtime.make_strategy("mirrored", ["not a device name"], cpu_replicas=2)
    strategy = runtime.make_strategy("mirrored", ["/cpu:0", "CPU:1"], cpu_replicas=2)  # any spelling TF reads
    assert strategy.num_replicas_in_sync == 2


def _train_small_model(strategy, steps=4, global_batch=16):
    return train_small_model(strategy, steps, global_batch, weight_decay=1e-2)


def test_two_cpu_replicas_give_the_one_device_weights():
    one, one_metrics = _train_small_model(runtime.make_strategy("one_device"))
    two, two_metrics = _train_small_model(runtime.make_strategy("mirrored", cpu_replicas=2))
    # Only the order of summation differs. Over seeds 0-4 with TF_ENABLE_ONEDNN_OPTS=0 and =1 (AMD
    # EPYC Zen 4) the weights differed by at most 7.9e-7 and the loss by 8.5e-8 relative.
    for a, b in zip(one, two):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-6)
    assert one_metrics["loss"] == pytest.approx(two_metrics["loss"], rel=1e-6)
    # And the check can fail: a different global batch gives different weights.
    other, _ = _train_small_model(runtime.make_strategy("one_device"), global_batch=8)
    assert not all(np.allclose(a, b, rtol=1e-3) for a, b in zip(one, other))


def test_one_cpu_device_is_the_default_strategy_with_one_device_strategys_results(tmp_path, monkeypatch, caplog):
    """runtime=one_device on the CPU runs under TF's default strategy (OneDeviceStrategy made the
    step 1.85x slower with oneDNN off: runtime.one_device). The same kernels: a ResNet trained
    through the real pipeline ends with the same weights, BN statistics and optimizer slots, bit
    for bit, as under OneDeviceStrategy (measured: identical over seeds 0-4, TF_ENABLE_ONEDNN_OPTS=0 and =1)."""
    strategy = runtime.make_strategy("one_device")
    assert strategy is tf.distribute.get_strategy() and runtime.strategy_name(strategy) == "default (one device)"
    assert runtime.strategy_devices(strategy) == [tf.config.list_logical_devices("CPU")[0].name]
    overrides = (*TINY, "epochs=1", "augment=standard", f"seed={SEED}")
    caplog.set_level(logging.INFO, logger=runtime.__name__)
    ours = train_and_evaluate(compose(*overrides), tmp_path / "ours")
    assert "Strategy default (one device) over 1 replica(s)" in caplog.text
    monkeypatch.setattr(runtime, "one_device", tf.distribute.OneDeviceStrategy)
    theirs = train_and_evaluate(compose(*overrides), tmp_path / "theirs")
    assert "Strategy OneDeviceStrategy over 1 replica(s)" in caplog.text
    a, b = weights(ours["checkpoint"]), weights(theirs["checkpoint"])
    assert a.keys() == b.keys() and any("moving_mean" in k for k in a)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    # The same weights evaluated under the two strategies: the evaluation's sums may be ordered
    # differently (AMD EPYC Zen 3, oneDNN off: the test loss 1e-7 apart relative), the rest equal.
    assert ours["test"] == pytest.approx(theirs["test"], rel=1e-6)
    # Another CPU than the first is not TF's default placement: OneDeviceStrategy keeps it there.
    monkeypatch.undo()
    assert isinstance(runtime.one_device("/cpu:1"), tf.distribute.OneDeviceStrategy)


def test_full_resnet_run_on_two_replicas_sees_the_same_batches(tmp_path):
    # One step: the same initial weights and the same batch, so only summation order differs (the
    # loss differed by <= 6.2e-7 relative over seeds 0-3, oneDNN on and off; after several steps
    # sync BN's E[x^2] - E[x]^2 rounding compounds to 1e-3). A different batch moves it by ~1e-2.
    common = (
        *TINY,
        "epochs=1",
        "data.limit_train=32",
        "model.sync_bn=true",
        "runtime.precision=float32",
        "runtime.deterministic=true",
    )
    one = train_and_evaluate(compose(*common, "runtime=one_device"), tmp_path / "one")
    two = train_and_evaluate(compose(*common, "runtime=mirrored", "runtime.cpu_replicas=2"), tmp_path / "two")
    assert (one["replicas"], two["replicas"]) == (1, 2) and one["steps"] == two["steps"] == 1

    def first_loss(run):
        return json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["loss"]

    # Same global batch and synchronised BN: the same forward pass (the first step's loss).
    assert first_loss(tmp_path / "two") == pytest.approx(first_loss(tmp_path / "one"), rel=1e-5)
    assert two["test"]["examples"] == one["test"]["examples"] == 64


def test_evaluation_counts_every_example_once_across_replicas():
    strategy = runtime.make_strategy("mirrored", cpu_replicas=2)
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        model = build(8, 3, (8, 8, 3), variant="cifar")
    trainer = Trainer(model, keras.optimizers.SGD(0.1), strategy, 4, num_classes=3)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (13, 8, 8, 3)).astype(np.uint8)  # 13: divides by neither 4 nor 2
    labels = rng.integers(0, 3, 13).astype(np.int64)
    from resnet_train.data import pipeline

    ds = pipeline.eval_batches(tf.data.Dataset.from_tensor_slices((images, labels)), 4, size=13, image_shape=(8, 8, 3))
    metrics = trainer.evaluate(strategy.experimental_distribute_dataset(ds))
    assert metrics["examples"] == 13
    logits = model(images, training=False).numpy()
    assert metrics["accuracy"] == pytest.approx(np.mean(logits.argmax(-1) == labels))
    expected_loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits).numpy().mean()
    assert metrics["loss"] == pytest.approx(expected_loss, rel=1e-5)


def test_mixed_float16_scales_the_loss_and_skips_non_finite_steps(tmp_path):
    keras.mixed_precision.set_global_policy("mixed_float16")
    strategy = tf.distribute.get_strategy()
    # No batch norm here: a non-finite forward pass must leave every variable untouched.
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, dtype="float32")(hidden))
    optimizer = build_optimizer({"name": "sgd", "momentum": 0.9}, 0.1, loss_scaling=True)
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    optimizer.build(model.trainable_variables)
    trainer = Trainer(model, optimizer, strategy, 2, weight_decay=1e-4, num_classes=3)
    assert all(v.dtype == "float32" for v in model.trainable_variables)  # float32 master weights
    assert model.layers[1].compute_dtype == "float16" and model(np.ones((1, 4))).dtype == "float32"

    good = iter([(np.ones((2, 4), np.float32), np.array([0, 1]))])
    trainer.train_steps(good, 1)
    assert optimizer.iterations.numpy() == 1
    before = [v.numpy().copy() for v in model.trainable_variables]
    scale = float(optimizer.dynamic_scale.numpy())
    bad = np.ones((2, 4), np.float32)
    bad[0, 0] = np.inf  # an inf in the batch: non-finite gradients
    trainer.train_steps(iter([(bad, np.array([0, 1]))]), 1)
    for old, new in zip(before, model.trainable_variables):
        np.testing.assert_array_equal(old, new.numpy())  # the step was skipped
    assert float(optimizer.dynamic_scale.numpy()) == scale / 2  # and the scale lowered

    # The loss scale is checkpointed and restored with the optimizer.
    ckpt = Checkpointer(tmp_path / "ck", model, optimizer)
    ckpt.save(2, 1)
    optimizer.dynamic_scale.assign(7.0)
    assert ckpt.restore_latest() and float(optimizer.dynamic_scale.numpy()) == scale / 2


def test_bfloat16_training_learns_and_keeps_float32_weights(tmp_path):
    # 16x16 images, 3 epochs of 512 (48 steps): 32x32 and 4 epochs took 90 s on a Zen 3, where
    # bfloat16 is emulated; a 16th of the pixels and 3/4 of the steps still learn with margin.
    cfg = compose(*TINY, "epochs=3", "data.limit_train=512", "data.image_size=16",
                  "runtime.precision=mixed_bfloat16", "runtime.deterministic=true")  # fmt: skip
    results = train_and_evaluate(cfg, tmp_path)
    assert results["precision"] == "mixed_bfloat16"
    train = [
        json.loads(line)
        for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["split"] == "train"
    ]
    # The last epoch's loss over the first's, seeds 0-4, this run (16x16, 3 epochs): 0.56-0.68 on
    # a 2-core AMD EPYC Zen 3 (AVX2 only: emulated), TF_ENABLE_ONEDNN_OPTS=0 and =1 alike; 0.57-0.70
    # on a Zen 4 (native AVX512-BF16; 0.59-0.70 oneDNN on, 0.57-0.68 off). (The 32x32,
    # 4-epoch run it replaced: 0.51-0.63 on a Zen 4, 0.51-0.62 on a Zen 3, oneDNN on and off.)
    assert train[-1]["loss"] < 0.8 * train[0]["loss"]
    reader = tf.train.load_checkpoint(results["checkpoint"])
    dtypes = reader.get_variable_to_dtype_map()
    # A trained weight is stored under the first path reaching it, optimizer/_trainable_variables/<i>;
    # model/ holds the BN moving statistics; optimizer/_variables/ the momentum slots.
    floats = [k for k, d in dtypes.items() if k.startswith(("model/", "optimizer/")) and d.is_floating]
    assert sum(k.startswith("optimizer/_trainable_variables/") for k in floats) == len(build(8, 10).trainable_variables)
    assert all(dtypes[k] == tf.float32 for k in floats)  # no bfloat16 weights, slots or statistics


def test_lr_scales_linearly_with_the_global_batch():
    from resnet_train.optim import effective_lr

    assert effective_lr(compose("data=cifar10", "batch_size=256").optimizer, 256) == pytest.approx(0.2)
    assert effective_lr(compose("data=cifar10").optimizer, 128) == pytest.approx(0.1)
    assert effective_lr(compose("data=imagenet", "batch_size=1024").optimizer, 1024) == pytest.approx(0.4)


def test_xla_compiled_step_trains_like_the_plain_one():
    def run(xla):
        keras.utils.set_random_seed(0)
        model = build(8, 4, (8, 8, 3), variant="cifar")
        optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
        optimizer.build(model.trainable_variables)
        trainer = Trainer(model, optimizer, tf.distribute.get_strategy(), 8, weight_decay=1e-4, num_classes=4, xla=xla)
        rng = np.random.default_rng(0)
        batch = (rng.integers(0, 256, (8, 8, 8, 3)).astype(np.uint8), rng.integers(0, 4, 8).astype(np.int64))
        trainer.train_steps(iter(tf.data.Dataset.from_tensors(batch).repeat()), 3)
        return [v.numpy() for v in model.trainable_variables], trainer.train_metrics()["loss"]

    plain, plain_loss = run(False)
    compiled, compiled_loss = run(True)
    # XLA fuses and reorders the same maths: over seeds 0-4 with TF_ENABLE_ONEDNN_OPTS=0 and =1 the
    # loss differed by at most 3.6e-7 relative and the weights by 2.0e-7 (AMD EPYC Zen 4; 2.7e-7 and
    # within atol=1e-6 alone when re-measured on 2026-12-08); 2.8e-7 and within atol=1e-6 alone on a
    # Zen 3, AVX2 only (scripts/threshold_spread.py).
    assert compiled_loss == pytest.approx(plain_loss, rel=2e-6)
    for a, b in zip(plain, compiled):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fused", [True, False])
def test_batch_norm_moving_statistics_are_the_cross_replica_mean(fused):
    """Keras 3 keeps a moving mean per replica (each averages its own batches; a checkpoint saves
    replica 0's). The Trainer averages them across replicas after each call: the same on every
    replica, the mean equal to one device's, the variance the mean of the replicas' batch variances."""
    from resnet_train.models.layers import FusedBatchNorm
    from resnet_train.optim import build_optimizer

    strategy = tf.distribute.MirroredStrategy(
        ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice()
    )
    norm = FusedBatchNorm if fused else keras.layers.BatchNormalization
    with strategy.scope():
        inputs = keras.Input((2, 2, 1))
        bn = norm(momentum=0.0, name="bn")  # momentum 0: the moving statistics are the last batch's
        model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(bn(inputs))))
        optimizer = build_optimizer({"name": "sgd", "momentum": 0.0}, 0.0)
        optimizer.build(model.trainable_variables)
    trainer = Trainer(model, optimizer, strategy, 8, num_classes=2)
    rng = np.random.default_rng(0)
    halves = [rng.normal(0.0, 1.0, (4, 2, 2, 1)), rng.normal(4.0, 3.0, (4, 2, 2, 1))]  # replica 0, replica 1
    images = np.concatenate(halves).astype(np.float32)
    batches = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors((images, np.zeros(8, np.int64))))
    trainer.train_steps(iter(batches), 1)
    means = [v.numpy() for v in strategy.experimental_local_results(bn.moving_mean.value)]
    variances = [v.numpy() for v in strategy.experimental_local_results(bn.moving_variance.value)]
    np.testing.assert_array_equal(means[0], means[1])
    np.testing.assert_array_equal(variances[0], variances[1])
    np.testing.assert_allclose(means[0], [images.mean()], rtol=1e-5)
    # Each replica's variance estimate (the fused kernel's is the unbiased one, Keras' the biased one).
    ddof = 1 if fused else 0
    np.testing.assert_allclose(variances[0], [np.mean([h.var(ddof=ddof) for h in halves])], rtol=1e-5)


@pytest.mark.parametrize("deterministic", [True, False])
def test_runtime_deterministic_is_tensorflows_op_determinism(deterministic):
    """On CPU the kernels are deterministic anyway, so bitwise-equal reruns cannot show the flag
    works; on a GPU they would differ without it. Its effect, TF's own switch, is checked here."""
    from tensorflow.python.framework import config as tf_config

    runtime.configure(seed=SEED, deterministic=deterministic)
    assert tf_config.is_op_determinism_enabled() is deterministic


_TWO_STRATEGIES = """
import tensorflow as tf
from resnet_train.runtime.devices import mirrored, split_cpu
split_cpu(2)
for shape in ([1], [251]):  # two strategies, one after the other, each with its own collectives
    strategy = mirrored(["/cpu:0", "/cpu:1"])  # MirroredStrategy's default on CPUs: RING collectives
    reduce = lambda: tf.distribute.get_replica_context().all_reduce("sum", tf.ones(shape))
    step = tf.function(lambda: strategy.run(reduce))
    print("SUM", strategy.experimental_local_results(step())[0].numpy().sum(), flush=True)
"""


def test_a_second_mirrored_strategy_in_one_process_has_collectives_of_its_own():
    """The next job of an in-process `-m` sweep on several GPUs: TensorFlow would give the second
    strategy the first's collective keys ("Shape mismatch in the collective instance 100", then
    every collective of the process aborted). Run in a process of its own: that abort would
    otherwise break every later test of this worker."""
    import sys

    import launches

    done = launches.run([sys.executable, "-c", _TWO_STRATEGIES], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "SUM 2.0" in done.stdout and "SUM 502.0" in done.stdout
