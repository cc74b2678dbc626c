"""The suite's own guard (leaks.py, run by conftest.py after every test and at the end): a process
a test started that is still running, orphaned or not, is found by its mark and killed."""

import os
import subprocess
import sys
import time

import leaks
import psutil


def test_a_process_left_running_is_found_by_its_mark_even_orphaned_and_killed():
    env = {**os.environ, "MARK_UNDER_TEST": "this-test"}
    # The shell exits at once; its background sleep is adopted by init, not a child of ours.
    subprocess.run(["sh", "-c", "sleep 120 >/dev/null 2>&1 &"], env=env, check=True, capture_output=True)
    (orphan,) = leaks.marked("MARK_UNDER_TEST", "this-test")
    assert orphan.ppid() != os.getpid() and orphan.name() == "sleep"
    started = time.monotonic()
    (line,) = leaks.outliving("MARK_UNDER_TEST", "this-test", grace_s=0.5)
    assert line == f"pid {orphan.pid}: sleep 120" and time.monotonic() - started < 10
    assert not orphan.is_running() or orphan.status() == psutil.STATUS_ZOMBIE
    assert leaks.marked("MARK_UNDER_TEST", "this-test") == []


def test_a_process_ending_within_the_grace_is_waited_for_not_reported():
    env = {**os.environ, "MARK_UNDER_TEST": "ending"}
    ending = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1)"], env=env)
    try:
        assert leaks.outliving("MARK_UNDER_TEST", "ending", grace_s=60) == []
        assert ending.wait(timeout=5) == 0  # it ended by itself: the wait ended with it, not after 60 s
    finally:
        ending.kill()
