"""MultiWorkerMirroredStrategy for real: two `resnet-train` processes on 127.0.0.1 with TF_CONFIG."""
import json
import os
import socket
import subprocess

import numpy as np
import tensorflow as tf

from conftest import CLI, ROOT, TINY, compose
from resnet_train.train import train_and_evaluate

COMMON = (*TINY, "runtime.precision=float32", "runtime.deterministic=true")


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_two_workers(run_dir, tmp, *overrides, chief_preexec=None):
    """Two `resnet-train runtime=multi_worker` processes on 127.0.0.1 (worker 0 is the chief)."""
    hosts = [f"127.0.0.1:{p}" for p in free_ports(2)]
    procs = []
    for index in range(2):
        env = {**os.environ, "TMPDIR": str(tmp),
               "TF_CONFIG": json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}})}
        procs.append(subprocess.Popen([str(CLI), "runtime=multi_worker", *COMMON, *overrides, f"hydra.run.dir={run_dir}"],
                                      env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      preexec_fn=chief_preexec if index == 0 else None))
    return procs


def run_two_workers(run_dir, tmp, *overrides, timeout=300):
    procs = start_two_workers(run_dir, tmp, *overrides)
    outputs = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        outputs.append((proc.returncode, out, err))
    return outputs


def model_weights(checkpoint):
    reader = tf.train.load_checkpoint(checkpoint)
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if k.startswith("model/") and k.endswith("VARIABLE_VALUE")}


def test_two_workers_train_together_like_one_process_and_resume(tmp_path):
    run, tmp = tmp_path / "run", tmp_path / "tmp"
    tmp.mkdir()
    outputs = run_two_workers(run, tmp, "epochs=2")
    for code, out, err in outputs:
        assert code == 0, err[-3000:]

    # Only the chief wrote results, metrics, summaries and checkpoints; the other worker's
    # temporary checkpoint directory is gone.
    results = json.loads((run / "results.json").read_text())
    assert results["replicas"] == 2 and results["steps"] == 2 * (128 // 32)
    assert (run / "checkpoints" / "checkpoint").exists() and (run / "train.log").exists()
    assert "Strategy MultiWorkerMirroredStrategy over 2 replica(s)" in (run / "train.log").read_text()
    assert (run / "train_worker1.log").exists()
    assert not list(tmp.iterdir())
    assert len([line for line in (run / "metrics.jsonl").read_text().splitlines()
                if json.loads(line)["split"] == "train"]) == 2  # one writer, not two

    # The same global batches, split the same way over 2 replicas in one process: same weights.
    single = train_and_evaluate(compose(*COMMON, "epochs=2", "runtime=mirrored", "runtime.cpu_replicas=2"),
                                tmp_path / "single")
    a, b = model_weights(results["checkpoint"]), model_weights(single["checkpoint"])
    assert a.keys() == b.keys() and len(a) > 10
    for key in a:
        if "moving_" in key:
            # BN moving statistics are not trained: the two strategies aggregate the replicas'
            # updates differently (a Keras/TF internal), within a fraction of a percent.
            assert np.abs(a[key] - b[key]).max() <= 0.01 * np.abs(b[key]).max(), key
        else:  # every trained weight: the same global batches, split the same way
            np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-5, err_msg=key)
    assert results["test"]["examples"] == single["test"]["examples"] == 64
    assert abs(results["test"]["loss"] - single["test"]["loss"]) < 0.05 * single["test"]["loss"]

    # Rerunning the same command with more epochs resumes from the chief's checkpoint.
    outputs = run_two_workers(run, tmp, "epochs=3")
    for code, out, err in outputs:
        assert code == 0, err[-3000:]
    log = (run / "train.log").read_text()
    assert "Resumed from" in log and "epoch 3/3" in log
    assert json.loads((run / "results.json").read_text())["steps"] == 3 * (128 // 32)


def test_sigterm_to_one_worker_stops_both_at_the_same_step_and_the_rerun_continues(tmp_path):
    import signal
    import time

    run, tmp = tmp_path / "run", tmp_path / "tmp"
    tmp.mkdir()
    overrides = ("epochs=2", "batch_size=16", "data.limit_train=512", "checkpoint.every_steps=4")
    procs = start_two_workers(run, tmp, *overrides)
    try:
        deadline = time.monotonic() + 240
        while not (run / "checkpoints" / "checkpoint").exists():
            assert all(p.poll() is None for p in procs) and time.monotonic() < deadline
            time.sleep(0.01)
        procs[1].send_signal(signal.SIGTERM)  # the non-chief only, as a preempted host would be
        outputs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [75, 75], [err[-2000:] for _, err in outputs]
    chief_says = outputs[0][1].strip().splitlines()[-1]
    assert "stopped by a signal on another worker" in chief_says
    assert "stopped by SIGTERM" in outputs[1][1]
    step = int(chief_says.split("at step ")[1].split()[0])
    assert 0 < step < 2 * 512 // 16
    assert tf.train.latest_checkpoint(str(run / "checkpoints")).endswith(f"ckpt-{step}")

    for code, out, err in run_two_workers(run, tmp, *overrides):
        assert code == 0, err[-3000:]
    assert f"Continuing at step {step} of 64" in (run / "train.log").read_text()
    assert json.loads((run / "results.json").read_text())["steps"] == 64


def test_when_the_chief_fails_the_other_worker_says_so_in_one_line_instead_of_hanging(tmp_path):
    import resource
    import signal

    run, tmp = tmp_path / "run", tmp_path / "tmp"
    tmp.mkdir()

    def chief_disk_full():  # only the chief writes: its first checkpoint cannot be written
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    procs = start_two_workers(run, tmp, "epochs=3", chief_preexec=chief_disk_full)
    try:
        outputs = [p.communicate(timeout=180) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert procs[0].returncode == 2 and "could not write the checkpoint" in outputs[0][1]
    assert procs[1].returncode == 4, outputs[1][1][-2000:]
    (line,) = [line for line in outputs[1][1].strip().splitlines() if line.startswith("resnet-train:")]
    assert "lost contact with another worker" in line and "Traceback" not in outputs[1][1]
