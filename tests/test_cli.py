"""The `resnet-train` command as a user runs it: real exit codes, real files. One run is the real
console script in a subprocess; the others call its entry point in process (conftest's `cli`), the
same code without TensorFlow's start-up."""

import json
import os

from helpers import TINY, run_cli

from resnet_train.runtime import onednn


def test_tiny_run_end_to_end_then_rerun_resumes(cli, tmp_path):
    run = tmp_path / "run"
    # The real console script, once in the suite: its exit code, and its stderr from a fresh start.
    # runtime.onednn flips this process's oneDNN setting: the CLI applies it before TensorFlow's import.
    flipped = "false" if onednn.enabled() else "true"
    # So does runtime.threads TensorFlow's thread pools (TF_NUM_INTEROP_THREADS, TF_NUM_INTRAOP_THREADS).
    done = run_cli(
        *TINY, "epochs=2", f"runtime.onednn={flipped}", "runtime.threads=[1,2]", f"hydra.run.dir={run}", fresh=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (
        f"oneDNN kernels {'on' if flipped == 'true' else 'off'} (runtime.onednn={flipped})"
        in (run / "train.log").read_text()
    )
    assert "threads: runtime.threads=[1,2]: 1 inter-op, 2 intra-op" in (run / "train.log").read_text()
    assert "Test accuracy" in done.stdout and f"Run directory: {run}" in done.stdout
    # No TensorFlow start-up chatter (oneDNN, CUDA probes): nothing imports it before the CLI's quiet
    # import, the sweep callback included (it runs before the task).
    assert not [line for line in done.stderr.splitlines() if "] " in line and ".cc:" in line], done.stderr[-2000:]
    for path in (
        ".hydra/config.yaml",
        "checkpoints/checkpoint",
        "metrics.jsonl",
        "results.json",
        "dataset.json",
        "train.log",
    ):
        assert (run / path).exists(), path
    for split in ("train", "eval"):
        assert list((run / "tensorboard" / split).glob("events.out.tfevents.*")), split
    results = json.loads((run / "results.json").read_text())
    assert results["epochs"] == 2 and results["steps"] == 2 * (128 // 32)
    assert results["test"]["examples"] == 64 and results["parameters"] > 0
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "accuracy", "top5"} <= set(evals[-1])
    assert "epoch 2/2" in (run / "train.log").read_text()  # one line per epoch off a terminal

    # The same command, the same run directory, more epochs: it continues, it does not restart.
    again = cli(*TINY, "epochs=3", f"hydra.run.dir={run}")
    assert again.returncode == 0, again.stderr[-2000:]
    log = (run / "train.log").read_text()
    assert "Resumed from" in log and "epoch 3/3" in log
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] == 3 * (128 // 32)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    accuracies = [r["accuracy"] for r in records if r["split"] == "eval"]
    assert len(accuracies) == 3 and results["best_test_accuracy_optimistic"] == max(accuracies)


def test_the_closing_line_names_the_top_k_the_run_measured(cli, tmp_path):
    """3 classes: top-3 (top-5 of 3 classes would always be 1), read from the metrics, not NaN."""
    done = cli(
        *TINY,
        "data=synthetic",
        "data.num_classes=3",
        "data.image_shape=[8,8,3]",
        "epochs=1",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "(top-3 1.0000, loss" in done.stdout


def test_bad_depth_is_one_line_and_exit_code_2(cli, tmp_path):
    done = cli("depth=57", f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1] == (
        "resnet-train: error: CIFAR ResNet depth must be 6n+2: 20, 32, 44, 56, 110, 1202, ... "
        "(got 57); for ImageNet ResNets (18, 34, 50, 101, 152, 200) add model.variant=imagenet"
    )
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before any training


def test_an_entry_point_called_in_process_leaves_os_environ_as_it_found_it(cli, tmp_path, monkeypatch):
    """A notebook's or a test's process: what the command set for itself (the thread pools' and
    Hydra's variables) is undone when it ends, here by a user error after they were set."""
    from resnet_train.runtime import threads

    monkeypatch.setattr(threads, "_applied", threads._applied)  # the pools later runs' logs report
    before = dict(os.environ)
    done = cli(*TINY, "depth=57", "runtime.threads=[1,2]", f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 2 and "CIFAR ResNet depth must be 6n+2" in done.stderr
    assert dict(os.environ) == before


def test_missing_cifar_with_download_off_fails_at_once(cli, tmp_path):
    # The real path, no patching: data.download=false, so nothing is probed or downloaded on any
    # machine (conftest's guard fails this test if the process tries). "At once": no download started.
    done = cli(
        "data=cifar10",
        "depth=20",
        "data.download=false",
        f"data.data_dir={tmp_path / 'tfds'}",
        f"data.manual_dir={tmp_path / 'manual'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == (
        f"resnet-train: error: cifar10 is not prepared in {tmp_path / 'tfds'} and downloads are off "
        f"(data.download=false): put cifar-10-binary.tar.gz (from "
        f"https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz) into {tmp_path / 'manual'} (or set "
        f"data.manual_dir to the folder that holds it), or point data.data_dir at a prepared "
        f"tensorflow-datasets folder, or set data.download=true to let tensorflow-datasets download it"
    )
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "tfds" / "downloads").exists() and not (tmp_path / "run" / "checkpoints").exists()


def test_cfg_job_shows_the_groups_and_user_yaml_extends_them(cli, tmp_path):
    done = cli("--cfg", "job")
    assert done.returncode == 0
    for group in ("model:", "data:", "optimizer:", "schedule:", "augment:", "depth: 20", "seed: 0"):
        assert group in done.stdout
    mine = tmp_path / "my_configs" / "optimizer"
    mine.mkdir(parents=True)
    (mine / "slow_sgd.yaml").write_text("name: sgd\nlr: 0.001\nmomentum: 0.5\nweight_decay: 0.0\n")
    done = cli("--config-dir", str(tmp_path / "my_configs"), "optimizer=slow_sgd", "--cfg", "job")
    assert done.returncode == 0, done.stderr
    assert "lr: 0.001" in done.stdout and "momentum: 0.5" in done.stdout


def test_global_batch_that_does_not_split_over_replicas_fails_before_training(cli, tmp_path):
    done = cli("runtime=mirrored", "runtime.cpu_replicas=2", "batch_size=33", f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 2
    assert "batch_size=33 (the global batch) does not divide over 2 replicas" in done.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "run" / "checkpoints").exists()
