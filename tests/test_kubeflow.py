"""Kubeflow's TFJob and Vertex AI / AI Platform Training: a `master` chief trains for real with a
worker, TensorFlow's strategy given the cluster our resolver reads (it refuses `master` itself)."""

import json
import os

import pytest
import tensorflow as tf
from helpers import CLI, ROOT, TINY, run_on_free_ports

from resnet_train.runtime import devices

COMMON = (*TINY, "runtime.precision=float32", "runtime.deterministic=true")  # runtime=multi_worker after it


def test_tensorflow_itself_refuses_a_master_task_and_our_resolver_names_it_chief(monkeypatch):
    """Why the resolver exists: TensorFlow's own validation has no `master` task type."""
    from tensorflow.python.distribute import multi_worker_util

    conf = {"cluster": {"master": ["h0:2222"], "worker": ["h1:2222"]}, "task": {"type": "master", "index": 0}}
    with pytest.raises(ValueError, match="Disallowed task type"):
        multi_worker_util.is_chief(conf["cluster"], "master", 0)
    monkeypatch.setenv("TF_CONFIG", json.dumps(conf))
    resolver = devices.TFConfigResolver()
    assert resolver.cluster_spec().as_dict() == {"chief": ["h0:2222"], "worker": ["h1:2222"]}
    assert (resolver.task_type, resolver.task_id) == ("chief", 0)
    assert isinstance(resolver, tf.distribute.cluster_resolver.TFConfigClusterResolver)  # GPUs counted by TF
    assert multi_worker_util.is_chief(resolver.cluster_spec(), resolver.task_type, resolver.task_id)


def test_a_master_and_a_worker_train_together_and_the_master_writes_the_run(tmp_path):
    """AI Platform's TF_CONFIG with a `master` (its shape: environment, job, task.trial) on 127.0.0.1:
    both processes train the same steps; the master writes results, checkpoints and summaries, the
    worker only its own log."""
    run, tmp = tmp_path / "run", tmp_path / "tmp"
    tmp.mkdir()

    def launches(ports):
        cluster = {"master": [f"127.0.0.1:{ports[0]}"], "worker": [f"127.0.0.1:{ports[1]}"]}
        for role in ("master", "worker"):
            conf = {"cluster": cluster, "environment": "cloud", "task": {"type": role, "index": 0, "trial": "1"}}
            conf["job"] = {"scale_tier": "CUSTOM", "worker_count": "1"}
            env = {**os.environ, "TMPDIR": str(tmp), "TF_CONFIG": json.dumps(conf)}
            args = [str(CLI), *COMMON, "runtime=multi_worker", "epochs=1", f"hydra.run.dir={run}"]
            yield {"args": args, "env": env, "cwd": ROOT}

    outputs = run_on_free_ports(2, launches, tmp_path, timeout=300)
    assert [code for code, _, _ in outputs] == [0, 0], [err[-2000:] for _, _, err in outputs]
    results = json.loads((run / "results.json").read_text())
    assert results["epochs"] == 1 and results["test"]["examples"] == 64
    assert tf.train.latest_checkpoint(str(run / "checkpoints")).endswith("ckpt-4")  # 128 images / 32
    assert any((run / "tensorboard").rglob("events.out.tfevents.*"))
    master_log, worker_log = (run / "train.log").read_text(), (run / "train_worker0.log").read_text()
    assert "MultiWorkerMirroredStrategy over 2 replica(s)" in master_log, master_log[-2000:]
    assert "MultiWorkerMirroredStrategy over 2 replica(s)" in worker_log, worker_log[-2000:]
    assert "Test accuracy" in outputs[0][1] and "Run directory" in outputs[0][1]
