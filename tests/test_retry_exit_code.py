"""runtime.retry_exit_code: the exit code of a stop that a rerun continues (a signal: 75, a lost
peer: 4), so that a scheduler which retries only its own codes (Kubeflow's restartPolicy: ExitCode:
130, 137, 138, 143) restarts it; everything else keeps its own code."""

import os
import signal

import pytest
import tensorflow as tf
from helpers import TINY, cli_in_process

from resnet_train.errors import (
    EXIT_DIVERGED,
    EXIT_PREEMPTED,
    EXIT_USER_ERROR,
    EXIT_WORKER_LOST,
    Preempted,
    StoppedDuringSetUp,
    TrainingDiverged,
    WorkerLost,
    exit_code,
)


def test_only_the_stops_a_rerun_continues_take_the_setting():
    for error, own in (
        (Preempted("stopped"), EXIT_PREEMPTED),
        (StoppedDuringSetUp("stopped"), EXIT_PREEMPTED),
        (WorkerLost("lost"), EXIT_WORKER_LOST),
    ):
        assert exit_code(error) == exit_code(error, None) == own
        assert exit_code(error, 138) == 138
    for error, own in ((TrainingDiverged("nan"), EXIT_DIVERGED), (ValueError("bug"), EXIT_USER_ERROR)):
        assert exit_code(error, 138) == own


@pytest.mark.parametrize("configured,expected", [(None, EXIT_WORKER_LOST), (138, 138)])
def test_a_lost_peer_exits_with_the_configured_code(tmp_path, monkeypatch, capsys, configured, expected):
    from resnet_train.training import loop

    def lost(*args, **kwargs):
        raise WorkerLost("lost contact with another worker")

    monkeypatch.setattr(loop, "train_and_evaluate", lost)
    setting = [] if configured is None else [f"runtime.retry_exit_code={configured}"]
    code, _, err = cli_in_process(monkeypatch, capsys, "resnet-train", *TINY, *setting, f"hydra.run.dir={tmp_path}")
    assert code == expected, err
    assert err.strip().splitlines()[-1] == "resnet-train: error: lost contact with another worker"


def test_a_stopped_run_exits_with_the_configured_code_and_keeps_its_checkpoint(tmp_path, monkeypatch, capsys):
    """SIGTERM right after the first checkpoint (end of epoch 1 of 2): the run saves the step it is
    at, exits 143 instead of 75, and the same command continues from that checkpoint."""
    from resnet_train.training.checkpoint import Checkpointer

    save = Checkpointer.save

    def save_then_terminate(self, step, epoch):
        path = save(self, step, epoch)
        monkeypatch.setattr(Checkpointer, "save", save)  # once
        os.kill(os.getpid(), signal.SIGTERM)
        return path

    monkeypatch.setattr(Checkpointer, "save", save_then_terminate)
    run = tmp_path / "run"
    args = (*TINY, "epochs=2", "runtime.retry_exit_code=143", f"hydra.run.dir={run}")
    code, _, err = cli_in_process(monkeypatch, capsys, "resnet-train", *args)
    assert code == 143, err[-2000:]
    assert "stopped by SIGTERM" in err
    kept = tf.train.latest_checkpoint(str(run / "checkpoints"))
    step = int(kept.rsplit("-", 1)[1])
    assert 4 <= step < 8 and not (run / "results.json").exists()  # 4 steps an epoch, 8 in all

    code, _, err = cli_in_process(monkeypatch, capsys, "resnet-train", *args)
    assert code == 0, err[-2000:]
    assert f"Continuing at step {step} of 8" in (run / "train.log").read_text()
    assert (run / "results.json").exists()
