"""SLURM for real: a one-node cluster on 127.0.0.1 (tests/slurm_cluster.py) runs the README's
batch script (docs/slurm/train.sbatch) with two tasks, a job stopped by its time-limit warning and
requeued, and Hydra's submitit launcher. `make test-cluster`; `make test` skips these."""

import json
import os
import re
import subprocess
import time

import launches
import numpy as np
import pytest
import slurm_cluster
import tensorflow as tf
from helpers import CLI, ROOT, TINY, compose

from resnet_train.runtime import cluster
from resnet_train.training.loop import train_and_evaluate

pytestmark = pytest.mark.cluster


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


SCRIPT = ROOT / "docs" / "slurm" / "train.sbatch"
# A tiny deterministic run (the script puts runtime=multi_worker before these: no runtime= here),
# long enough to be stopped mid-run on the fastest CPU met, after SLURM's warning, which may take
# 30 s to come: 24 epochs of 32 steps. 12 epochs trained two workers for ~50 s on a Zen 3 but
# ~22 s on a Zen 4, where the job ended before the warning came (CI, 2026-12-08).
RUN = (
    "depth=8",
    "batch_size=32",
    "data.limit_train=1024",
    "data.limit_test=64",
    "epochs=24",
    "runtime.precision=float32",
    "runtime.deterministic=true",
)
TOTAL_STEPS = 24 * 1024 // 32


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """single() -> results: RUN in this process on the same global batches over 2 replicas,
    trained by the first test that calls it (while its job runs), once per module."""
    results = {}

    def train():
        if not results:
            run = tmp_path_factory.mktemp("single") / "run"
            results.update(train_and_evaluate(compose(*RUN, "runtime=mirrored", "runtime.cpu_replicas=2"), run))
        return results

    return train


def weights(checkpoint):
    """Every weight, optimizer slot and BN statistic in a checkpoint (as test_multi_worker.py reads them)."""
    reader = tf.train.load_checkpoint(str(checkpoint))
    return {
        k: reader.get_tensor(k)
        for k in reader.get_variable_to_shape_map()
        if k.startswith(("model/", "optimizer/")) and k.endswith("VARIABLE_VALUE")
    }


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and sum(k.startswith("optimizer/_trainable_variables/") for k in wa) > 10
    for key in wa:
        np.testing.assert_array_equal(wa[key], wb[key], err_msg=key)


def ended(fields):
    return fields["JobState"] in slurm_cluster.ENDED


def test_the_readme_batch_script_trains_two_tasks_like_one_process(slurm, tmp_path, single):
    """docs/slurm/train.sbatch (the README shows it) with two tasks on the node: two workers of
    runtime=multi_worker, each at its own port; the chief's final weights equal one process's on
    the same global batches (2 replicas in one process), bit for bit."""
    assert SCRIPT.read_text() in (ROOT / "README.md").read_text()
    run = tmp_path / "run"
    job = slurm.sbatch(
        "--nodes=1", "--ntasks-per-node=2", "--time=8", f"--output={tmp_path}/slurm-%j.out",
        str(SCRIPT), *RUN, f"hydra.run.dir={run}",
    )  # fmt: skip
    reference = single()  # meanwhile
    fields = slurm.wait_job(job, ended, 480, "end")
    assert (fields["JobState"], fields["ExitCode"]) == ("COMPLETED", "0:0"), slurm.logs(job)
    results = json.loads((run / "results.json").read_text())
    assert results["replicas"] == 2 and results["steps"] == reference["steps"] == TOTAL_STEPS
    assert "Strategy MultiWorkerMirroredStrategy over 2 replica(s)" in (run / "train.log").read_text()
    assert (run / "train_worker1.log").exists()
    assert_same_weights(results["checkpoint"], reference["checkpoint"])


