"""float16 loss scaling on several replicas: an overflow on one replica only is skipped everywhere.

The default on 2+ GPUs of compute capability >= 7.0. Keras' LossScaleOptimizer decides "finite or
not" from the first local replica (it expects summed gradients); the Trainer all-reduces the
decision so that every replica and every worker skips together (trainer.py).
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
from helpers import ROOT, run_on_free_ports
from replica_overflow import one_step

from resnet_train.runtime.devices import mirrored

HERE = Path(__file__).resolve().parent


def assert_skipped_everywhere(result):
    assert result["steps_run"] == 1 and result["nonfinite_steps"] == 1  # counted as a skipped step
    assert result["iterations"] == 0  # the optimizer applied nothing
    assert result["scale_after"] == result["scale_before"] / 2  # and lowered the scale
    for name, replicas in result["weights_after"].items():
        for replica, after in enumerate(replicas):
            # weights unchanged, on every replica (so the replicas are still identical)
            np.testing.assert_array_equal(after, result["weights_before"][name][replica], err_msg=name)


def test_overflow_on_the_second_of_two_replicas_skips_the_step_on_both():
    strategy = mirrored(["/cpu:0", "/cpu:1"])
    result = one_step(strategy, bad_replica=1)
    assert_skipped_everywhere(result)


def test_overflow_on_the_first_replica_is_skipped_too():
    result = one_step(mirrored(["/cpu:0", "/cpu:1"]), bad_replica=0)
    assert_skipped_everywhere(result)


def test_a_finite_step_on_two_replicas_is_applied():
    result = one_step(mirrored(["/cpu:0", "/cpu:1"]), bad_replica=-1)
    assert result["nonfinite_steps"] == 0 and result["iterations"] == 1
    assert result["scale_after"] == result["scale_before"]
    conv = next(name for name in result["weights_after"] if "conv" in name and "kernel" in name)
    first, second = (np.asarray(w) for w in result["weights_after"][conv])
    assert not np.array_equal(first, np.asarray(result["weights_before"][conv][0]))
    np.testing.assert_array_equal(first, second)


def test_two_workers_take_the_same_skip_decision_without_hanging(tmp_path):
    """Worker 1's gradients overflow, worker 0's do not: both skip, nobody waits for the other."""

    def launches(ports):
        hosts = [f"127.0.0.1:{port}" for port in ports]
        for index in range(2):
            tf_config = {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}
            env = {
                **os.environ,
                "TF_CONFIG": json.dumps(tf_config),
                "TMPDIR": str(tmp_path),
                "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)]),
            }
            yield {"args": [sys.executable, str(HERE / "replica_overflow.py"), "1"], "env": env, "cwd": tmp_path}

    # A split decision hangs in the update's collectives: the timeout ends it.
    results = []
    for code, out, err in run_on_free_ports(2, launches, tmp_path, timeout=240):
        assert code == 0, err[-3000:]
        results.append(json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:]))
    for result in results:
        assert_skipped_everywhere(result)
    assert results[0]["weights_after"] == results[1]["weights_after"]
