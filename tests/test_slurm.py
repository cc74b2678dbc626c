"""SLURM for real: a one-node cluster on 127.0.0.1 (tests/slurm_cluster.py) runs the README's
batch script (docs/slurm/train.sbatch) with two tasks, a job stopped by its time-limit warning and
requeued, and Hydra's submitit launcher. `make test-cluster`; `make test` skips these."""

import json

import pytest
import slurm_cluster

from resnet_train.runtime import cluster

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="session")
def slurm():
    cluster = slurm_cluster.start()
    yield cluster
    cluster.stop()


def test_two_tasks_on_the_node_compute_their_tf_config_with_ports_of_their_own(slurm, tmp_path):
    """srun's real variables (SLURM_JOB_ID, SLURM_STEP_TASKS_PER_NODE, SLURM_PROCID, SLURM_LOCALID):
    one cluster of two workers, each task at its own index and port of the job's block."""
    script = tmp_path / "tf_config.sbatch"
    script.write_text(
        '#!/bin/bash\nhosts=$(scontrol show hostnames "$SLURM_JOB_NODELIST")\n'
        'srun bash -c "python -m resnet_train.runtime.cluster $hosts > tf_config_\\$SLURM_PROCID.json"\n'
    )
    job = slurm.sbatch("--ntasks=2", f"--chdir={tmp_path}", f"--output={tmp_path}/%j.out", str(script))
    fields = slurm.wait_job(job, lambda f: f["JobState"] not in ("PENDING", "RUNNING"), 60, "end")
    assert fields["JobState"] == "COMPLETED", slurm.logs(job)
    base = cluster.job_port(job)
    confs = [json.loads((tmp_path / f"tf_config_{i}.json").read_text()) for i in range(2)]
    workers = [f"{slurm.node}:{base}", f"{slurm.node}:{base + 1}"]
    assert confs == [{"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}} for i in range(2)]
