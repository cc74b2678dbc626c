"""The run lock is never stolen from a live run (issue 14, item 2); no TensorFlow here."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from resnet_train.errors import RunDirError
from resnet_train.training import run_lock
from resnet_train.training.interrupts import StopRequests

ROOT = Path(__file__).resolve().parents[1]

# A process that takes the lock of argv[1]; between judging a lock stale and moving it aside it
# announces `<sync>/<name>.judged` and waits for the files named after argv[4:]. It prints its
# token (or the refusal), announces `<name>.done`, and holds the lock until its stdin closes.
HOLDER = r"""
import os, sys, time
from pathlib import Path
from resnet_train.training import run_lock
from resnet_train.errors import RunDirError

run, sync, name, heartbeat, *waits = sys.argv[1:]
run_lock.HEARTBEAT_S = float(heartbeat)
calls = []

def window():
    if calls:
        return
    calls.append(1)
    Path(sync, name + ".judged").touch()
    deadline = time.monotonic() + 30
    while not all(Path(sync, w).exists() for w in waits):
        assert time.monotonic() < deadline, waits
        time.sleep(0.005)

run_lock._before_takeover = window
lock = run_lock.RunLock(run)
try:
    lock.acquire()
    print("won", lock.record["token"], flush=True)
except RunDirError as e:
    print("refused", e, flush=True)
