"""resnet-ray-train: one training run on a Ray cluster, through Ray Train's TensorflowTrainer.

    resnet-ray-train ray.workers=4 ray.address=auto depth=56 data=cifar10 hydra.run.dir=/shared/r56

Every Ray worker runs `resnet-train runtime=multi_worker` with the same overrides in its own process,
on one run directory all of them share (a file system every node mounts), with the TF_CONFIG Ray's
TensorFlow backend sets. A worker that dies (a node lost, a process killed) fails the attempt: Ray
starts every worker again, up to ray.max_failures times, and the run resumes from the newest
checkpoint in the run directory, as a rerun of the same command would. A bad input or a diverged run
(exit 2 or 3) is not retried: the same command would fail again.

The ray.* settings are this command's own; every other argument is a resnet-train override.
"""

from __future__ import annotations

import difflib
import os
import sys
import time
from pathlib import Path

from resnet_train.errors import EXIT_DIVERGED, EXIT_USER_ERROR, ConfigError

PROG = "resnet-ray-train"
# name -> (default, what it must be); parsed here, never part of the run's config (a rerun with
# plain resnet-train continues the same run).
SETTINGS = {
    "workers": (2, "a positive integer, the Ray workers (one training process each)"),
    "max_failures": (3, "an integer >= -1: restarts of the workers after a failure (-1: no limit)"),
    "cpus_per_worker": (1.0, "a positive number, the CPUs Ray reserves for each worker"),
    "address": (None, "a Ray cluster's address (auto: the one this machine belongs to); null: a new local one"),
}
NOT_RETRIED = (EXIT_USER_ERROR, EXIT_DIVERGED)  # the same command fails the same way


def parse(args: list[str]) -> tuple[dict, list[str]]:
    """(this command's ray.* settings, the resnet-train overrides). Bad values: ConfigError."""
    settings = {name: default for name, (default, _) in SETTINGS.items()}
    overrides = []
    for arg in args:
        if arg in ("-m", "--multirun") or arg.startswith("--"):
            raise ConfigError(f"{arg} is not supported by {PROG}: it runs one training run (resnet-train runs sweeps)")
        if not arg.startswith("ray."):
            overrides.append(arg)
            continue
        key, sep, value = arg[len("ray.") :].partition("=")
        if key not in SETTINGS or not sep:
            close = difflib.get_close_matches(key, SETTINGS, n=1)
            hint = f" (did you mean ray.{close[0]}?)" if close else ""
            raise ConfigError(f"unknown setting ray.{key}{hint}: ray.* takes {', '.join(SETTINGS)} as ray.NAME=VALUE")
        settings[key] = _value(key, value)
    return settings, overrides


def _value(key: str, text: str):
    kind = SETTINGS[key][1]
    if key == "address":
        if not text.strip():
            raise ConfigError(f"ray.address must be {kind} (got {text!r})")
        return None if text == "null" else text
    try:
        value = float(text) if key == "cpus_per_worker" else int(text)
    except ValueError:
        value = None
    low = {"workers": 1, "max_failures": -1}.get(key)
    if value is None or (low is None and not value > 0) or (low is not None and value < low):
        raise ConfigError(f"ray.{key} must be {kind} (got {text!r})")
    return value


def job(overrides: list[str], now: float | None = None) -> dict:
    """What every worker runs: the overrides with runtime=multi_worker and an absolute
    hydra.run.dir (each worker's own default would name its own start time), and the directory
    relative paths in them are read from."""
    run_dir = next((o.split("=", 1)[1] for o in overrides if o.startswith("hydra.run.dir=")), None)
    if run_dir is None:
        run_dir = time.strftime("outputs/%Y-%m-%d/%H-%M-%S", time.localtime(now))
    run_dir = str(Path(run_dir).expanduser().absolute())
    rest = [o for o in overrides if not o.startswith("hydra.run.dir=")]
    return {
        "overrides": ["runtime=multi_worker", *rest, f"hydra.run.dir={run_dir}"],
        "run_dir": run_dir,
        "cwd": os.getcwd(),
    }


