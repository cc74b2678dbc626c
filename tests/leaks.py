"""No process the suite starts outlives its test, or the suite (conftest.py's checks).

Every process a test starts carries the test's mark in its environment, and every process the
suite starts the session's: children inherit both, and an orphan that init adopted keeps them, so
the processes left over are found by their marks wherever they were reparented. (/proc's copy of
a process's environment is the one it started with: a test process's own os.environ changes do
not mark it.)"""

from __future__ import annotations

import os

import psutil

SESSION_MARK = "RESNET_TRAIN_TEST_SESSION"
TEST_MARK = "RESNET_TRAIN_TEST_PROCESS"


def marked(key: str, value: str, exclude=()) -> list[psutil.Process]:
    """The running processes whose environment has key=value (not this one, nor `exclude`)."""
    skip = {os.getpid(), *(p.pid for p in exclude)}
    found = []
    for process in psutil.process_iter():
        if process.pid in skip:
            continue
        try:
            if process.environ().get(key) == value and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except psutil.Error:  # gone, a zombie, or not ours to read
            continue
    return found


def outliving(key: str, value: str, grace_s: float, exclude=()) -> list[str]:
    """The marked processes still running `grace_s` after the call (waited for, not slept: the
    wait ends as the last one exits), each killed then; one line describing each."""
    _, alive = psutil.wait_procs(marked(key, value, exclude), timeout=grace_s)
    described = []
    for process in alive:
        try:
            described.append(f"pid {process.pid}: {' '.join(process.cmdline())[:300]}")
            process.kill()
        except psutil.Error:  # it ended just now
            continue
    psutil.wait_procs(alive, timeout=10)
    return described