Path(sync, name + ".done").touch()
sys.stdin.read()
lost = lock.lost
lock.release()
print("lost", lost, flush=True)
"""


def holder(run, sync, name, *waits, heartbeat=30.0):
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run), str(sync), name, str(heartbeat), *waits],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def me(**changes) -> dict:
    return {**run_lock.owner_record(), **changes}


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def wait_until_stopped(pid, timeout=60):
    """Until every thread of `pid` is stopped ('T' in /proc/<pid>/task/*/stat): a stopped group
    runs none of its threads, the heartbeat's included."""
    deadline = time.monotonic() + timeout
    while True:
        states = [run_lock._process(int(task.name)) for task in Path(f"/proc/{pid}/task").iterdir()]
        if all(state and state[0] == "T" for state in states):
            return
        assert time.monotonic() < deadline, f"process {pid} did not stop: {states}"
        time.sleep(0.01)


class counted_beats:
    """Counts RunLock._beat calls that have returned, so that a test waits for beats, not time."""

    def __init__(self, monkeypatch):
        self.done, self.changed = 0, threading.Condition()
        beat = run_lock.RunLock._beat

        def counted(lock):
            try:
                return beat(lock)
            finally:
                with self.changed:
                    self.done += 1
                    self.changed.notify_all()

        monkeypatch.setattr(run_lock.RunLock, "_beat", counted)

    def wait_for_more(self, n, timeout=60):
        """Until n beats that started after this call have returned (`timeout`: a hang guard)."""
        with self.changed:
            target = self.done + 1 + n  # one beat may be under way now: it does not count
            assert self.changed.wait_for(lambda: self.done >= target, timeout), f"{self.done} beats of {target}"


def age(path, seconds):
    old = time.time() - seconds
    os.utime(path, (old, old))


@pytest.mark.parametrize("order", ["the second moves the first's new lock", "both move at once"])
def test_two_processes_taking_over_one_stale_lock_at_once_leave_one_owner(tmp_path, order):
    run, sync = tmp_path / "run", tmp_path / "sync"
    run.mkdir()
    sync.mkdir()
    (run / ".lock").write_text(json.dumps(me(pid=dead_pid(), start_time=1, token="dead")))  # stale
    both = ("a.judged", "b.judged")
    second_waits = (*both, "a.done") if order.startswith("the second") else both
    processes = {"a": holder(run, sync, "a", *both), "b": holder(run, sync, "b", *second_waits)}
    try:
        results = {name: p.stdout.readline().split(maxsplit=1) for name, p in processes.items()}
        assert (sync / "a.judged").exists() and (sync / "b.judged").exists()  # both were in the window
        winners = [name for name, (outcome, _) in results.items() if outcome == "won"]
        assert len(winners) == 1, results
        loser = ({"a", "b"} - set(winners)).pop()
        assert "is in use by" in results[loser][1]
        owner = json.loads((run / ".lock").read_text())
        assert owner["token"] == results[winners[0]][1].strip() and owner["pid"] == processes[winners[0]].pid
        assert [p.name for p in run.iterdir()] == [".lock"]  # nothing left aside
    finally:
        for p in processes.values():
            p.communicate(timeout=60)
    assert not (run / ".lock").exists()


@pytest.mark.parametrize("pid", ["dead here", "ours"])
def test_a_fresh_lock_from_another_pid_namespace_is_not_taken_even_with_a_dead_or_equal_pid(tmp_path, pid):
    lock = tmp_path / ".lock"
    other = me(
        pid=dead_pid() if pid == "dead here" else os.getpid(), pid_ns="pid:[1]", start_time=1, token="other"
    )  # another container with the same host name and boot id
    lock.write_text(json.dumps(other))
    with pytest.raises(RunDirError, match=f"in use by process {other['pid']} on {socket.gethostname()}"):
        run_lock.RunLock(tmp_path).acquire()
    assert json.loads(lock.read_text())["token"] == "other"
    age(lock, run_lock.STALE_AFTER_S + 60)  # its heartbeat stopped: that container is gone
    with run_lock.RunLock(tmp_path) as taken:
        assert json.loads(lock.read_text())["token"] == taken.record["token"]
    assert not lock.exists()


def test_a_stopped_process_keeps_its_lock_however_old_its_heartbeat(tmp_path):
    lock = tmp_path / ".lock"
    child = holder(tmp_path, tmp_path, "child", heartbeat=0.05)
    try:
        outcome, token = child.stdout.readline().split()
        assert outcome == "won"
        child.send_signal(signal.SIGSTOP)  # Ctrl-Z, `scontrol suspend`
        wait_until_stopped(child.pid)  # no beat after the lock is aged
        age(lock, run_lock.STALE_AFTER_S + 60)
        with pytest.raises(RunDirError, match=f"in use by process {child.pid}"):
            run_lock.RunLock(tmp_path).acquire()
        child.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 60  # a hang guard: the wait ends at the beat
        while time.time() - lock.stat().st_mtime > 60:  # it beats again ...
            assert time.monotonic() < deadline, "no beat after SIGCONT"
            time.sleep(0.02)
        assert json.loads(lock.read_text())["token"] == token  # ... on its own lock
        out, _ = child.communicate("", timeout=60)
        assert out.split() == ["lost", "None"] and child.returncode == 0
        assert not lock.exists()  # released
    finally:
        child.send_signal(signal.SIGCONT)
        child.kill()
        child.wait()


def test_the_heartbeat_notices_a_takeover_and_leaves_the_new_owners_lock(tmp_path, monkeypatch):
    monkeypatch.setattr(run_lock, "HEARTBEAT_S", 0.05)
    lock = tmp_path / ".lock"
    reasons, called = [], threading.Event()
    held = run_lock.RunLock(tmp_path, on_lost=lambda reason: (reasons.append(reason), called.set())).acquire()
    try:
        taker = tmp_path / "taker"
        taker.write_text(json.dumps({"host": "host-b", "pid": 123, "token": "theirs"}))
        os.replace(taker, lock)  # what a takeover from host-b leaves
        assert called.wait(60), "on_lost was not called"
        held._thread.join(60)  # the heartbeat ends: no beat after the loss touches their lock
        assert not held._thread.is_alive(), "the heartbeat goes on beating"
        assert reasons == [held.lost] and "taken over by process 123 on host-b" in reasons[0]
        assert not held.held
    finally:
        held.release()
    assert json.loads(lock.read_text())["token"] == "theirs"


def test_a_deleted_lock_is_created_again_by_the_heartbeat(tmp_path, monkeypatch):
    monkeypatch.setattr(run_lock, "HEARTBEAT_S", 0.05)
    lock = tmp_path / ".lock"
    beats = counted_beats(monkeypatch)
    lost = []
    with run_lock.RunLock(tmp_path, on_lost=lost.append) as held:
        lock.unlink()  # a user or a cleanup script
        beats.wait_for_more(3)  # the first creates it again, the next two find it this run's
        assert lock.exists(), "the lock was not created again"
        assert json.loads(lock.read_text())["token"] == held.record["token"] and held.held
    assert lost == [] and held.lost is None and not lock.exists()


def test_a_reused_pid_is_stale_and_its_own_process_is_not(tmp_path):
    lock = tmp_path / ".lock"
    alive = subprocess.Popen(["sleep", "30"])
    try:
        started = None
        while started is None:  # /proc/<pid> of the new process
            started = run_lock._process(alive.pid)
        record = me(pid=alive.pid, start_time=started[1], token="sleep")
        lock.write_text(json.dumps(record))
        age(lock, run_lock.STALE_AFTER_S + 60)  # the heartbeat does not matter on this machine
        with pytest.raises(RunDirError, match=f"in use by process {alive.pid}"):
            run_lock.RunLock(tmp_path).acquire()
        lock.write_text(json.dumps({**record, "start_time": started[1] - 1}))  # that PID, another process
        with run_lock.RunLock(tmp_path) as taken:
            assert json.loads(lock.read_text())["token"] == taken.record["token"]
    finally:
        alive.kill()
        alive.wait()


def test_stop_requests_can_come_from_another_thread():
    stop = StopRequests()
    assert not stop.requested and stop.reason is None
    thread = threading.Thread(target=stop.request, args=("the run lock was lost",))
    thread.start()
    thread.join()
    assert stop.requested and stop.reason == "the run lock was lost" and stop.signal_name is None


@pytest.mark.parametrize("content", ["", '{"host": "ho'], ids=["empty", "cut short"])
def test_an_empty_or_cut_short_lock_is_taken_over_at_once(tmp_path, caplog, content):
    """What a kill between creating the lock and writing its record left (issue 29, item 22): no
    owner to wait for, so the rerun takes it at once instead of refusing for 5 minutes."""
    lock = tmp_path / ".lock"
    lock.write_text(content)  # just now: a fresh heartbeat
    started = time.monotonic()
    with caplog.at_level("WARNING"), run_lock.RunLock(tmp_path) as taken:
        assert json.loads(lock.read_text())["token"] == taken.record["token"]
    assert time.monotonic() - started < 5
    assert "Removing a stale lock" in caplog.text and "empty or cut short" in caplog.text
    assert list(tmp_path.iterdir()) == []  # released, and nothing left aside


KILLED_WRITING = r"""
import json, os, signal, sys
from resnet_train.training import run_lock

def dump_then_die(record, f):
    f.write(json.dumps(record)[:10])
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)

run_lock.json.dump = dump_then_die
run_lock.RunLock(sys.argv[1]).acquire()
"""


def test_a_kill_while_the_lock_is_written_leaves_no_lock(tmp_path):
    """The record is complete before `.lock` exists (written aside, then hard-linked): a process
    killed while writing it leaves no lock for the next run to judge."""
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITING, str(tmp_path)], cwd=ROOT, timeout=60)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / ".lock").exists()
    with run_lock.RunLock(tmp_path) as taken:
        assert json.loads((tmp_path / ".lock").read_text())["token"] == taken.record["token"]