def check(job_: dict):
    """The run's config composed and validated here, before Ray starts: a bad override is one line
    and exit 2 instead of every worker's. Returns the config."""
    from resnet_train import config as config_lib
    from resnet_train.cli.hydra_errors import explain

    overrides = [o for o in job_["overrides"] if not o.startswith("hydra.")]
    try:
        cfg = config_lib.load_config(overrides)
    except Exception as error:  # Hydra's composition errors: one line where it is the user's to fix
        message = explain(error, "train")
        if message is None:
            raise
        raise ConfigError(message) from None
    if cfg.runtime.strategy != "multi_worker":
        raise ConfigError(
            f"{PROG} runs runtime=multi_worker (one process per Ray worker): drop the runtime "
            f"override that picked {cfg.runtime.strategy}"
        )
    from resnet_train.cli import _quiet_tensorflow

    _quiet_tensorflow()  # validate builds layers to check depths
    config_lib.validate(cfg)
    return cfg


def train_worker(job_: dict) -> dict:
    """One Ray worker: resnet-train with the job's overrides, in this process. Returns
    {"exit_code": 0}, or 2/3 for a stop a retry would repeat; raises for anything else, so that
    Ray starts the workers again and the run resumes from the run directory."""
    from resnet_train import cli

    # Ray's TensorFlow backend asks for tf_keras (Keras 2); this project runs Keras 3.
    os.environ.pop("TF_USE_LEGACY_KERAS", None)
    if os.path.isdir(job_["cwd"]):  # Ray starts workers elsewhere; relative paths are the command's
        os.chdir(job_["cwd"])
    argv, sys.argv = sys.argv, ["resnet-train", *job_["overrides"]]
    try:
        cli.train()
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
        if code in NOT_RETRIED:
            return {"exit_code": code}
        if code:
            task = os.environ.get("TF_CONFIG", "")
            raise RuntimeError(f"resnet-train stopped with exit code {code} ({task}): see {job_['run_dir']}") from None
    finally:
        sys.argv = argv
    return {"exit_code": 0}


def trainer(job_: dict, settings: dict, env: dict | None = None, worker=train_worker):
    """Ray Train's TensorflowTrainer for the job. `env`: variables every worker starts with
    (TensorFlow reads TF_ENABLE_ONEDNN_OPTS at its import, which Ray's backend does before the
    worker function runs); `worker`: the per-worker function (tests wrap train_worker)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    return TensorflowTrainer(
        worker,
        train_loop_config=job_,
        scaling_config=ScalingConfig(
            num_workers=settings["workers"], resources_per_worker={"CPU": settings["cpus_per_worker"]}
        ),
        run_config=RunConfig(
            name="ray",  # Ray's own records of the attempts, in the shared run directory
            storage_path=job_["run_dir"],
            failure_config=FailureConfig(max_failures=settings["max_failures"]),
            worker_runtime_env={"env_vars": env} if env else None,
        ),
    )


def worker_env(cfg) -> dict:
    """TF_ENABLE_ONEDNN_OPTS as runtime.onednn decides it on this machine (the workers' TensorFlow is
    imported before our code runs there)."""
    from resnet_train.runtime import onednn

    on, _ = onednn.decide(cfg.runtime.onednn)
    return {} if on is None else {onednn.ENV: "1" if on else "0"}


def fit(job_: dict, settings: dict, env: dict | None = None, worker=train_worker) -> int:
    """Runs the job on the cluster (ray.address, else the one Ray finds or starts); the exit code."""
    import ray
    from ray.train import TrainingFailedError

    if settings["address"] is not None and not ray.is_initialized():
        ray.init(address=settings["address"])
    try:
        result = trainer(job_, settings, env, worker).fit()
    except TrainingFailedError as error:
        failures = getattr(error, "worker_failures", None) or {}
        cause = next(iter(failures.values()), error)
        from resnet_train.errors import first_line

        print(
            f"{PROG}: error: training failed after ray.max_failures={settings['max_failures']} restarts: "
            f"{first_line(cause)}; rerun the same command to resume from {job_['run_dir']}",
            file=sys.stderr,
        )
        return 1
    code = (result.return_value or {}).get("exit_code", 0)
    if code == 0:
        print(f"Run directory: {job_['run_dir']}")
    return code


def main(args=None) -> None:
    """Console script `resnet-ray-train`."""
    args = sys.argv[1:] if args is None else list(args)
    try:
        settings, overrides = parse(args)
        job_ = job(overrides)
        cfg = check(job_)
    except ConfigError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    sys.exit(fit(job_, settings, worker_env(cfg)))


if __name__ == "__main__":
    main()
