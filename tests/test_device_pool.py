"""runtime.devices=pool (runtime/device_pool.py): one device per member, a lock per device that a
killed member cannot leak. Logical CPU devices stand in for GPUs: the locking is the same."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import textwrap
import time

import launches
import pytest
from helpers import TINY, cli_in_process, run_cli

from resnet_train.errors import ConfigError
from resnet_train.runtime import device_pool

# A member standing in: holds a device of the pool, records when it held it, sleeps, records the
# end while still holding it (so a recorded window is inside the real hold), then lets it go.
MEMBER = textwrap.dedent("""
    import json, logging, sys, time
    from resnet_train.runtime import device_pool
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    pool, record, hold_s, count = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    held = device_pool.acquire(pool, [f"CPU:{i}" for i in range(count)], run=record, poll_s=0.05)
    start = time.time()
    open(record + ".holding", "w").close()
    time.sleep(hold_s)
    with open(record, "w") as f:
        json.dump({"device": held.device, "start": start, "end": time.time()}, f)
    device_pool.release()
""")


def member(pool, record, hold_s, count):
    return launches.popen(
        [sys.executable, "-c", MEMBER, str(pool), str(record), str(hold_s), str(count)],
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(path, timeout=30):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_four_members_on_two_devices_never_share_one_and_use_both(tmp_path):
    records = [tmp_path / f"member{i}.json" for i in range(4)]
    members = [member(tmp_path / "pool", record, 0.6, 2) for record in records]
    for m in members:
        _, err = m.communicate(timeout=60)
        assert m.returncode == 0, err
    windows = [json.loads(r.read_text()) for r in records]
    for device in ("CPU:0", "CPU:1"):
        held = sorted((w["start"], w["end"]) for w in windows if w["device"] == device)
        for (_, end), (start, _) in zip(held, held[1:]):
            assert start >= end, f"{device} held by two members at once: {held}"
    assert {w["device"] for w in windows} == {"CPU:0", "CPU:1"}
    # Two at a time, not one after another: the pool hands out both devices at once.
    assert min(w["end"] for w in windows) > sorted(w["start"] for w in windows)[1]


def test_a_member_killed_while_holding_frees_its_device_for_the_next(tmp_path):
    pool = tmp_path / "pool"
    holder = member(pool, tmp_path / "holder.json", 120, 1)
    wait_for(tmp_path / "holder.json.holding")
    waiting = member(pool, tmp_path / "next.json", 0, 1)
    time.sleep(1.0)
    assert not (tmp_path / "next.json.holding").exists()  # the one device is held: it waits
    holder.kill()  # SIGKILL: no handler, no release; the kernel drops the flock
    holder.wait()
    killed = time.monotonic()
    wait_for(tmp_path / "next.json.holding", timeout=10)
    assert time.monotonic() - killed < 5
    _, err = waiting.communicate(timeout=30)
    assert waiting.returncode == 0, err
    # While waiting it said who held the device (the lock file's record of its holder).
    assert f"all 1 device(s) held (CPU:0 by PID {holder.pid} on" in err
    assert json.loads((tmp_path / "next.json").read_text())["device"] == "CPU:0"


def test_waiting_past_the_timeout_is_one_clear_error(tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    fd = os.open(device_pool.lock_path(pool, "CPU:0"), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another open file: conflicts even within this process
        start = time.monotonic()
        with pytest.raises(ConfigError, match=r"^runtime.devices=pool: no device came free in 0 s \(CPU:0 by "):
            device_pool.acquire(pool, ["CPU:0"], timeout_s=0.3, poll_s=0.05)
        assert 0.3 <= time.monotonic() - start < 3
    finally:
        os.close(fd)
    assert device_pool.acquire(pool, ["CPU:0"], timeout_s=0.3).device == "CPU:0"  # free again
    device_pool.release()


def test_a_sweep_takes_the_free_device_and_names_it(tmp_path):
    """resnet-train -m (Hydra's basic launcher: two members, one process) with the first logical
    CPU held elsewhere: each member holds the other one, and lets it go when it ends."""
    pool, sweep = tmp_path / "pool", tmp_path / "sweep"
    pool.mkdir()
    fd = os.open(device_pool.lock_path(pool, "CPU:0"), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        args = ("runtime.devices=pool", "runtime.cpu_replicas=2", f"runtime.device_pool_dir={pool}", "epochs=1")
        done = run_cli("-m", *TINY, *args, "seed=0,1", f"hydra.sweep.dir={sweep}")
        assert done.returncode == 0, done.stderr[-2000:]
    finally:
        os.close(fd)
    for job in ("0", "1"):
        results = json.loads((sweep / job / "results.json").read_text())
        assert results["device_pool"]["device"] == "CPU:1", results.get("device_pool")
        log = (sweep / job / "train.log").read_text()
        assert (
            "Device pool: holding CPU:1" in log
            and "over 1 replica(s): /job:localhost/replica:0/task:0/device:CPU:1" in log
        )
    # The sweep's process is gone and held nothing after it: both devices are free.
    for device in ("CPU:0", "CPU:1"):
        assert device_pool.acquire(pool, [device], timeout_s=0.2).device == device
    device_pool.release()


def test_a_run_lets_its_device_go_when_it_ends(tmp_path, monkeypatch, capsys):
    """However it ends (here: its data refused after it took the device) and though its process
    lives on (a joblib worker waiting for its next member), the device is free again."""
    pool, empty = tmp_path / "pool", tmp_path / "empty"
    empty.mkdir()
    taken, acquire = [], device_pool.acquire

    def recorded(*args, **kwargs):
        taken.append(acquire(*args, **kwargs))
        return taken[-1]

    monkeypatch.setattr(device_pool, "acquire", recorded)
    args = (*TINY, "data=folder", f"data.path={empty}", "runtime.devices=pool", "runtime.cpu_replicas=2")
    code, _, err = cli_in_process(
        monkeypatch,
        capsys,
        "resnet-train",
        *args,
        f"runtime.device_pool_dir={pool}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert code == 2 and "no images in" in err, err
    assert [held.device for held in taken] == ["CPU:0"]  # it held the device when its data was refused
    assert device_pool.held() is None
    fd = os.open(device_pool.lock_path(pool, "CPU:0"), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises BlockingIOError if still held
    finally:
        os.close(fd)


def test_pool_without_a_gpu_or_logical_cpus_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    args = (*TINY, "runtime.devices=pool", f"runtime.device_pool_dir={tmp_path / 'pool'}")
    code, _, err = cli_in_process(monkeypatch, capsys, "resnet-train", *args, f"hydra.run.dir={tmp_path / 'run'}")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "runtime.devices=pool shares this machine's GPUs among runs, but TensorFlow sees no GPU here" in err
    assert "runtime.cpu_replicas=N" in err


def test_a_bad_devices_setting_is_refused_before_anything_runs():
    from helpers import compose

    from resnet_train import config

    for override, message in (
        ("runtime.devices=gpu0", r"^runtime.devices must be null .*pool .*\(got 'gpu0'\)"),
        ("runtime.devices=[0,1]", r"^runtime.devices must be null .*\(got \[0, 1\]\)"),
        ("runtime.device_pool_timeout_s=0", r"^runtime.device_pool_timeout_s must be null .* > 0 \(got 0.0\)"),
    ):
        with pytest.raises(ConfigError, match=message):
            config.validate(compose(override))
