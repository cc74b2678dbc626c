"""GPUs: the suite hides them (conftest.py), and the GPU tier (`make test-gpu`, `pytest -m gpu`)
checks on a machine with one what the CPU suite can only stand in for. The tier is skipped, and
says so in pytest's summary, where TensorFlow sees no GPU. scripts/gpu_check.py measures the rest
(images/s, XLA) and prints it as JSON."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from helpers import train_small_model

from resnet_train.runtime import devices as runtime

gpu = pytest.mark.gpu


def test_the_suite_hides_gpus_from_itself_and_every_process_it_starts(request):
    from conftest import gpu_tier

    if gpu_tier(request.config):
        pytest.skip("the GPU tier sees the GPUs")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "-1"
    assert tf.config.list_physical_devices("GPU") == []
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.stdout.strip() == "-1"


@pytest.fixture
def exact_float32():
    """TF32 (on by default on Ampere and later) rounds float32 matmuls and convolutions to a 10-bit
    mantissa: off for checks that compare float32 results closely."""
    tf.config.experimental.enable_tensor_float_32_execution(False)
    yield
    tf.config.experimental.enable_tensor_float_32_execution(True)


@gpu
def test_one_device_is_the_gpu_and_float16_skips_an_overflow():
    import gpu_check  # its float16 check: runtime=one_device, mixed_float16, an inf in the second batch

    report = gpu_check.float16(False)
    assert any("GPU" in d for d in report["devices"]), report
    assert report["overflow_step_skipped"] and report["loss_scale_halved"]


@gpu
def test_mirrored_over_every_gpu_gives_the_one_device_weights(exact_float32):
    if len(tf.config.list_physical_devices("GPU")) < 2:
        pytest.skip("one GPU: MirroredStrategy over several needs two or more")
    one, _ = train_small_model(runtime.make_strategy("one_device"))
    every, _ = train_small_model(runtime.make_strategy("mirrored"))
    for a, b in zip(one, every):  # only the order of the all-reduce's sums differs
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-6)


@gpu
def test_op_determinism_makes_gpu_runs_bitwise_identical():
    tf.config.experimental.enable_op_determinism()  # conftest turns it off again after the test
    first, _ = train_small_model(runtime.make_strategy("one_device"))
    second, _ = train_small_model(runtime.make_strategy("one_device"))
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_the_gpu_check_script_runs_its_checks_on_any_machine(capsys):
    """scripts/gpu_check.py is meant for a first GPU: its device-side checks run here too, tiny
    (the command's images/s rows are scripts/benchmarks.py's, tested in test_bench.py)."""
    import gpu_check

    report = gpu_check.main(["--smoke", "--only", "devices", "float16", "determinism"])
    assert report["float16"]["overflow_step_skipped"] and report["float16"]["loss_scale_halved"]
    assert report["determinism"]["bitwise_identical"]
    assert report["devices"]["gpus"] == [] and "tensorflow" in report["devices"]
    assert '"float16"' in capsys.readouterr().out  # printed as JSON