def test_the_time_limit_warning_saves_the_step_and_the_requeued_job_continues_from_it(slurm, tmp_path, single):
    """The script under --time, --signal=B:USR2@110 and --requeue: SLURM's warning reaches the batch
    shell, whose trap passes it to both tasks; they save the step they are at and exit 75, the
    script requeues the job, and the requeued job continues from that step to the uninterrupted
    run's weights, bit for bit. SLURM looks at time limits every 30 s: the short limit (2 minutes,
    less than 110 s left) is set once training runs, so the warning comes within 30 s and not
    before the tasks' handlers exist (a SIGUSR2 before them would end the tasks); the requeued job
    gets a long limit again, else it would be warned at once."""
    run = tmp_path / "run"
    job = slurm.sbatch(
        "--nodes=1", "--ntasks-per-node=2", "--time=10", "--signal=B:USR2@110", "--requeue", "--open-mode=append",
        f"--output={tmp_path}/slurm-%j.out", str(SCRIPT), *RUN, f"hydra.run.dir={run}",
    )  # fmt: skip
    slurm.wait_file(job, run / "train.log", "first step after", 180)
    slurm.command("scontrol", "update", f"JobId={job}", "TimeLimit=2")
    slurm.wait_job(job, lambda f: int(f["Restarts"]) >= 1 or ended(f), 90, "requeue")
    slurm.command("scontrol", "update", f"JobId={job}", "TimeLimit=10")
    reference = single()  # (trained by the test before, unless it runs alone: then meanwhile)
    fields = slurm.wait_job(job, ended, 300, "end")
    assert (fields["JobState"], fields["ExitCode"], fields["Restarts"]) == ("COMPLETED", "0:0", "1"), slurm.logs(job)
    log = (run / "train.log").read_text()
    total = TOTAL_STEPS
    out = (tmp_path / f"slurm-{job}.out").read_text()
    # Mid-epoch the tasks stop "at step S"; a warning during the epoch's end stops them "after epoch
    # E (step S" at the epoch's checkpoint (CI met that once): both are the step the rerun continues.
    stopped = re.findall(
        rf"resnet-train: stopped by SIGUSR2 (?:at step|after epoch \d+ \(step) (\d+) of {total}\)?; "
        rf"checkpoint (\S+) written",
        out,
    )
    assert len(stopped) == 2 and stopped[0][0] == stopped[1][0], out[:6000] + slurm.logs(job)  # both, one step
    step = int(stopped[0][0])
    assert 0 < step < total and str(run / "checkpoints" / f"ckpt-{step}") in {c for _, c in stopped}
    assert f"Continuing at step {step} of {total}" in log
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] == reference["steps"] == total
    assert_same_weights(results["checkpoint"], reference["checkpoint"])


# A sweep's member: one process on one CPU, 64 steps.
MEMBER = (
    "depth=8",
    "batch_size=32",
    "data.limit_train=512",
    "data.limit_test=64",
    "epochs=4",
    "runtime=one_device",
    "runtime.precision=float32",
    "runtime.deterministic=true",
)


