"""Faults a long run must survive, each really done: kill -9, SIGTERM/SIGINT (a second Ctrl-C), a
damaged newest checkpoint, a save killed half-way, NaN losses (float32, bfloat16, float16), a full
disk (a per-file limit and a really full file system), two runs in one directory, an exact resume."""

import contextlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

import launches
import numpy as np
import pytest
import tensorflow as tf
from helpers import CLI, ROOT, TINY, StepStop, cli_in_process, compose, file_digests

from resnet_train.errors import EXIT_DIVERGED, EXIT_PREEMPTED, Preempted, TrainingDiverged
from resnet_train.training.checkpoint import readable
from resnet_train.training.loop import train_and_evaluate

# 2 epochs of 32 steps, a checkpoint every 8 steps: long enough to be stopped mid-epoch (the stops
# come after a checkpoint, steps 8, 16 and 24 in a chain of processes, or after step 20, with a
# good part of the run still ahead). The strategy and precision pinned as in TINY (auto would pick
# others on GPUs or bfloat16 CPUs).
LONG = (
    "depth=8",
    "batch_size=8",
    "data.limit_train=256",
    "data.limit_test=32",
    "epochs=2",
    "runtime.deterministic=true",
    "checkpoint.every_steps=8",
    "runtime=one_device",
    "runtime.precision=float32",
)
STEPS_PER_EPOCH = 256 // 8
TOTAL_STEPS = 2 * STEPS_PER_EPOCH
TIMING = ("time", "images_per_sec", "mfu")


def weights(run_dir, which="last"):
    from resnet_train.training.runs import resolve

    reader = tf.train.load_checkpoint(resolve(run_dir, which))
    return {
        k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map() if k.startswith(("model/", "optimizer/"))
    }


def metrics_without_timing(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def assert_same_run(a, b, steps=TOTAL_STEPS):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and len(wa) > 10
    for key in wa:
        np.testing.assert_array_equal(wa[key], wb[key], err_msg=key)
    assert metrics_without_timing(a) == metrics_without_timing(b)
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (a, b))
    assert ra["test"] == rb["test"] and ra.get("test_ema") == rb.get("test_ema")
    assert ra["steps"] == rb["steps"] == steps


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """LONG trained straight through, once per module and in this process (what assert_same_run
    compares, the weights, metrics.jsonl and results.json, is what the CLI writes too)."""
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    train_and_evaluate(compose(*LONG), run)
    return run


