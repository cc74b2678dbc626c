"""MultiWorkerMirroredStrategy for real: two `resnet-train` processes on 127.0.0.1 with TF_CONFIG.

Each launch of two workers costs two TensorFlow start-ups: the claims are combined into as few
launches as is honest: one chain of reruns, on TFRecords read with data.shard=files, covers a
signal to either worker, a worker killed, the resumes and each worker's own files; one run that
stops early is compared with the same run in one process."""

import json
import os
import re
import shutil
import sys

import numpy as np
import pytest
import tensorflow as tf
from helpers import CLI, ROOT, TINY, compose, file_digests, run_on_free_ports, write_records

from resnet_train.errors import EXIT_PREEMPTED, EXIT_USER_ERROR, EXIT_WORKER_LOST
from resnet_train.training.loop import train_and_evaluate

COMMON = (*TINY, "runtime.precision=float32", "runtime.deterministic=true")  # runtime=multi_worker after it

# `resnet-train`, which sends itself a signal right after its first checkpoint save when
# RESNET_TEST_AFTER_FIRST_SAVE names one. A signal sent from outside lands at a step that depends
# on the machine's load (after the last step, nothing is left to stop); sent here, the step it
# lands after is known, so the step every worker must stop at is known too.
SELF_SIGNALLING_CLI = r"""
import os, signal, sys
from resnet_train import cli
cli._quiet_tensorflow()  # as the console script: TF's start-up notices stay off stderr
action = os.environ.pop("RESNET_TEST_AFTER_FIRST_SAVE", "")
if action.startswith("SETUP:"):  # instead: during set-up, once the strategy exists (reading the data)
    from resnet_train.training import inputs
    make = inputs.make
    def signal_then_make(*args, **kwargs):
        os.kill(os.getpid(), getattr(signal, action[len("SETUP:"):]))
        return make(*args, **kwargs)
    inputs.make = signal_then_make
elif action:
    from resnet_train.training.checkpoint import Checkpointer
    save = Checkpointer.save
    def save_then_signal(self, step, epoch):
        path = save(self, step, epoch)
        Checkpointer.save = save  # once
        os.kill(os.getpid(), getattr(signal, action))
        return path
    Checkpointer.save = save_then_signal
sys.argv[0] = "resnet-train"
cli.train()
"""


def run_two_workers(
    run_dirs, tmp, *overrides, after_first_save=(None, None), file_size_limit=(None, None), timeout=300, attempts=3
):
    """Runs worker 0 (the chief) and worker 1 of `resnet-train runtime=multi_worker` on 127.0.0.1
    to their end: [(exit code, stdout, stderr)] per worker. `run_dirs`: one for both, or one each;
    `after_first_save`: per worker, a signal it sends itself after its first checkpoint save.
    A worker that cannot bind its port has both launched again on others (run_on_free_ports)."""
    if not isinstance(run_dirs, (list, tuple)):
        run_dirs = (run_dirs, run_dirs)

    def launches(ports):
        hosts = [f"127.0.0.1:{port}" for port in ports]
        for index in range(2):
            env = {
                **os.environ,
                "TMPDIR": str(tmp),
                "TF_CONFIG": json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}),
            }
            command = [str(CLI)]
            if after_first_save[index]:
                env["RESNET_TEST_AFTER_FIRST_SAVE"] = after_first_save[index]
                command = [sys.executable, "-c", SELF_SIGNALLING_CLI]
            args = [*command, *COMMON, "runtime=multi_worker", *overrides, f"hydra.run.dir={run_dirs[index]}"]
            yield {"args": args, "env": env, "cwd": ROOT, "file_size_limit": file_size_limit[index]}

    return run_on_free_ports(2, launches, tmp.parent, timeout=timeout, attempts=attempts)


def test_a_worker_that_cannot_bind_its_port_has_both_launched_again_on_new_ports(tmp_path):
    """What run_two_workers does when another process took a port after free_ports chose it: the
    worker that failed to bind ends, its peer (which would wait for it) is stopped, both start again."""
    launched = []

    def launches(ports):
        launched.append(ports)
        taken = len(launched) == 1
        failing = "import sys; sys.exit('Failed to add port: 0.0.0.0:1')"
        waiting = "import time; time.sleep(600)"  # for a peer that will never come
        yield {"args": [sys.executable, "-c", failing if taken else "print('up')"]}
        yield {"args": [sys.executable, "-c", waiting if taken else "print('up')"]}

    assert run_on_free_ports(2, launches, tmp_path, timeout=120) == [(0, "up\n", "")] * 2
    assert len(launched) == 2 and all(len(ports) == 2 for ports in launched)


