"""TF_CONFIG, read without importing TensorFlow (the CLI needs it before TF starts)."""

from __future__ import annotations

import json
import os

from resnet_train.errors import ConfigError


def task() -> tuple[str, int, int] | None:
    """(task_type, task_index, number of workers incl. chief) from TF_CONFIG, or None without one."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None
    try:
        conf = json.loads(raw)
        workers = sum(len(conf["cluster"].get(k, [])) for k in ("chief", "worker"))
        return conf["task"]["type"], int(conf["task"]["index"]), workers
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(f"TF_CONFIG must be JSON with 'cluster' and 'task' entries ({e})") from None


def has_chief() -> bool:
    try:
        return bool(json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {}).get("chief"))
    except (ValueError, AttributeError):
        return False


def is_chief() -> bool:
    """The chief writes checkpoints, summaries and results: task 'chief', or worker 0 without one."""
    t = task()
    return t is None or t[0] == "chief" or (t[0] == "worker" and t[1] == 0 and not has_chief())


def worker_suffix() -> str:
    """'' for the chief (or without TF_CONFIG), '_worker1' etc. for the others: keeps logs apart."""
    t = task()
    return "" if t is None or is_chief() else f"_{t[0]}{t[1]}"


def slurm_tf_config(hosts, port: int = 12345) -> str:
    """TF_CONFIG for this SLURM task: every host a worker, this task's index from SLURM_PROCID."""
    if not hosts:
        raise ConfigError("no hosts given: pass the output of `scontrol show hostnames`")
    index = int(os.environ.get("SLURM_PROCID", "0"))
    return json.dumps(
        {"cluster": {"worker": [f"{h}:{port}" for h in hosts]}, "task": {"type": "worker", "index": index}}
    )


if __name__ == "__main__":  # python -m resnet_train.runtime.cluster HOST [HOST ...]  (in a SLURM task)
    import sys

    print(slurm_tf_config(sys.argv[1:]))