def start(run):
    return launches.popen(
        [str(CLI), *LONG, f"hydra.run.dir={run}"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def newest_checkpoint(run):
    """The newest checkpoint the run's index names (TF replaces the index atomically), or None."""
    try:
        state = (run / "checkpoints" / "checkpoint").read_text()
    except FileNotFoundError:
        return None
    found = re.search(r'^model_checkpoint_path: "(.*)"$', state, re.M)
    return found and found.group(1)


def wait_for_checkpoint(run, process, after=None, timeout=120):
    """Until the run's index names a checkpoint other than `after` (one the process wrote)."""
    deadline = time.monotonic() + timeout
    while newest_checkpoint(run) in (None, after):
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)


# The CLI's entry point in a new process that signals itself right after the compiled call that
# brought it to step AT (argv[1]; the signals' names in argv[2]): the signal is handled between two
# calls, at a known step, not wherever the process was when a test's poll saw a file. (A signal
# is only read when a compiled call starts: one landing in the wrong call changes the outcome.)
SIGNALS_AT_STEP = textwrap.dedent("""
    import signal, sys
    from resnet_train import cli

    at, names = int(sys.argv.pop(1)), sys.argv.pop(1).split(",")
    sys.argv[0] = "resnet-train"
    quiet_tensorflow = cli._quiet_tensorflow

    def quiet_tensorflow_then_hook():  # TF imported quietly first, as the CLI does
        quiet_tensorflow()
        from resnet_train.training import trainer

        train_steps, steps = trainer.Trainer.train_steps, [0]

        def train_steps_then_signal(self, *args, **kwargs):
            result = train_steps(self, *args, **kwargs)
            steps[0] += result[0]
            if steps[0] == at:
                for name in names:
                    signal.raise_signal(getattr(signal, name))  # handled before this returns
            return result

        trainer.Trainer.train_steps = train_steps_then_signal

    cli._quiet_tensorflow = quiet_tensorflow_then_hook
    cli.train()
""")


def run_signalled_at(step, signals, *args):
    """Runs `resnet-train *args` (a new run: steps are counted from 0) that gets `signals` once
    step `step` is done."""
    return launches.run(
        [sys.executable, "-c", SIGNALS_AT_STEP, str(step), ",".join(s.name for s in signals), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_kill_9_sigterm_and_sigint_mid_epoch_then_the_same_command_continues_to_the_same_weights(
    tmp_path, uninterrupted, cli
):
    """One run stopped three times mid-epoch, each time started again by the same command: killed
    (-9) after its first checkpoint; then SIGTERM, then SIGINT, each after a checkpoint of that
    process's own, save the current step and exit 75. The last rerun trains to the end and matches
    the uninterrupted run (one chain of processes: each stop is checked as it happens)."""
    run = tmp_path / "run"
    process = start(run)
    wait_for_checkpoint(run, process)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    assert not (run / "results.json").exists()  # it really was killed before the end
    assert (run / ".lock").exists()  # ... and left its lock behind: a stale lock

    step = int(newest_checkpoint(run).rsplit("ckpt-", 1)[1])  # the killed process's last checkpoint
    for sig in (signal.SIGTERM, signal.SIGINT):
        resumed_at, process = step, start(run)
        wait_for_checkpoint(run, process, after=newest_checkpoint(run))
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == EXIT_PREEMPTED == 75, stderr[-2000:]
        message = stderr.strip().splitlines()[-1]
        step = int(re.search(r"at step (\d+) of", message).group(1))
        assert f"stopped by {sig.name}" in message and resumed_at < step < TOTAL_STEPS
        assert tf.train.latest_checkpoint(str(run / "checkpoints")).endswith(f"ckpt-{step}")
        assert not (run / "results.json").exists() and not (run / ".lock").exists()
        log = (run / "train.log").read_text()
        assert f"Continuing at step {resumed_at} of {TOTAL_STEPS}" in log
        if sig == signal.SIGTERM:  # the process after the kill
            assert "Removing a stale lock" in log and "Resumed from" in log

    again = cli(*LONG, f"hydra.run.dir={run}")  # in this process: its start-up is not what is tested
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"Continuing at step {step} of {TOTAL_STEPS}" in (run / "train.log").read_text()
    assert not (run / ".lock").exists()
    assert_same_run(run, uninterrupted)


# What submitit installs in a SLURM job before running the task: a SIGUSR2 handler that requeues
# the job and exits (submitit.core.job_environment.SignalHandler.checkpoint_and_try_requeue ends
# in sys.exit(-1)). This one notes the newest checkpoint at the moment it is called.
SUBMITIT_LIKE = textwrap.dedent("""
    import os, signal, sys
    import tensorflow as tf

    def requeue(signum, frame):
        run = os.environ["RESNET_TEST_RUN"]
        with open(os.environ["RESNET_TEST_REQUEUED"], "w") as f:
            f.write(str(tf.train.latest_checkpoint(os.path.join(run, "checkpoints"))))
        sys.exit(-1)

    signal.signal(signal.SIGUSR2, requeue)
""")


def test_sigusr2_checkpoints_the_current_step_then_submitits_requeue_runs(tmp_path, uninterrupted, cli, monkeypatch):
    """SLURM's warning before the time limit or a preemption under Hydra's submitit launcher: the
    run saves the step it is at, then the handler submitit installed requeues (and exits), and
    the requeued command continues from that exact step."""
    run, requeued = tmp_path / "run", tmp_path / "requeued"
    monkeypatch.setenv("RESNET_TEST_RUN", str(run))
    monkeypatch.setenv("RESNET_TEST_REQUEUED", str(requeued))
    done = launches.run(
        [sys.executable, "-c", SUBMITIT_LIKE + SIGNALS_AT_STEP, "20", "SIGUSR2", *LONG, f"hydra.run.dir={run}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 255, done.stderr[-2000:]  # submitit's sys.exit(-1)
    step = int(re.search(r"stopped by SIGUSR2 at step (\d+) of", (run / "train.log").read_text()).group(1))
    assert step == 21  # signalled after step 20: the next call (one step: steps_per_call is pinned to 1) then stops
    assert requeued.read_text().endswith(f"ckpt-{step}")  # saved before the requeue ran
    assert not (run / ".lock").exists() and not (run / "results.json").exists()

    again = cli(*LONG, f"hydra.run.dir={run}")  # the requeued job: the same command
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"Continuing at step {step} of {TOTAL_STEPS}" in (run / "train.log").read_text()
    assert_same_run(run, uninterrupted)


@pytest.fixture
def sigusr2_restored():
    previous = signal.getsignal(signal.SIGUSR2)
    yield
    signal.signal(signal.SIGUSR2, previous)


def test_sigusr2_ignored_before_the_run_stays_ignored(sigusr2_restored):
    """SIG_IGN inherited (`trap '' USR2` in a job script): the run does not stop on SIGUSR2 (issue
    29, item 21); SIGTERM still does."""
    from resnet_train.training.interrupts import StopRequests

    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    with StopRequests() as stop:
        stop.training_started()
        stop.install()  # again, as after the strategy exists
        signal.raise_signal(signal.SIGUSR2)
        assert not stop.requested and signal.getsignal(signal.SIGUSR2) is signal.SIG_IGN
        signal.raise_signal(signal.SIGTERM)
        assert stop.requested and stop.signal_name == "SIGTERM"
    assert signal.getsignal(signal.SIGUSR2) is signal.SIG_IGN


def test_a_failing_sigusr2_handler_before_ours_is_one_line_and_the_run_ends_stopped(sigusr2_restored, caplog):
    """The handler installed before the run's raises when it is passed the signal: one logged line
    with its error, and the run's own stop (its state saved: Preempted, exit 75) goes on, not the
    handler's traceback."""
    from resnet_train.training.interrupts import StopRequests

    def failing(signum, frame):
        raise RuntimeError("the scheduler's handler failed\nits second line")

    signal.signal(signal.SIGUSR2, failing)
    with pytest.raises(Preempted, match="checkpoint written"), caplog.at_level("WARNING"):
        with StopRequests() as stop:
            stop.training_started()
            signal.raise_signal(signal.SIGUSR2)
            assert stop.signal_name == "SIGUSR2"
            raise Preempted("stopped by SIGUSR2 at step 3 of 8; checkpoint written")
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [
        "The SIGUSR2 handler installed before this run's failed (RuntimeError: the scheduler's handler failed); "
        "the run is stopped, its state saved, as after any SIGUSR2"
    ]
    assert signal.getsignal(signal.SIGUSR2) is failing  # put back


def test_a_second_ctrl_c_exits_at_once_with_130_and_writes_no_checkpoint(tmp_path):
    run = tmp_path / "run"
    # Ctrl-C twice after step 20's call: the first asks for a checkpoint of the next step (21), the
    # second stops before that call.
    done = run_signalled_at(20, [signal.SIGINT, signal.SIGINT], *LONG, f"hydra.run.dir={run}")
    assert done.returncode == 130, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == (
        f"resnet-train: interrupted; rerun the same command to continue from the last checkpoint in {run}/checkpoints"
    )
    assert "Traceback" not in done.stderr
    assert "SIGINT received: saving a checkpoint after the current step" in (run / "train.log").read_text()
    # No step after the interrupted one trained or saved: the every-8-steps checkpoint of step 16 is the last.
    assert sorted(p.name for p in (run / "checkpoints").glob("ckpt-*.index")) == ["ckpt-16.index", "ckpt-8.index"]
    latest = tf.train.latest_checkpoint(str(run / "checkpoints"))
    assert latest.endswith("ckpt-16") and readable(latest) is None
    assert not (run / "results.json").exists() and not (run / ".lock").exists()


def keep_only_first_checkpoint(run):
    """The run as if stopped after epoch 1: later checkpoints and results gone."""
    ckpts = run / "checkpoints"
    state = tf.train.get_checkpoint_state(str(ckpts))
    first = state.all_model_checkpoint_paths[0].rsplit("/", 1)[-1]
    for f in ckpts.iterdir():
        if f.name.startswith("ckpt-") and not f.name.startswith(first + "."):
            f.unlink()
    # The index as the CheckpointManager writes it (with the time): a resume keeps it as it is.
    tf.compat.v1.train.update_checkpoint_state(
        str(ckpts),
        first,
        all_model_checkpoint_paths=[first],
        all_model_checkpoint_timestamps=[state.all_model_checkpoint_timestamps[0]],
        last_preserved_timestamp=state.last_preserved_timestamp,
    )
    (run / "results.json").unlink()
    return first


# The run the damaged-checkpoint and full-disk tests start from (each from its own copy, `trained`).
TWO_EPOCHS = (*TINY, "epochs=2", "runtime.deterministic=true")


@pytest.mark.parametrize("damage", ["truncated data", "truncated index", "flipped bytes"])
def test_a_damaged_newest_checkpoint_is_moved_aside_and_the_previous_one_used(tmp_path, trained, damage):
    overrides = TWO_EPOCHS
    run = tmp_path / "run"
    straight = trained(run, *overrides)
    (run / "results.json").unlink()
    newest = tf.train.latest_checkpoint(str(run / "checkpoints"))
    assert newest.endswith("ckpt-8")
    data, index = next(run.glob("checkpoints/ckpt-8.data-*")), run / "checkpoints" / "ckpt-8.index"
    if damage == "truncated data":
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    elif damage == "truncated index":
        index.write_bytes(index.read_bytes()[:40])
    else:
        raw = bytearray(data.read_bytes())
        raw[100:164] = bytes(64)
        data.write_bytes(bytes(raw))
    assert readable(newest) is not None
    # A save killed half-way leaves TF's temporary directory: it is cleaned up.
    (run / "checkpoints" / "ckpt-12_temp").mkdir()

    got = train_and_evaluate(compose(*overrides), run)
    corrupt = run / "checkpoints" / "corrupt"
    assert sorted(p.name for p in corrupt.iterdir()) == sorted(["ckpt-8.index", data.name])  # kept, not deleted
    assert not (run / "checkpoints" / "ckpt-12_temp").exists()
    assert got["steps"] == 8 and got["test"] == straight["test"]  # epoch 2 trained again from ckpt-4
    assert readable(got["checkpoint"]) is None and got["checkpoint"].endswith("ckpt-8")


def test_a_checkpoint_of_another_model_is_a_clear_error_not_moved(tmp_path, trained):
    run = tmp_path / "run"
    trained(run, *TINY, "epochs=1")
    before = file_digests(run)
    from resnet_train.errors import RunDirError

    for config in (run / ".hydra" / "config.yaml", run / "checkpoints" / "config.yaml"):
        config.unlink()  # as if the directory's config were lost
    with pytest.raises(RunDirError, match="does not fit this model"):
        train_and_evaluate(compose(*TINY, "epochs=1", "depth=14"), run)
    after = file_digests(run)
    assert {k: v for k, v in before.items() if "ckpt-" in k} == {k: v for k, v in after.items() if "ckpt-" in k}


# An absurd learning rate, a checkpoint after every step: step 1 still has a finite loss (and is
# saved), then the weights overflow and the loss becomes NaN/Inf.
EXPLODING = (*TINY, "epochs=2", "optimizer.lr=1e30", "checkpoint.every_steps=1", "checkpoint.keep=100")


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_a_nan_loss_stops_float32_and_bfloat16_at_that_step_keeps_the_last_good_checkpoint_and_exits_3(
    tmp_path, cli, precision
):
    # bfloat16 has no loss scaling (float32's exponent range): the first non-finite step stops it too.
    # Through the CLI (in this process): its exit code for a NaN loss is 3, its message one line.
    run = tmp_path / "run"
    done = cli(*EXPLODING, f"runtime.precision={precision}", f"hydra.run.dir={run}")
    assert done.returncode == EXIT_DIVERGED == 3, done.stderr[-2000:]
    (message,) = done.stderr.strip().splitlines()
    assert message.startswith("resnet-train: error: the loss became NaN/Inf at step ")
    assert json.loads((run / "checkpoints" / "resolved.json").read_text()) == {"runtime.precision": precision}
    step = int(re.search(r"at step (\d+)", message).group(1))
    assert step >= 2 and f"ckpt-{step - 1} is kept" in message
    latest = tf.train.latest_checkpoint(str(run / "checkpoints"))
    assert latest.endswith(f"ckpt-{step - 1}") and readable(latest) is None  # nothing after it
    assert all(np.isfinite(v).all() for v in weights(run).values() if v.dtype.kind == "f")
    assert not (run / "results.json").exists() and not (run / ".lock").exists()


def test_float16_skips_non_finite_steps_and_stops_only_when_it_persists(tmp_path):
    with pytest.raises(TrainingDiverged, match=r"4 steps in a row \(more than runtime.max_nonfinite_steps=3\)"):
        train_and_evaluate(
            compose(
                *EXPLODING, "runtime.precision=mixed_float16", "runtime.max_nonfinite_steps=3", "data.limit_train=512"
            ),
            tmp_path / "a",
        )


def _run_with_the_next_checkpoint_failing(tmp_path, trained):
    """A TINY run stopped after epoch 1 (its first checkpoint kept): (run, overrides, that
    checkpoint's name, {file: digest} of its checkpoints, the checkpoint's data size)."""
    run = tmp_path / "disk" / "run"
    overrides = (*TWO_EPOCHS, f"hydra.run.dir={run}")
    trained(run, *overrides[:-1])
    first = keep_only_first_checkpoint(run)
    kept = {k: v for k, v in file_digests(run).items() if k.startswith("checkpoints")}
    return run, overrides, first, kept, next(run.glob(f"checkpoints/{first}.data-*")).stat().st_size


def assert_the_checkpoint_write_failed_cleanly(done, run, first, kept, reason):
    assert done.returncode == 2, done.stderr[-2000:]
    (line,) = done.stderr.strip().splitlines()
    assert "could not write the checkpoint of step 8" in line and reason in line
    assert f"resumes from {run / 'checkpoints' / first}" in line
    assert "Traceback" not in done.stderr
    now = {k: v for k, v in file_digests(run).items() if k.startswith("checkpoints")}
    assert {k: now.get(k) for k in kept} == kept
    # No partial files either; only the record of the command (a CLI run's overrides, saved once the checks passed).
    assert set(now) - set(kept) <= {"checkpoints/overrides.yaml"}
    assert tf.train.latest_checkpoint(str(run / "checkpoints")).endswith(first)


def test_a_full_disk_is_one_clear_error_and_earlier_checkpoints_stay_intact(tmp_path, trained):
    run, overrides, first, kept, size = _run_with_the_next_checkpoint_failing(tmp_path, trained)
    limit = size // 2  # logs and plots are smaller

    # The next checkpoint cannot be written: write() fails with EFBIG.
    done = launches.run(
        [str(CLI), *overrides], cwd=ROOT, capture_output=True, text=True, timeout=300, file_size_limit=limit
    )
    assert_the_checkpoint_write_failed_cleanly(done, run, first, kept, "File too large")


# A disk that is really full (ENOSPC, not a per-file limit): `disk` is copied onto a tmpfs mounted
# over it, in a mount namespace of the command's own (as root `unshare --mount`, else with a user
# namespace too), so nothing is mounted on the host nor left mounted if the test dies. A filler
# file takes all but `free` bytes. What the command left on the disk is copied back over `disk`.
ON_A_FULL_DISK = textwrap.dedent("""
    set -e
    disk=$1 stash=$2 free=$3
    shift 3
    cp -a "$disk/." "$stash/"
    mount -t tmpfs -o size=32m tmpfs "$disk"
    cp -a "$stash/." "$disk/"
    dd if=/dev/zero of="$disk/.filler" bs=64k 2>/dev/null || true
    truncate -s "-$free" "$disk/.filler"
    set +e
    "$@"
    code=$?
    rm -rf "$disk/.filler" "$stash"
    mkdir "$stash" && cp -a "$disk/." "$stash/"
    exit $code
""")


def unshare_mount():
    """The command prefix that gives a process a mount namespace where it may mount a tmpfs; skips
    the test where the container allows neither."""
    prefix = ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--mount"]
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1): cannot mount a small file system for a full disk")
    probe = subprocess.run(
        [*prefix, "sh", "-c", 'mount -t tmpfs -o size=1m tmpfs "$1"', "-", tempfile.gettempdir()],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if probe.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {probe.stderr.strip()[-300:]}")
    return prefix


def run_on_a_full_disk(disk, free, *command):
    stash = disk.parent / f"{disk.name}.after"
    stash.mkdir()
    done = subprocess.run(
        [*unshare_mount(), "sh", "-c", ON_A_FULL_DISK, "-", str(disk), str(stash), str(free), *command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    shutil.rmtree(disk)  # the disk as the command left it
    stash.rename(disk)
    return done


def test_a_really_full_disk_at_a_checkpoint_is_one_clear_error_and_earlier_checkpoints_stay_intact(tmp_path, trained):
    run, overrides, first, kept, size = _run_with_the_next_checkpoint_failing(tmp_path, trained)
    # Room for epoch 2's log lines and metrics, not for its checkpoint.
    done = run_on_a_full_disk(run.parent, size // 2 // 4096 * 4096, str(CLI), *overrides)
    assert_the_checkpoint_write_failed_cleanly(done, run, first, kept, "No space left on device")


def test_a_full_disk_is_found_before_training(tmp_path):
    run = tmp_path / "disk" / "run"
    run.mkdir(parents=True)
    done = run_on_a_full_disk(run.parent, 0, str(CLI), *TINY, "epochs=1", f"hydra.run.dir={run}")
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [
        f"resnet-train: error: cannot write to the run directory {run} (No space left on device): free disk space, "
        f"or choose another with hydra.run.dir=PATH"
    ]
    assert list(run.iterdir()) == []  # nothing written, not even the log


def test_a_second_run_in_the_same_directory_is_refused_and_a_stale_lock_is_taken_over(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    args = (*TINY, "epochs=1", f"hydra.run.dir={run}")
    owner = subprocess.Popen(["sleep", "60"])  # a live process holding the lock
    try:
        run.mkdir()
        (run / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": owner.pid}))
        before = file_digests(run)
        code, _, err = cli_in_process(monkeypatch, capsys, "resnet-train", *args)
        assert code == 2 and f"in use by process {owner.pid}" in err and len(err.strip().splitlines()) == 1
        assert file_digests(run) == before
    finally:
        owner.kill()
        owner.wait()
    code, _, err = cli_in_process(monkeypatch, capsys, "resnet-train", *args)  # the owner is gone: stale
    assert code == 0, err
    assert "Removing a stale lock" in (run / "train.log").read_text()
    assert not (run / ".lock").exists() and (run / "results.json").exists()


# Every source of per-step randomness and state at once: RandAugment (per image), mixup and cutmix
# (per batch, one of the two), EMA weights (optimizer state). 2 epochs of 8 steps.
AUGMENTED = (
    "depth=8",
    "batch_size=8",
    "data.limit_train=64",
    "data.limit_test=32",
    "epochs=2",
    "runtime.deterministic=true",
    "checkpoint.every_steps=4",
    "runtime=one_device",
    "runtime.precision=float32",
    "augment=randaugment",
    "augment.mixup_alpha=0.4",
    "augment.cutmix_alpha=1.0",
    "ema.decay=0.9",
)


@pytest.fixture(scope="module")
def augmented(tmp_path_factory):
    """AUGMENTED trained straight through, once per module and in this process: (run, results)."""
    run = tmp_path_factory.mktemp("augmented") / "run"
    return run, train_and_evaluate(compose(*AUGMENTED), run)


def test_deterministic_runs_are_bitwise_identical(tmp_path, augmented):
    """Every source of per-step randomness on (AUGMENTED): a second run gives the first one's bits."""
    first, results = augmented
    again = train_and_evaluate(compose(*AUGMENTED), tmp_path / "again")
    wa, wb = weights(first), weights(tmp_path / "again")
    assert wa.keys() == wb.keys() and len(wa) > 10
    for key in wa:
        np.testing.assert_array_equal(wa[key], wb[key], err_msg=key)
    assert again["test"] == results["test"] and again["test_ema"] == results["test_ema"]


def test_a_run_stopped_mid_epoch_with_every_augmentation_and_ema_resumes_exactly(tmp_path, monkeypatch, augmented):
    cfg = compose(*AUGMENTED)
    assert cfg.augment.randaugment.num_ops > 0 and cfg.augment.mixup_alpha > 0 and cfg.augment.cutmix_alpha > 0
    straight, results = augmented
    assert "test_ema" in results  # EMA really on

    # Stopped as a SIGTERM would, without a signal: after step 10's call the stop is requested, and
    # the next call (step 11, 3 steps into epoch 2, between the every-4-steps checkpoints) stops.
    stop = StepStop(monkeypatch, at=10)
    run = tmp_path / "run"
    with pytest.raises(Preempted, match="stopped by a test's stop at step 11 of 16"):
        train_and_evaluate(cfg, run)
    assert tf.train.latest_checkpoint(str(run / "checkpoints")).endswith("ckpt-11")
    stop.steps, stop.at = 0, None
    train_and_evaluate(compose(*AUGMENTED), run)
    assert stop.steps == 16 - 11  # resumed at step 11, not trained again from the start (which would also match)
    # The EMA copies are optimizer variables beside the momentum: compared by assert_same_run too.
    saved = weights(run)
    assert len([k for k in saved if k.startswith("optimizer/_variables/")]) >= 2 * len(
        [k for k in saved if k.startswith("optimizer/_trainable_variables/")]
    )
    assert_same_run(run, straight, steps=16)


def finished_run(run, trained):
    """A copy of the module's TINY epochs=1 run, with the train.log its CLI run would have left."""
    trained(run, *TINY, "epochs=1")
    (run / "train.log").write_text("[12:00:00] the run's own log lines\n")


def test_resuming_with_another_config_is_refused_and_changes_nothing(tmp_path, trained, monkeypatch, capsys):
    run = tmp_path / "run"
    finished_run(run, trained)
    before = file_digests(run)
    code, _, err = cli_in_process(
        monkeypatch, capsys, "resnet-train", *TINY, "epochs=1", "optimizer.lr=0.5", f"hydra.run.dir={run}"
    )
    assert code == 2 and "holds a run with another config (optimizer.lr: 0.1 -> 0.5)" in err
    assert file_digests(run) == before
    assert os.environ.get("HYDRA_FULL_ERROR") is None  # the CLI wrapper restored the environment


def test_an_unwritable_run_directory_fails_before_any_work(tmp_path):
    from resnet_train.errors import RunDirError

    (tmp_path / "a_file").write_text("")
    with pytest.raises(RunDirError, match="cannot write to the run directory .*a_file/run .*Not a directory"):
        train_and_evaluate(compose(*TINY, "epochs=1"), tmp_path / "a_file" / "run")


@contextlib.contextmanager
def full_from_the_first_record(limit):
    """Within: from the run's first metrics record on, no file of this process can grow past
    `limit` bytes: the kernel refuses that write (EFBIG) and nothing before it. (A limit from the
    start fails earlier, larger writes instead: the saved config, AutoGraph's files.) The limit is
    lifted on the way out, before pytest writes its own files and reports."""
    from resnet_train.report import metrics as report

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    sigxfsz = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
    log = report.Reporter.log

    def log_on_a_full_disk(self, *args, **kwargs):
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
        return log(self, *args, **kwargs)

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(report.Reporter, "log", log_on_a_full_disk)
            yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, sigxfsz)


@pytest.mark.parametrize(
    "before, full",
    [
        # metrics.jsonl of 2 epochs is larger than the session's new TensorBoard file: the metrics write fails
        (TWO_EPOCHS, "metrics.jsonl"),  # (the module's run for the damaged-checkpoint tests)
        # no file may grow past 64 bytes: TensorBoard's write (before the metrics') fails first
        ((*TINY, "epochs=1"), "tensorboard"),
    ],
    ids=["2-metrics.jsonl", "1-tensorboard"],
)
def test_a_full_disk_while_writing_the_logs_is_one_clear_error(tmp_path, trained, cli, before, full):
    run = tmp_path / "run"
    trained(run, *before)
    (run / "results.json").unlink()
    metrics = (run / "metrics.jsonl").read_bytes()
    epochs_before = compose(*before).epochs
    step = 4 * epochs_before

    # No file can grow past metrics.jsonl's size (or 64 bytes) once the next epoch logs its first record.
    with full_from_the_first_record(len(metrics) if full == "metrics.jsonl" else 64):
        done = cli(*before, f"epochs={epochs_before + 1}", f"hydra.run.dir={run}")
    assert done.returncode == 2, done.stderr[-2000:]
    (line,) = done.stderr.strip().splitlines()
    assert "could not write" in line and "File too large" in line
    assert line.endswith(
        f": free disk space or fix the directory, then rerun the same command; it resumes from "
        f"{run / 'checkpoints' / f'ckpt-{step}'}"
    )
    # The epoch was trained; its checkpoint (saved after the records) was not; no part of a record was written.
    assert f"Continuing at step {step} of {step + 4}" in (run / "train.log").read_text()
    assert tf.train.latest_checkpoint(str(run / "checkpoints")).endswith(f"ckpt-{step}")
    assert (run / "metrics.jsonl").read_bytes() == metrics
    # The line names the file that could not take the bytes (README): Reporter attaches it, as a
    # write through an open file (or TensorBoard's OutOfRangeError) names none.
    named = run / "tensorboard" / "train" if full == "tensorboard" else run / "metrics.jsonl"
    assert line.startswith(f"resnet-train: error: could not write {named} ("), line


def test_a_stop_at_an_epoch_end_finishes_that_epoch_first(tmp_path, cli):
    # One compiled call per epoch: the stop is always seen at an epoch's end. SIGTERM lands after
    # epoch 1's call, so epoch 2's call carries it (a signal landing inside epoch 2's call would
    # be carried by epoch 3's, the last: the run would simply finish). Epochs of 8 steps: how many
    # steps a call holds is not the point.
    epoch = 64 // 8  # data.limit_train=64 at LONG's batch_size=8
    args = (*LONG, "data.limit_train=64", "epochs=3", f"runtime.steps_per_call={epoch}")
    args += (f"hydra.run.dir={tmp_path / 'run'}",)
    run = tmp_path / "run"
    done = run_signalled_at(epoch, [signal.SIGTERM], *args)
    assert done.returncode == 75, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == (
        f"resnet-train: stopped by SIGTERM after epoch 2 (step {2 * epoch} of {3 * epoch}); checkpoint "
        f"{run / 'checkpoints' / f'ckpt-{2 * epoch}'} written: run the same command again to continue"
    )
    again = cli(*args)  # in this process: its start-up is not what is tested
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"Continuing at step {2 * epoch} of {3 * epoch}" in (run / "train.log").read_text()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for split in ("train", "eval"):  # every epoch evaluated and logged exactly once
        assert [r["epoch"] for r in records if r["split"] == split] == [1, 2, 3], split


def test_when_no_checkpoint_can_be_read_the_run_refuses_instead_of_starting_over(tmp_path):
    from resnet_train.errors import RunDirError

    run = tmp_path / "run"
    with_val = (*TINY, "epochs=1", "data.val_split=32")  # a validation split: best/ is kept
    train_and_evaluate(compose(*with_val), run)
    (run / "results.json").unlink()
    data = next(run.glob("checkpoints/ckpt-3.data-*"))
    data.write_bytes(data.read_bytes()[:100])
    metrics, best = (run / "metrics.jsonl").read_bytes(), file_digests(run / "checkpoints" / "best")
    assert best  # the run's best/ is the one thing the message points to: it stays as it was
    with pytest.raises(RunDirError, match="no readable checkpoint .* init_from=.*best"):
        train_and_evaluate(compose(*with_val), run)
    assert (run / "metrics.jsonl").read_bytes() == metrics and file_digests(run / "checkpoints" / "best") == best
    assert (run / "checkpoints" / "corrupt" / data.name).exists()


def test_a_damaged_checkpoint_index_falls_back_to_the_files(tmp_path, trained):
    run = tmp_path / "run"
    overrides = TWO_EPOCHS
    straight = trained(run, *overrides)
    keep_only_first_checkpoint(run)  # stopped after epoch 1 ...
    (run / "checkpoints" / "checkpoint").write_text("model_checkpoint_path: \x00garbage {{{")  # ... index damaged
    got = train_and_evaluate(compose(*overrides), run)
    assert got["steps"] == 8 and got["test"] == straight["test"]


def test_a_line_cut_short_in_metrics_is_skipped(tmp_path):
    from resnet_train.report.metrics import best_logged, read_metrics

    (tmp_path / "metrics.jsonl").write_text('{"split": "eval", "step": 4, "accuracy": 0.5}\n{"split": "ev')
    assert read_metrics(tmp_path) == [{"split": "eval", "step": 4, "accuracy": 0.5}]
    assert best_logged(tmp_path, "eval", "accuracy") == 0.5


def test_a_sweep_member_rerun_with_another_config_is_refused_and_its_config_restored(tmp_path, trained):
    from omegaconf import OmegaConf

    from resnet_train.errors import RunDirError

    member = tmp_path / "0"
    trained(member, *TINY, "epochs=1")
    original = (member / ".hydra" / "config.yaml").read_text()
    other = compose(*TINY, "epochs=1", "optimizer.lr=0.3")
    OmegaConf.save(other, member / ".hydra" / "config.yaml")  # what Hydra does before the member runs
    with pytest.raises(RunDirError, match=r"another config \(optimizer.lr: 0.1 -> 0.3\)"):
        train_and_evaluate(other, member)
    assert (member / ".hydra" / "config.yaml").read_text() == original


def test_settings_added_to_the_tool_later_do_not_block_resuming_an_older_run():
    from omegaconf import OmegaConf

    from resnet_train.training.run_dir import config_changes

    new = compose(*TINY)
    old = OmegaConf.create(OmegaConf.to_container(new))
    del old.optimizer["clip_norm"]  # a run saved before optimizer.clip_norm existed
    old.epochs = 99
    assert config_changes(old, new) == ([], [f"epochs: 99 -> {new.epochs}"])


def test_stale_locks_other_hosts_and_restarts(tmp_path, monkeypatch):
    from resnet_train.errors import RunDirError
    from resnet_train.training import run_lock

    lock = tmp_path / ".lock"
    me = socket.gethostname()
    lock.write_text(json.dumps({"host": "node-7", "pid": 12345}))  # another host, heartbeat fresh
    with pytest.raises(RunDirError, match="in use by process 12345 on node-7"):
        run_lock.RunLock(tmp_path).acquire()
    old = time.time() - run_lock.STALE_AFTER_S - 60  # ... its heartbeat stopped: requeued elsewhere
    os.utime(lock, (old, old))
    with run_lock.RunLock(tmp_path):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()
    lock.write_text(json.dumps({"host": me, "pid": os.getpid()}))  # a restarted container, same PID
    with run_lock.RunLock(tmp_path):
        pass
    monkeypatch.setattr(run_lock, "HEARTBEAT_S", 0.05)  # the holder keeps its lock fresh
    with run_lock.RunLock(tmp_path):
        os.utime(lock, (old, old))
        deadline = time.monotonic() + 60  # a hang guard: the wait ends at the next beat
        while time.time() - lock.stat().st_mtime > 5:
            assert time.monotonic() < deadline, "the heartbeat did not refresh the lock"
            time.sleep(0.01)


def test_a_refused_rerun_adds_nothing_to_the_existing_runs_log(tmp_path, trained, monkeypatch, capsys):
    run = tmp_path / "run"
    finished_run(run, trained)
    log = (run / "train.log").read_text()
    # The data found now is not the run's (as if its folder had gained images): refused once the
    # data is read, after the strategy line was logged.
    dataset = json.loads((run / "dataset.json").read_text())
    (run / "dataset.json").write_text(json.dumps({**dataset, "train_size": dataset["train_size"] + 1}))
    code, out, err = cli_in_process(
        monkeypatch, capsys, "resnet-train", *TINY, "epochs=1", "runtime.steps_per_call=2", f"hydra.run.dir={run}"
    )  # not skipped as finished
    # The terminal saw the log lines ...
    assert code == 2 and "the data found now is not the dataset" in err and "Strategy" in out
    assert (run / "train.log").read_text() == log  # ... the run's log did not


def test_a_refused_library_call_leaves_the_logging_set_up_as_it_was(tmp_path):
    import logging
    import logging.handlers

    from resnet_train.errors import RunDirError

    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid()}))  # alive
    handler = logging.FileHandler(run / "train.log", delay=True)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with pytest.raises(RunDirError, match="in use by"):
            train_and_evaluate(compose(*TINY, "epochs=1"), run)
        assert handler in root.handlers
        assert not any(isinstance(h, logging.handlers.MemoryHandler) for h in root.handlers)
    finally:
        root.removeHandler(handler)
        handler.close()
