"""TF_CONFIG and SLURM parsing (no TensorFlow needed)."""

import json

import pytest

from resnet_train.errors import ConfigError
from resnet_train.runtime import cluster


def tf_config(monkeypatch, kind, index, chief=False):
    spec = {"worker": ["h1:1", "h2:1"]}
    if chief:
        spec["chief"] = ["h0:1"]
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": spec, "task": {"type": kind, "index": index}}))


def test_chief_is_worker_zero_unless_there_is_a_chief(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert cluster.task() is None and cluster.is_chief() and cluster.worker_suffix() == ""
    tf_config(monkeypatch, "worker", 0)
    assert cluster.is_chief() and cluster.task() == ("worker", 0, 2)
    tf_config(monkeypatch, "worker", 1)
    assert not cluster.is_chief() and cluster.worker_suffix() == "_worker1"
    tf_config(monkeypatch, "worker", 0, chief=True)
    assert not cluster.is_chief() and cluster.task()[2] == 3
    tf_config(monkeypatch, "chief", 0, chief=True)
    assert cluster.is_chief()


def test_bad_tf_config_is_a_config_error(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ConfigError, match="TF_CONFIG must be JSON"):
        cluster.task()


def test_slurm_tf_config_from_hosts_and_procid(monkeypatch):
    monkeypatch.setenv("SLURM_PROCID", "1")
    conf = json.loads(cluster.slurm_tf_config(["node1", "node2"]))
    assert conf == {"cluster": {"worker": ["node1:12345", "node2:12345"]}, "task": {"type": "worker", "index": 1}}
    with pytest.raises(ConfigError):
        cluster.slurm_tf_config([])


def test_the_readme_slurm_line_prints_tf_config():
    """README's SLURM script runs `python -m resnet_train.runtime.cluster $hosts` in each task."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    module = re.search(r"python -m ([\w.]+) \$hosts", readme).group(1)
    done = subprocess.run(
        [sys.executable, "-m", module, "node1", "node2"],
        capture_output=True,
        text=True,
        env={**os.environ, "SLURM_PROCID": "1"},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "cluster": {"worker": ["node1:12345", "node2:12345"]},
        "task": {"type": "worker", "index": 1},
    }