def model_weights(checkpoint):
    """Every weight and optimizer slot the checkpoint holds. A trained weight is stored once, under
    the first path that reaches it, optimizer/_trainable_variables/<i>; model/ holds only what the
    optimizer does not track (BN moving statistics)."""
    reader = tf.train.load_checkpoint(checkpoint)
    return {
        k: reader.get_tensor(k)
        for k in reader.get_variable_to_shape_map()
        if k.startswith(("model/", "optimizer/_trainable_variables/", "optimizer/_variables/"))
        and k.endswith("VARIABLE_VALUE")
    }


def messages(stderr):
    """The tool's own lines on stderr (TF or Hydra may add warnings of their own)."""
    return [line for line in stderr.splitlines() if line.startswith("resnet-train:")]


def checkpoint_files(run):
    """The checkpoints and their index (beside them, the chief keeps a copy of the config it runs)."""
    return {k: v for k, v in file_digests(run / "checkpoints").items() if k.startswith(("ckpt-", "checkpoint"))}


def latest_step(run):
    return int(tf.train.latest_checkpoint(str(run / "checkpoints")).rsplit("-", 1)[1])


# The run the train-together and stop-early checks share: it stops early after epoch 2 of 5.
STOPPING = ("epochs=5", "data.val_split=0.25", "early_stop.patience=1", "early_stop.min_delta=1.0")


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The workers' run in one process: the same global batches split the same way over 2 replicas."""
    run = tmp_path_factory.mktemp("single") / "run"
    config = compose(*COMMON, *STOPPING, "runtime=mirrored", "runtime.cpu_replicas=2")
    return run, train_and_evaluate(config, run)


@pytest.fixture(scope="module")
def together(tmp_path_factory):
    """Two workers' run of the same config: (run directory, the workers' TMPDIR, their outputs)."""
    base = tmp_path_factory.mktemp("together")
    run, tmp = base / "run", base / "tmp"
    tmp.mkdir()
    return run, tmp, run_two_workers(run, tmp, *STOPPING)


