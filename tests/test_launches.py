"""The suite's fork server (launches.py): a forked launch behaves as a new process would."""

import json
import os
import signal
import subprocess
import sys

import launches
import pytest
from helpers import CLI, ROOT


def test_a_forked_launch_is_a_process_of_its_own_with_its_arguments_environment_and_exit_code(tmp_path):
    code = (
        "import json, os, sys; data = sys.stdin.read(); "
        "print(json.dumps([os.getpid(), os.getppid(), os.getcwd(), sys.argv, os.environ['RESNET_TEST_VALUE'], data])); "
        "print('to stderr', file=sys.stderr); sys.exit(7)"
    )
    args = [sys.executable, "-c", code, "a", "b c"]
    env = {**os.environ, "RESNET_TEST_VALUE": "given"}
    done = launches.run(args, input="piped", capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert isinstance(done, subprocess.CompletedProcess) and done.returncode == 7, done.stderr
    pid, parent, cwd, argv, value, data = json.loads(done.stdout)
    server = launches._server().process.pid
    assert pid not in (os.getpid(), server) and parent == server  # forked, not started anew
    assert (cwd, argv, value, data) == (str(tmp_path), ["-c", "a", "b c"], "given", "piped")
    assert done.stderr == "to stderr\n"


def test_signals_exceptions_and_timeouts_end_a_forked_launch_as_they_end_a_process():
    sleeping = launches.popen([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert isinstance(sleeping, launches.Forked) and sleeping.stdout.readline() == "up\n"
    assert sleeping.poll() is None
    sleeping.send_signal(signal.SIGTERM)
    assert sleeping.wait(timeout=30) == -signal.SIGTERM
    interrupted = launches.run([sys.executable, "-c", "raise KeyboardInterrupt"], capture_output=True, text=True)
    assert interrupted.returncode == -signal.SIGINT and "KeyboardInterrupt" in interrupted.stderr
    failed = launches.run([sys.executable, "-c", "raise ValueError('x')"], capture_output=True, text=True)
    assert failed.returncode == 1 and "ValueError: x" in failed.stderr
    with pytest.raises(subprocess.TimeoutExpired):
        launches.run([sys.executable, "-c", "import time; time.sleep(60)"], timeout=1)


def test_a_launch_a_fork_cannot_stand_for_is_a_new_process(tmp_path):
    # TF_ENABLE_ONEDNN_OPTS is read when TensorFlow is imported: the server's import fixed it.
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0" if os.environ["TF_ENABLE_ONEDNN_OPTS"] == "1" else "1"}
    flipped = launches.popen([sys.executable, "-c", "pass"], env=env)
    fresh = launches.popen([sys.executable, "-c", "pass"], fresh=True)
    other = launches.popen(["true"])
    (tmp_path / "keras_home" / ".keras").mkdir(parents=True)  # Keras reads ~/.keras/keras.json at import
    (tmp_path / "keras_home" / ".keras" / "keras.json").write_text('{"floatx": "float16"}')
    keras_settings = launches.popen(
        [sys.executable, "-c", "pass"], env={**os.environ, "HOME": str(tmp_path / "keras_home")}
    )
    for process in (flipped, fresh, other, keras_settings):
        assert type(process) is subprocess.Popen and process.wait(timeout=60) == 0
    empty_home = launches.popen([sys.executable, "-c", "pass"], env={**os.environ, "HOME": str(tmp_path)})
    assert isinstance(empty_home, launches.Forked) and empty_home.wait(timeout=60) == 0
    forked = launches.popen([str(CLI), "--help"], cwd=ROOT, stdout=subprocess.DEVNULL)
    assert isinstance(forked, launches.Forked) and forked.wait(timeout=60) == 0


def test_a_file_size_limit_makes_a_large_write_fail_in_a_forked_launch_and_a_new_process(tmp_path):
    code = "import sys\nwith open(sys.argv[1], 'wb') as f: f.write(bytes(5000))"
    for fresh in (False, True):
        done = launches.run([sys.executable, "-c", code, str(tmp_path / f"f{fresh}")], capture_output=True,
                            text=True, file_size_limit=1000, fresh=fresh)  # fmt: skip
        assert done.returncode == 1 and "File too large" in done.stderr, done.stderr


def test_a_forked_launch_left_running_is_found_by_its_test_and_killed():
    mark = os.environ["RESNET_TRAIN_TEST_PROCESS"]
    left = launches.popen([sys.executable, "-c", "import time; time.sleep(60)"])
    ending = launches.popen([sys.executable, "-c", "import time; time.sleep(1)"])
    (line,) = launches.outliving(mark, grace_s=5)
    assert f"pid {left.pid} (forked)" in line and left.returncode == -signal.SIGKILL and ending.returncode == 0
