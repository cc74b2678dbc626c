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


# What Kubeflow's restartPolicy: ExitCode retries (training-operator's IsRetryableExitCode).
KUBEFLOW_RETRIED = {130, 137, 138, 143}


def test_the_tfjob_example_is_our_command_line_on_a_shared_run_directory(monkeypatch):
    import yaml
    from helpers import compose

    from resnet_train.config import validate
    from resnet_train.runtime import cluster

    job = yaml.safe_load((ROOT / "docs" / "tfjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v1", "TFJob")
    replicas = job["spec"]["tfReplicaSpecs"]
    assert set(replicas) == {"Chief", "Worker"}  # no PS or Evaluator: we would refuse them
    commands = set()
    for spec in replicas.values():
        assert spec["restartPolicy"] == "ExitCode"
        pod = spec["template"]["spec"]
        (container,) = pod["containers"]
        assert container["name"] == "tensorflow"  # the container TFJob sets TF_CONFIG in
        assert container["command"] == ["resnet-train"]
        commands.add(tuple(container["args"]))
        shared = {v["name"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
        mounts = [m["mountPath"] for m in container["volumeMounts"] if m["name"] in shared]
        run_dir = next(a.split("=", 1)[1] for a in container["args"] if a.startswith("hydra.run.dir="))
        assert any(run_dir.startswith(m.rstrip("/") + "/") for m in mounts), (run_dir, mounts)  # shared
    (args,) = commands  # every replica runs the same command

    cfg = compose(*args)  # composes (an unknown key or bad value would raise) and validates
    validate(cfg)
    assert cfg.runtime.strategy == "multi_worker"
    assert cfg.runtime.retry_exit_code in KUBEFLOW_RETRIED

    # The TF_CONFIG Kubeflow gives the chief of this job: it is our chief, the workers are not.
    name, workers = job["metadata"]["name"], replicas["Worker"]["replicas"]
    spec = {"chief": [f"{name}-chief-0.default.svc:2222"]}
    spec["worker"] = [f"{name}-worker-{i}.default.svc:2222" for i in range(workers)]
    for role, index, chief in (("chief", 0, True), ("worker", 0, False)):
        conf = {"cluster": spec, "task": {"type": role, "index": index}, "environment": "cloud"}
        monkeypatch.setenv("TF_CONFIG", json.dumps(conf))
        assert cluster.is_chief() == chief and cluster.task()[2] == 1 + workers


def test_the_readme_vertex_command_puts_the_run_on_the_cloud_storage_mount():
    """README's Vertex AI container command, run by sh with the AIP_CHECKPOINT_DIR Vertex passes:
    its arguments compose, and the run directory is the /gcs/ path of the checkpoint directory."""
    import re
    import subprocess

    from helpers import compose

    readme = (ROOT / "README.md").read_text()
    line = re.search(r"sh -c '(exec resnet-train .*?)'\n", readme, re.S).group(1)
    assert "runtime.retry_exit_code=138" in readme and "docs/tfjob.yaml" in readme
    env = {"PATH": os.environ["PATH"], "AIP_CHECKPOINT_DIR": "gs://bucket/base/checkpoints/"}
    shown = line.replace("exec resnet-train", "printf '%s\\n'")
    args = subprocess.run(["sh", "-c", shown], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert "hydra.run.dir=/gcs/bucket/base/checkpoints/run" in args
    assert compose(*args).runtime.strategy == "multi_worker"
