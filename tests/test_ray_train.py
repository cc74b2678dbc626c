"""resnet-ray-train on a local Ray cluster (127.0.0.1, no dashboard, 2 CPUs): Ray Train's
TensorflowTrainer runs two workers of runtime=multi_worker on one run directory.

A Ray cluster and each fit start several Python processes (Ray's controller and every worker import
TensorFlow): one cluster serves both fits, started and shut down inside one fixture, which checks
that no process of it is left."""

import json
import os
import tempfile
import uuid

import leaks
import numpy as np
import pytest
from helpers import TINY, compose
from test_multi_worker import model_weights

from resnet_train.cli import ray_train
from resnet_train.training.loop import train_and_evaluate

# 128 images in batches of 32: 4 steps an epoch, 8 in all; a checkpoint every 2 steps.
RUN = (
    *(o for o in TINY if not o.startswith("runtime=")),
    "runtime.precision=float32",
    "runtime.deterministic=true",
    "epochs=2",
    "checkpoint.every_steps=2",
)
TOTAL = 8
KILLED_AFTER = 2  # the chief's first checkpoint save
CLUSTER_MARK = "RESNET_TEST_RAY_CLUSTER"
# Before ray is imported: the node's address is the loopback (not the address the machine is
# reached by), no usage report, fewer helper processes, a dead worker seen within a second.
RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
}


def killing_worker(marker: str):
    """train_worker, but on the first attempt the chief ends its process (os._exit, as a killed
    node would) right after its first checkpoint save; the marker file says it happened."""

    def worker(job):
        import os
        from pathlib import Path

        from resnet_train.runtime import cluster

        if cluster.is_chief() and not Path(marker).exists():
            from resnet_train.training.checkpoint import Checkpointer

            save = Checkpointer.save

            def save_then_die(self, step, epoch):
                path = save(self, step, epoch)
                Path(marker).write_text(str(step))
                os._exit(1)
                return path

            Checkpointer.save = save_then_die
        return ray_train.train_worker(job)

    return worker


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The run in one process: the same global batches split the same way over 2 replicas."""
    run = tmp_path_factory.mktemp("single") / "run"
    return run, train_and_evaluate(compose(*RUN, "runtime=mirrored", "runtime.cpu_replicas=2"), run)


@pytest.fixture(scope="module")
def ray_runs(tmp_path_factory):
    """Two fits on one local Ray cluster: the run straight through, and the run whose chief dies
    after step 2 on the first attempt. {name: (exit code, run directory)}, the marker's step."""
    base = tmp_path_factory.mktemp("ray")
    marker = base / "killed.marker"
    saved = {key: os.environ.get(key) for key in (*RAY_ENV, CLUSTER_MARK)}
    mark = uuid.uuid4().hex
    os.environ.update(RAY_ENV, **{CLUSTER_MARK: mark})  # every process of the cluster inherits it
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay under 108 bytes
    settings = {"workers": 2, "max_failures": 1, "cpus_per_worker": 1.0, "address": None}
    runs = {}
    import ray

    try:
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            object_store_memory=80 * 2**20,
            _temp_dir=temp,
        )
        for name, worker in (("together", ray_train.train_worker), ("killed", killing_worker(str(marker)))):
            job = ray_train.job([*RUN, f"hydra.run.dir={base / name}"])
            runs[name] = (ray_train.fit(job, settings, worker=worker), base / name)
    finally:
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        left = leaks.outliving(CLUSTER_MARK, mark, grace_s=30)
        import shutil

        shutil.rmtree(temp, ignore_errors=True)
    assert not left, f"processes of the Ray cluster outlived it (killed now): {left}"
    return runs, int(marker.read_text()) if marker.exists() else None


def train_records(run):
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"]


def assert_same_weights(results, single_results):
    a, b = model_weights(results["checkpoint"]), model_weights(single_results["checkpoint"])
    assert a.keys() == b.keys() and sum(k.startswith("optimizer/_trainable_variables/") for k in a) > 10
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.cluster  # minutes of Ray and worker start-up: the cluster tier (make test-cluster)
def test_two_ray_workers_train_like_one_process(ray_runs, single):
    """TensorflowTrainer's two workers on one run directory: only the chief wrote the run's files,
    and the weights, optimizer slots and BN statistics equal one process's on the same global
    batches, bit for bit (two replicas: every all-reduce is one exact addition)."""
    runs, _ = ray_runs
    code, run = runs["together"]
    assert code == 0
    results = json.loads((run / "results.json").read_text())
    assert results["replicas"] == 2 and results["steps"] == TOTAL
    assert "MultiWorkerMirroredStrategy" in (run / "train.log").read_text() and (run / "train_worker1.log").exists()
    assert [r["step"] for r in train_records(run)] == [4, 8]  # one writer
    assert_same_weights(results, single[1])


@pytest.mark.cluster
def test_a_killed_ray_worker_is_restarted_and_the_run_resumes_without_lost_or_repeated_steps(ray_runs, single):
    """The chief ended its process right after its checkpoint of step 2 on the first attempt: Ray
    started both workers again, the run continued at step 2 and ended as the uninterrupted run did
    (the epoch records' running sums and the weights: no step lost or trained twice)."""
    runs, killed_at = ray_runs
    code, run = runs["killed"]
    assert killed_at == KILLED_AFTER and code == 0
    log = (run / "train.log").read_text()
    assert f"Continuing at step {KILLED_AFTER} of {TOTAL}" in log
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] == TOTAL
    records, straight = train_records(run), train_records(runs["together"][1])
    assert [r["step"] for r in records] == [4, 8]
    for record, other in zip(records, straight):
        assert record["loss"] == pytest.approx(other["loss"], rel=1e-6)
        assert record["accuracy"] == other["accuracy"]
    assert_same_weights(results, single[1])


@pytest.mark.parametrize(
    "args, line",
    [
        (
            ["ray.workers=0"],
            "ray.workers must be a positive integer, the Ray workers (one training process each) (got '0')",
        ),
        (["ray.max_failures=-2"], "ray.max_failures must be an integer >= -1: restarts of the workers after a failure"),
        (["ray.cpus_per_worker=none"], "ray.cpus_per_worker must be a positive number"),
        (["ray.address="], "ray.address must be a Ray cluster's address"),
        (["ray.worker=2"], "unknown setting ray.worker (did you mean ray.workers?): ray.* takes workers, max_failures"),
        (["-m", "depth=8,14"], "-m is not supported by resnet-ray-train: it runs one training run"),
        (["runtime=mirrored"], "resnet-ray-train runs runtime=multi_worker (one process per Ray worker): drop the"),
        (["depth=7"], "CIFAR ResNet depth must be 6n+2"),
        (["optimizer=sgdd"], "unknown optimizer 'sgdd' (did you mean sgd?)"),
    ],
)
def test_bad_settings_are_one_line_and_exit_2_before_ray_starts(args, line, capsys, tmp_path):
    with pytest.raises(SystemExit) as stop:
        ray_train.main([*args, f"hydra.run.dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert stop.value.code == 2
    (message,) = [text for text in err.splitlines() if text.startswith("resnet-ray-train:")]
    assert message.startswith(f"resnet-ray-train: error: {line}"), err
    assert "Traceback" not in err and not (tmp_path / "run").exists()
