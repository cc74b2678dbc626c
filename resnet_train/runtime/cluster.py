"""TF_CONFIG, read without importing TensorFlow (the CLI needs it before TF starts)."""

from __future__ import annotations

import json
import os

from resnet_train.errors import ConfigError

# Kubeflow's TFJob and Vertex AI call the chief `chief`; AI Platform Training, Vertex's predecessor,
# calls it `master` on its older runtimes. TensorFlow's strategy refuses `master`: it is read as `chief`.
CHIEF_ROLES = ("chief", "master")
# Parameter-server training's roles and a side-car evaluator: this trainer has neither.
REFUSED_ROLES = {"ps": "a parameter server", "evaluator": "a side-car evaluator"}


def spec() -> dict | None:
    """TF_CONFIG as TensorFlow's MultiWorkerMirroredStrategy takes it ({"cluster": {"chief": [...],
    "worker": [...]}, "task": {"type": ..., "index": ...}}, a `master` renamed `chief`), or None
    without one. A role this trainer has no use for, or a task outside its cluster: ConfigError."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None
    try:
        conf = json.loads(raw)
        jobs = {str(role): list(addresses) for role, addresses in conf["cluster"].items()}
        role, index = str(conf["task"]["type"]), int(conf["task"]["index"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(f"TF_CONFIG must be JSON with 'cluster' and 'task' entries ({e})") from None
    for name in (role, *jobs):
        if name in REFUSED_ROLES:
            raise ConfigError(
                f"TF_CONFIG has a task of role '{name}' ({REFUSED_ROLES[name]}): this trainer has no parameter servers "
                f"or side-car evaluators (every task trains and evaluates): start only chief/master and worker tasks"
            )
        if name not in (*CHIEF_ROLES, "worker"):
            raise ConfigError(f"TF_CONFIG has a task type '{name}': the types are chief (or master) and worker")
    if all(r in jobs for r in CHIEF_ROLES):
        raise ConfigError("TF_CONFIG has both a 'chief' and a 'master': give the cluster one chief")
    if not 0 <= index < len(jobs.get(role, [])):
        raise ConfigError(
            f"TF_CONFIG's task ({role} {index}) is not in its cluster, which has {len(jobs.get(role, []))}"
        )
    jobs = {("chief" if r == "master" else r): a for r, a in jobs.items()}
    role = "chief" if role == "master" else role
    if len(jobs.get("chief", [])) > 1:
        raise ConfigError(f"TF_CONFIG lists {len(jobs['chief'])} chief tasks: give the cluster one chief")
    return {"cluster": jobs, "task": {"type": role, "index": index}}


def task() -> tuple[str, int, int] | None:
    """(task_type, task_index, number of workers incl. chief) from TF_CONFIG, or None without one;
    a `master` is reported as `chief`."""
    conf = spec()
    if conf is None:
        return None
    workers = sum(len(conf["cluster"].get(k, [])) for k in ("chief", "worker"))
    return conf["task"]["type"], conf["task"]["index"], workers


def has_chief() -> bool:
    conf = spec()
    return bool(conf and conf["cluster"].get("chief"))


def is_chief() -> bool:
    """The chief writes checkpoints, summaries and results: task 'chief' (or 'master'), or worker 0 without one."""
    t = task()
    return t is None or t[0] == "chief" or (t[0] == "worker" and t[1] == 0 and not has_chief())


def worker_suffix() -> str:
    """'' for the chief (or without TF_CONFIG), '_worker1' etc. for the others: keeps logs apart."""
    t = task()
    return "" if t is None or is_chief() else f"_{t[0]}{t[1]}"


# SLURM: the workers' ports. TensorFlow's collective server listens on every interface without
# authentication, so a job's ports must not be another job's: each job takes a block of
# PORTS_PER_JOB ports from its SLURM_JOB_ID (every task computes the same block without talking),
# below Linux's ephemeral ports (32768 on), and each task on a node its own port of the block.
FIRST_PORT, PORTS_PER_JOB, JOB_BLOCKS = 15000, 32, 500
PORT_OUTSIDE_SLURM = 12345


def job_port(job_id: str | None) -> int:
    """The first port of a SLURM job's block (PORT_OUTSIDE_SLURM without a job id)."""
    if not job_id:
        return PORT_OUTSIDE_SLURM
    try:
        return FIRST_PORT + int(job_id) % JOB_BLOCKS * PORTS_PER_JOB
    except ValueError:
        raise ConfigError(f"SLURM_JOB_ID must be a number, not {job_id!r}") from None


def tasks_per_node(counts: str, nodes: int) -> list[int]:
    """SLURM's compressed task counts per node ('2(x3),1' -> [2, 2, 2, 1]); one each if unset."""
    if not counts:
        return [1] * nodes
    expanded = []
    try:
        for part in counts.split(","):
            count, _, repeat = part.partition("(x")
            expanded += [int(count)] * (int(repeat.rstrip(")")) if repeat else 1)
    except ValueError:
        raise ConfigError(f"SLURM_STEP_TASKS_PER_NODE / SLURM_TASKS_PER_NODE unreadable: {counts!r}") from None
    if len(expanded) != nodes:
        raise ConfigError(f"{nodes} host(s) given but SLURM counts tasks on {len(expanded)} node(s) ({counts!r})")
    return expanded


def slurm_tf_config(hosts, port: int | None = None) -> str:
    """TF_CONFIG for this SLURM task: every task a worker (block distribution: a node's tasks are
    consecutive SLURM_PROCIDs), at its node's address and its own port of the job's block (or of
    `port`'s), this task's index from SLURM_PROCID."""
    if not hosts:
        raise ConfigError("no hosts given: pass the output of `scontrol show hostnames`")
    env = os.environ
    counts = tasks_per_node(env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE", ""), len(hosts))
    if max(counts) > PORTS_PER_JOB:
        raise ConfigError(f"{max(counts)} tasks on one node: at most {PORTS_PER_JOB} (one port each)")
    base = job_port(env.get("SLURM_JOB_ID")) if port is None else port
    places = [(host, local) for host, count in zip(hosts, counts) for local in range(count)]
    index = int(env.get("SLURM_PROCID", "0"))
    if not 0 <= index < len(places):
        raise ConfigError(f"SLURM_PROCID {index} is not one of the {len(places)} tasks on {' '.join(hosts)}")
    own = (env.get("SLURMD_NODENAME", places[index][0]), int(env.get("SLURM_LOCALID", places[index][1])))
    if own != places[index]:
        raise ConfigError(
            f"task {index} runs as task {own[1]} on {own[0]}, not {places[index][1]} on {places[index][0]}: "
            "launch the tasks with srun's default block distribution (--distribution=block)"
        )
    workers = [f"{host}:{base + local}" for host, local in places]
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})


if __name__ == "__main__":  # python -m resnet_train.runtime.cluster HOST [HOST ...]  (in a SLURM task)
    import sys

    try:
        print(slurm_tf_config(sys.argv[1:]))
    except ConfigError as e:
        print(f"resnet_train.runtime.cluster: error: {e}", file=sys.stderr)
        sys.exit(2)
