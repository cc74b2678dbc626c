"""A scheduler's SIGTERM or SIGUSR2 in the first seconds of `resnet-train`, before the run's own
handlers exist (Python's and TensorFlow's imports, the config's checks): a stop that the same
command continues (exit 75), never the default action's death by signal, which
docs/slurm/train.sbatch (requeue on 75) and other retry rules would read as a failure."""

import signal
import subprocess
import time

import launches
import pytest
from helpers import CLI, ROOT, TINY, cli_in_process

from resnet_train.training import interrupts


def catches(pid: int, sig: int) -> bool:
    """Whether the process has a handler for `sig` (the SigCgt mask of /proc/<pid>/status)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            mask = next(line for line in status if line.startswith("SigCgt:")).split()[1]
    except (OSError, StopIteration):
        return False
    return bool(int(mask, 16) >> (sig - 1) & 1)


@pytest.mark.parametrize("sig", [signal.SIGUSR2, signal.SIGTERM])
def test_a_signal_in_the_first_moment_is_a_stop_the_rerun_continues(tmp_path, sig):
    # fresh: a new interpreter from its first line, not a fork of the suite's server (which has
    # imported TensorFlow already)
    process = launches.popen(
        [str(CLI), *TINY, "epochs=1", f"hydra.run.dir={tmp_path}"],
        fresh=True, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not catches(process.pid, sig):  # sent the moment it can be caught: TensorFlow is seconds away
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.005)
    process.send_signal(sig)
    out, err = process.communicate(timeout=60)
    name = signal.Signals(sig).name
    assert process.returncode == 75, err[-2000:]
    assert f"resnet-train: stopped by {name} while starting, before anything was written" in err, err[-2000:]
    assert "Traceback" not in err
    assert not (tmp_path / "checkpoints").exists()


def test_the_entry_point_called_in_a_process_leaves_no_handler_of_its_own(monkeypatch, capsys):
    """A notebook or a test calling the entry point: a refused config returns with SIGTERM and
    SIGUSR2 as they were (the default), not with the start-up catch installed."""
    saved = {sig: signal.signal(sig, signal.SIG_DFL) for sig in interrupts.SCHEDULER_SIGNALS}
    try:
        code, _, err = cli_in_process(monkeypatch, capsys, "resnet-train", "batch_size=0")
        assert code == 2 and "batch_size" in err
        assert [signal.getsignal(s) for s in saved] == [signal.SIG_DFL, signal.SIG_DFL]
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def test_the_runs_handlers_replace_the_catch_and_never_pass_sigusr2_on_to_it():
    """Once the run installs its handlers, SIGUSR2 is theirs (a checkpoint of the current step);
    the catch is not the 'handler installed before' that a stop passes SIGUSR2 on to (that is for
    submitit's requeue), and the run leaves the default behind."""
    previous = signal.signal(signal.SIGUSR2, signal.SIG_DFL)
    try:
        interrupts.catch_from_the_start()
        assert signal.getsignal(signal.SIGUSR2) is interrupts.stop_while_starting
        with interrupts.StopRequests(exit_during_set_up=False) as stop:
            signal.raise_signal(signal.SIGUSR2)  # would raise StoppedDuringSetUp if passed on
            assert stop.requested and stop.signal_name == "SIGUSR2"
        assert signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL
    finally:
        interrupts.release_start_catch()
        signal.signal(signal.SIGUSR2, previous)