def test_two_workers_train_together_like_one_process(together, single):
    run, tmp, outputs = together
    for code, out, err in outputs:
        assert code == 0, err[-3000:]

    # Only the chief wrote results, metrics, summaries and checkpoints; the other worker's
    # temporary checkpoint directory is gone.
    results = json.loads((run / "results.json").read_text())
    assert results["replicas"] == 2 and results["steps"] == 2 * (96 // 32)  # 2 epochs: it stopped early
    assert (run / "checkpoints" / "checkpoint").exists() and (run / "train.log").exists()
    assert "Strategy MultiWorkerMirroredStrategy over 2 replica(s)" in (run / "train.log").read_text()
    assert (run / "train_worker1.log").exists()
    assert not list(tmp.iterdir())
    assert (
        len([line for line in (run / "metrics.jsonl").read_text().splitlines() if json.loads(line)["split"] == "train"])
        == 2
    )  # one writer, not two

    # The same global batches, split the same way over 2 replicas in one process: the same weights,
    # optimizer slots and BN moving statistics, bit for bit. With two replicas every all-reduce is
    # one addition per element (a + b == b + a) and its mean a halving, both exact, however the
    # strategy orders them; deterministic ops do the rest. (Measured: identical over seeds 0-4 with
    # TF_ENABLE_ONEDNN_OPTS=0 and =1 on an AMD EPYC Zen 4.) Resuming both workers is checked by the
    # signal test's reruns.
    single_run, single_results = single
    assert single_results["stopped_early_at_epoch"] == results["stopped_early_at_epoch"] == 2
    a, b = model_weights(results["checkpoint"]), model_weights(single_results["checkpoint"])
    assert a.keys() == b.keys() and sum(k.startswith("optimizer/_trainable_variables/") for k in a) > 10
    assert any("moving_" in k for k in a)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    # The test loss is summed over the workers' shares in another order: 8.6e-8 relative at most, same runs.
    assert results["test"]["examples"] == single_results["test"]["examples"] == 64
    assert results["test"]["loss"] == pytest.approx(single_results["test"]["loss"], rel=1e-6)


def test_two_workers_stop_early_together(together):
    """early_stop is decided from the all-reduced evaluation: both workers stop after the same epoch."""
    run, _, outputs = together
    for code, out, err in outputs:
        assert code == 0, err[-3000:]
    results = json.loads((run / "results.json").read_text())
    assert results["stopped_early_at_epoch"] == 2 and results["steps"] == 2 * (96 // 32)
    assert "Stopping early after epoch 2" in (run / "train_worker1.log").read_text()
    # The figures the decision read: each worker evaluates its own half of the validation examples
    # (split by example), so figures of its own would differ; both logged the same all-reduced ones.
    figures = re.compile(r"epoch (\d)/5 .*\| (val loss [\d.]+  acc [\d.]+  bal\.acc [\d.]+  macro-F1 [\d.]+) \|")
    chief, other = (figures.findall((run / log).read_text()) for log in ("train.log", "train_worker1.log"))
    assert len(chief) == 2 and chief == other, (chief, other)


def test_workers_that_restored_different_checkpoints_each_say_so_in_one_line(tmp_path, single):
    """No shared file system: each worker reads its own copy of the run directory, and the copies
    hold different checkpoints (steps 6 and 3). Every worker refuses with one line listing every
    worker's step, instead of hanging in mismatched collectives; nothing is trained."""
    single_run, _ = single
    behind, tmp = tmp_path / "behind", tmp_path / "tmp"
    tmp.mkdir()
    ahead = tmp_path / "ahead"
    shutil.copytree(single_run, ahead)
    shutil.copytree(single_run, behind)
    ckpts = behind / "checkpoints"
    state = tf.train.get_checkpoint_state(str(ckpts))
    first = state.all_model_checkpoint_paths[0].rsplit("/", 1)[-1]
    assert first == "ckpt-3" and latest_step(ahead) == 6
    for f in ckpts.glob("ckpt-*"):
        if not f.name.startswith(first + "."):
            f.unlink()
    tf.compat.v1.train.update_checkpoint_state(str(ckpts), first, all_model_checkpoint_paths=[first])
    (behind / "results.json").unlink()
    before = {d: checkpoint_files(d) for d in (ahead, behind)}

    # epochs=6: neither copy is a finished run of this config (which would be skipped).
    outputs = run_two_workers((ahead, behind), tmp, *STOPPING, "epochs=6")
    for (code, _, err), (run, step) in zip(outputs, [(ahead, 6), (behind, 3)]):
        assert code == EXIT_USER_ERROR, err[-3000:]
        assert messages(err) == [
            f"resnet-train: error: the workers restored different checkpoints (steps [6, 3]; this one: step {step} "
            f"from {run}): give every worker the same hydra.run.dir on a file system they share"
        ], err[-3000:]
        assert "Traceback" not in err
        assert checkpoint_files(run) == before[run]  # no step was trained or saved


# 16 steps of 16 images, a checkpoint every 2 steps: each worker's first save is at an even
# step, its signal is seen by the next compiled call (1 step), which every worker runs.
CHAIN_TOTAL = 2 * 128 // 16


def sharded_records(folder):
    """data=tfrecord in 4 training files of 32 examples, data.shard=files: the overrides."""
    write_records(folder / "train", 128, shards=4)
    write_records(folder / "val", 12, shards=1, seed=1)
    return (
        "data=tfrecord",
        f"data.train_files={folder}/train-*",
        f"data.eval_files={folder}/val-*",
        "data.label_offset=1",
        "data.image_size=32",
        "data.shard=files",
    )


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """One run of TFRecords read with data.shard=files, stopped three times and resumed each time:
    a SIGTERM to the non-chief during its set-up (as a preempted host would be), then a SIGUSR2
    (SLURM's warning) to the chief after its first checkpoint save, then the non-chief killed
    (kill -9); the last launch finishes the run. Returns the run directory and, per launch, (its
    outputs, the newest checkpoint after it, whether the run was finished then)."""
    base = tmp_path_factory.mktemp("chain")
    run, tmp = base / "run", base / "tmp"
    tmp.mkdir()
    overrides = (*sharded_records(base / "records"), "epochs=2", "batch_size=16", "checkpoint.every_steps=2")
    launches = []
    for after_first_save in ((None, "SETUP:SIGTERM"), ("SIGUSR2", None), (None, "SIGKILL"), (None, None)):
        outputs = run_two_workers(run, tmp, *overrides, after_first_save=after_first_save)
        latest = tf.train.latest_checkpoint(str(run / "checkpoints"))
        launches.append((outputs, latest, (run / "results.json").exists()))
    return run, launches


def stopped_at(stderr, cause):
    """The step and checkpoint a worker's one line says it stopped at."""
    (line,) = messages(stderr)
    found = re.fullmatch(
        rf"resnet-train: stopped by {cause} at step (\d+) of {CHAIN_TOTAL}; checkpoint (\S+) "
        r"written: run the same command again to continue from this step",
        line,
    )
    assert found, line
    return int(found.group(1)), found.group(2)


def test_a_signal_to_either_worker_stops_both_at_the_same_step(chain):
    """A SIGTERM to the non-chief during its set-up, then a SIGUSR2 to the chief after its first
    save: both workers stop at the same step and checkpoint it (after a signal during set-up, the
    first step: the workers agree on a stop in their compiled calls); the rerun continues from it."""
    run, launches = chain
    resumed_at = 0
    for (outputs, latest, finished), (signalled, name) in zip(launches, ((1, "SIGTERM"), (0, "SIGUSR2"))):
        assert [code for code, _, _ in outputs] == [EXIT_PREEMPTED] * 2, [err[-2000:] for _, _, err in outputs]
        # The step a signal lands before: the first one after a set-up signal, else the first save's.
        first_save = resumed_at if name == "SIGTERM" else resumed_at + 2 - resumed_at % 2
        steps = {}
        for index, (_, _, err) in enumerate(outputs):
            cause = name if index == signalled else "a signal on another worker"
            steps[index], checkpoint = stopped_at(err, cause)
            if index == 0:  # the chief's checkpoint is the run's; the other's a temporary copy
                assert checkpoint == str(run / "checkpoints" / f"ckpt-{steps[0]}")
        assert steps[0] == steps[1] == first_save + 1, steps  # the same step, on both
        assert latest == str(run / "checkpoints" / f"ckpt-{steps[0]}") and not finished
        if resumed_at:  # the second launch continued where the first stopped
            assert f"Continuing at step {resumed_at} of {CHAIN_TOTAL}" in (run / "train.log").read_text()
        resumed_at = steps[0]


def test_a_killed_worker_stops_the_other_and_a_rerun_finishes_the_run(chain):
    """The non-chief killed (kill -9) while the chief trains: the chief stops with one line, exit 4;
    the rerun continues from the newest checkpoint to the run's end."""
    run, launches = chain
    resumed_at = int(launches[1][1].rsplit("-", 1)[1])  # where the SIGUSR2 left the run
    (outputs, latest, finished), (rerun, _, _) = launches[2:]
    (chief_code, _, chief_err), (killed_code, _, _) = outputs
    assert killed_code == -9
    assert chief_code == EXIT_WORKER_LOST, chief_err[-3000:]
    (line,) = messages(chief_err)
    assert line.startswith("resnet-train: error: lost contact with another worker (") and "Traceback" not in chief_err
    assert line.endswith(
        f"it stopped (its log in {run} says why) or is unreachable; rerun every worker's "
        f"command to resume from {latest}"
    )
    # Killed right after its save at this step (the chief's own save of it may or may not have
    # completed): nothing later was saved, and the run was not finished.
    killed_after = resumed_at + 2 - resumed_at % 2
    last = int(latest.rsplit("-", 1)[1])
    assert resumed_at <= last <= killed_after and not finished

    for code, _, err in rerun:
        assert code == 0, err[-3000:]
    assert f"Continuing at step {last} of {CHAIN_TOTAL}" in (run / "train.log").read_text()
    assert json.loads((run / "results.json").read_text())["steps"] == CHAIN_TOTAL


def test_with_data_shard_files_each_worker_reads_only_its_own_files(chain):
    """data=tfrecord in 4 files, data.shard=files: in each epoch worker 0 reads 2 files and worker 1
    the other 2 (their logs name them; a resumed epoch the same ones again), and both step together
    to the run's end (the signal tests' run)."""
    run, launches = chain
    for code, _, err in launches[-1][0]:
        assert code == 0, err[-3000:]
    assert json.loads((run / "results.json").read_text())["steps"] == CHAIN_TOTAL
    pattern = re.compile(r"input pipeline (\d) of 2 reads 2 of 4 training files in epoch (\d) \(([^)]*)\)")
    read = {}  # (epoch, worker) -> the files it read, in every launch that read that epoch
    for log in (run / "train.log", run / "train_worker1.log"):
        for worker, epoch, files in pattern.findall(log.read_text()):
            read.setdefault((int(epoch), int(worker)), set()).add(frozenset(files.split(", ")))
    assert sorted(read) == [(1, 1), (1, 2), (2, 1), (2, 2)], read
    assert all(len(sets) == 1 for sets in read.values()), read  # resumed: the same files again
    for epoch in (1, 2):
        (first,), (second,) = read[(epoch, 1)], read[(epoch, 2)]
        assert not first & second and len(first | second) == 4


def test_when_the_chief_fails_the_other_worker_says_so_in_one_line_instead_of_hanging(tmp_path):
    run, tmp = tmp_path / "run", tmp_path / "tmp"
    tmp.mkdir()

    # Only the chief writes: its first checkpoint cannot be written (over 100 kB). The first
    # checkpoint comes after the first step: no epoch end (evaluation) before the failure.
    outputs = run_two_workers(
        run, tmp, "epochs=3", "checkpoint.every_steps=1", file_size_limit=(100_000, None), timeout=180
    )
    assert outputs[0][0] == 2 and "could not write the checkpoint" in outputs[0][2]
    assert outputs[1][0] == EXIT_WORKER_LOST, outputs[1][2][-2000:]
    (line,) = messages(outputs[1][2])
    assert "lost contact with another worker" in line and "Traceback" not in outputs[1][2]
