"""The workers' addresses a SLURM task computes (runtime/cluster.py's slurm_tf_config): per-job
ports, one port per task on a node, the task's index (no SLURM needed; tests/test_slurm.py runs
them in a real one-node cluster)."""

import json
import sys

import launches
import pytest
from helpers import ROOT

from resnet_train.errors import ConfigError
from resnet_train.runtime import cluster

SLURM_VARIABLES = ("SLURM_JOB_ID", "SLURM_PROCID", "SLURM_LOCALID", "SLURMD_NODENAME")


@pytest.fixture
def task(monkeypatch):
    """task(**variables): this process looks like that SLURM task (and nothing else of SLURM's)."""
    for key in (*SLURM_VARIABLES, "SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"):
        monkeypatch.delenv(key, raising=False)

    def set_up(**variables):
        for key, value in variables.items():
            monkeypatch.setenv(key, str(value))

    return set_up


def workers(hosts, port=None):
    conf = json.loads(cluster.slurm_tf_config(hosts, port))
    return conf["cluster"]["worker"], conf["task"]["index"]


def test_two_tasks_on_each_of_two_nodes_get_a_port_each_from_the_jobs_block(task):
    base = cluster.job_port("4242")
    assert base == 15000 + 4242 % 500 * 32 and base + 31 < 32768  # below the ephemeral ports
    task(SLURM_JOB_ID=4242, SLURM_STEP_TASKS_PER_NODE="2(x2)", SLURM_PROCID=3, SLURM_LOCALID=1, SLURMD_NODENAME="n2")
    addresses, index = workers(["n1", "n2"])
    assert addresses == [f"n1:{base}", f"n1:{base + 1}", f"n2:{base}", f"n2:{base + 1}"] and index == 3


def test_neighbouring_jobs_sharing_a_node_get_disjoint_ports(task):
    blocks = [set(range(cluster.job_port(str(job)), cluster.job_port(str(job)) + 32)) for job in range(1000, 1500)]
    assert all(not (a & b) for i, a in enumerate(blocks) for b in blocks[i + 1 :])


def test_uneven_counts_and_the_job_level_variable(task):
    task(SLURM_JOB_ID=7, SLURM_TASKS_PER_NODE="3,1(x2)", SLURM_PROCID=4)
    addresses, index = workers(["a", "b", "c"], port=20000)  # an explicit first port
    assert addresses == ["a:20000", "a:20001", "a:20002", "b:20000", "c:20000"] and index == 4


def test_outside_slurm_one_task_per_host_on_the_fixed_port(task):
    task(SLURM_PROCID=1)
    assert workers(["node1", "node2"]) == (["node1:12345", "node2:12345"], 1)


@pytest.mark.parametrize(
    "variables, hosts, message",
    [
        ({}, [], "no hosts given"),
        ({"SLURM_TASKS_PER_NODE": "2(x3)"}, ["a", "b"], "2 host\\(s\\) given but SLURM counts tasks on 3 node"),
        ({"SLURM_TASKS_PER_NODE": "two"}, ["a"], "unreadable: 'two'"),
        ({"SLURM_TASKS_PER_NODE": "40"}, ["a"], "40 tasks on one node: at most 32"),
        ({"SLURM_PROCID": 2}, ["a", "b"], "SLURM_PROCID 2 is not one of the 2 tasks on a b"),
        ({"SLURM_JOB_ID": "12_x"}, ["a"], "SLURM_JOB_ID must be a number"),
        # cyclic distribution: task 1 runs on b, where block distribution puts task 1 on a
        (
            {"SLURM_TASKS_PER_NODE": "2(x2)", "SLURM_PROCID": 1, "SLURMD_NODENAME": "b", "SLURM_LOCALID": 0},
            ["a", "b"],
            "task 1 runs as task 0 on b, not 1 on a: .*--distribution=block",
        ),
    ],
)
def test_what_cannot_be_a_cluster_is_one_line(task, variables, hosts, message):
    task(**variables)
    with pytest.raises(ConfigError, match=message):
        cluster.slurm_tf_config(hosts)


def test_the_module_prints_tf_config_or_one_line_and_exit_2(task):
    base = [sys.executable, "-m", "resnet_train.runtime.cluster"]
    task(SLURM_JOB_ID=9, SLURM_TASKS_PER_NODE="2", SLURM_PROCID=1)
    done = launches.run([*base, "vm"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["cluster"]["worker"] == ["vm:15288", "vm:15289"]
    task(SLURM_PROCID=5)
    done = launches.run([*base, "vm"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert (done.returncode, done.stdout) == (2, "")
    # (the last line: a fork of the suite's server has the module imported already, and runpy warns so)
    assert (
        done.stderr.splitlines()[-1]
        == "resnet_train.runtime.cluster: error: SLURM_PROCID 5 is not one of the 2 tasks on vm"
    )