def test_the_submitit_launcher_runs_a_sweep_and_a_preempted_member_is_requeued_by_submitit(slurm, tmp_path):
    """`resnet-train -m hydra/launcher=submitit_slurm`: two members (the same run; only how often
    they log differs) as an array job on the cluster. Member 1 gets SIGUSR2 while it trains (as
    from a preemption): it saves its step, then submitit's own handler requeues the job; the
    requeued member continues from that step and ends with member 0's weights, bit for bit."""
    sweep = tmp_path / "sweep"
    args = [str(CLI), "-m", "hydra/launcher=submitit_slurm", "hydra.launcher.timeout_min=60", *MEMBER]
    args += ["log.every_steps=50,51", f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, "SLURM_CONF": str(slurm.conf)}  # (sbatch is on the PATH: /usr/bin)
    with open(tmp_path / "sweep.out", "w") as out:
        hydra = launches.popen(args, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)

    def logs():
        files = [
            tmp_path / "sweep.out",
            *sorted(sweep.glob(".submitit/*/*.out")),
            *sorted(sweep.glob(".submitit/*/*.err")),
        ]
        return "\n".join(f"---- {f} ----\n{f.read_text(errors='replace')[-3000:]}" for f in files) + slurm.logs()

    try:
        deadline = time.monotonic() + 180
        log = sweep / "1" / "train.log"
        while not (log.is_file() and "first step after" in log.read_text()):
            assert hydra.poll() is None and time.monotonic() < deadline, f"member 1 did not start training\n{logs()}"
            time.sleep(0.5)
        (member,) = [j for j in slurm.command("squeue", "-h", "-o", "%i").stdout.split() if j.endswith("_1")]
        slurm.command("scancel", "--signal=USR2", member)
        code = hydra.wait(timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the sweep did not end in 300 s\n{logs()}")
    finally:
        if hydra.poll() is None:
            hydra.kill()
            hydra.wait()
    assert code == 0, logs()
    first, second = (sweep / str(n) for n in range(2))
    stopped = re.findall(r"stopped by SIGUSR2 at step (\d+) of 64", (second / "train.log").read_text())
    assert len(stopped) == 1 and 0 < int(stopped[0]) < 64, logs()
    assert f"Continuing at step {stopped[0]} of 64" in (second / "train.log").read_text()
    submitit_logs = "".join(f.read_text() for f in sweep.glob(".submitit/*_1/*_log.*"))
    assert "this job is preempted" in submitit_logs and "Requeued job" in submitit_logs, logs()  # its handler did
    assert "Continuing" not in (first / "train.log").read_text()
    results = [json.loads((member / "results.json").read_text()) for member in (first, second)]
    assert results[0]["steps"] == results[1]["steps"] == 64
    assert_same_weights(results[0]["checkpoint"], results[1]["checkpoint"])


TWO_EPOCHS = (*TINY, "epochs=2", "data.limit_train=64", "data.limit_test=32")


def test_an_optuna_search_runs_n_jobs_trials_at_once_as_submitit_jobs_that_report_to_their_trials(slurm, tmp_path):
    """Issue 33 item 3 under a real SLURM: hydra.sweeper.n_jobs=2 hands Hydra's submitit launcher
    two trials at once. They run as SLURM jobs at the same time (each run's window, from its own
    log and metrics, overlaps the other's), each member finds its own trial in the journal from
    its job and reports its validation figure every epoch (a median pruner that cannot prune yet),
    and the study records both trials complete."""
    from test_search_parallel import run_window, study_of

    sweep = tmp_path / "sweep"
    args = [str(CLI), "hparams_search=optuna", "hydra/launcher=submitit_slurm", "hydra.launcher.timeout_min=30"]
    args += ["hydra.sweeper.n_jobs=2", "hydra.sweeper.n_trials=2", "hydra.sweeper.pruner=median"]
    args += ["hydra.sweeper.pruner_kwargs={n_startup_trials: 10}", *TWO_EPOCHS, f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, "SLURM_CONF": str(slurm.conf)}
    done = launches.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    jobs = "\n".join(f.read_text(errors="replace")[-2000:] for f in sorted(sweep.glob(".submitit/*/*.err")))
    assert done.returncode == 0, done.stderr[-3000:] + jobs + slurm.logs()
    assert len({p.parent.name.split("_")[0] for p in sweep.glob(".submitit/*/*.out")}) == 1  # one array job
    (start0, end0), (start1, end1) = windows = [run_window(sweep / m) for m in ("0", "1")]
    assert start0 < end1 and start1 < end0, windows
    trials = study_of(sweep).get_trials()
    assert [(t.number, t.state.name) for t in trials] == [(0, "COMPLETE"), (1, "COMPLETE")]
    for trial in trials:  # each member's epochs, reported to its own trial from its SLURM job
        assert len(trial.intermediate_values) == 2, trial.intermediate_values
        results = json.loads((sweep / str(trial.number) / "results.json").read_text())
        assert trial.value == pytest.approx(results["best_val_accuracy"])
