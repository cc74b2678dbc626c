"""logger=[mlflow, wandb]: real MLflow on its local file store and real W&B in offline mode (no
mocks). A run killed twice at the worst points, then resumed, is one tracked run whose metrics
are those of metrics.jsonl, each step once."""

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time

import launches
import mlflow
import numpy as np
import pytest
from helpers import ROOT, TINY
from mlflow.tracking import MlflowClient
from wandb.proto import wandb_internal_pb2

EPOCHS = 4  # of 4 steps (128 images, batch 32): eval records at steps 4, 8, 12, 16
TRACKED = (*TINY, f"epochs={EPOCHS}", "logger=[tensorboard,mlflow,wandb]", "wandb.mode=offline")

# resnet-train, killed with SIGKILL (nothing cleaned up, as a node that dies) on the n-th call of
# WHERE, "module:Class.method" or "module:function": when the call starts, or once it has returned
# with a trailing "+". "save" (Checkpointer.save: after an epoch's records were written, before its
# checkpoint) and "commit" (Reporter.commit: after its checkpoint, before the trackers got them).
# Each launch is a process of its own, forked from the suite's server (launches.py). A launch's
# output goes to its log.
KILLED_AT = textwrap.dedent("""
    import importlib, os, signal, sys
    from resnet_train import cli

    where, n = sys.argv.pop(1), int(sys.argv.pop(1))
    where = {"save": "resnet_train.training.checkpoint:Checkpointer.save",
             "commit": "resnet_train.report.metrics:Reporter.commit"}.get(where, where)
    after = where.endswith("+")
    module, _, name = where.rstrip("+").partition(":")
    owner = importlib.import_module(module)
    *path, attribute = name.split(".")
    for part in path:
        owner = getattr(owner, part)
    original, calls = getattr(owner, attribute), [0]

    def killed_at_n(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n and not after:
            os.kill(os.getpid(), signal.SIGKILL)
        result = original(*args, **kwargs)
        if calls[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(owner, attribute, killed_at_n)
    sys.argv[0] = "resnet-train"
    cli.train()
""")


class Launcher:
    """killed_at(where, n, *args): resnet-train with `args` in a process of its own, which must die
    of SIGKILL at that point."""

    def __init__(self, folder, env):
        self.folder, self.env, self.launches = folder, env, 0

    def killed_at(self, where, n, *args):
        self.launches += 1
        log = self.folder / f"launch{self.launches}.log"
        with open(log, "w") as out:
            done = launches.run([sys.executable, "-c", KILLED_AT, where, str(n), *args], cwd=ROOT, env=self.env,
                                stdout=out, stderr=subprocess.STDOUT, timeout=300)  # fmt: skip
        assert done.returncode == -signal.SIGKILL, log.read_text()[-3000:]


def wandb_records(path):
    """The protobuf records of a W&B transaction log (.wandb): a 7-byte header (":W&B", magic,
    version), then LevelDB-log blocks of 32 KiB holding chunks (crc32, length, type: 1 full, 2
    first, 3 middle, 4 last)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:  # zero padding to the block's end
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def wandb_history(offline_dirs):
    """[(step, {key: value})] of every history record of the offline runs, in session order."""
    rows = []
    for folder in offline_dirs:
        for record in wandb_records(next(folder.glob("run-*.wandb"))):
            if record.WhichOneof("record_type") == "history":
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                rows.append((record.history.step.num, items))
    return rows


@pytest.fixture
def tracking_env(tmp_path):
    """No W&B settings of the user's (conftest clears the rest); the stores are given explicitly
    (their defaults, ./mlruns and ./wandb, are relative to the working directory)."""
    return {**os.environ, "HOME": str(tmp_path / "home")}


@pytest.fixture
def launcher(tmp_path, tracking_env):
    return Launcher(tmp_path, tracking_env)


# After the last checkpoint (step 16): killed in the trackers' delivery, once log_batch returned
# (MLflow has train@16, tracking.json does not say so); drawing the pictures (no results.json yet);
# with results.json written, before the trackers got the end; then, rerun as finished, in MLflow's
# artifacts and between closing MLflow and W&B.
AFTER_THE_LAST_CHECKPOINT = (
    ("resnet_train.report.tracking_mlflow:MlflowTracker.log+", 3),
    ("resnet_train.report.plots:confusion_matrix", 1),
    ("resnet_train.report.tracking:Trackers.finish", 1),
    ("resnet_train.report.tracking_mlflow:MlflowTracker.file", 1),
    ("resnet_train.report.tracking_wandb:WandbTracker.close", 1),
)


def test_a_run_killed_at_every_point_is_one_finished_tracked_run_with_every_step_once(
    tmp_path, tracking_env, launcher, cli, monkeypatch
):
    run, store, wandb_dir = tmp_path / "run", (tmp_path / "mlruns").as_uri(), tmp_path / "wb"
    args = (*TRACKED, f"mlflow.tracking_uri={store}", f"wandb.dir={wandb_dir}", f"hydra.run.dir={run}")
    # 1: killed in epoch 2's checkpoint save, its records already in metrics.jsonl (step 8).
    launcher.killed_at("save", 2, *args)
    assert [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())] == [4, 4, 8, 8]
    # 2: resumed at step 4 (epoch 2 redone), killed after epoch 3's checkpoint, before its records were sent.
    launcher.killed_at("commit", 2, *args)
    sent = json.loads((run / "tracking.json").read_text())
    assert sent["mlflow"]["sent"] == ["eval@4", "eval@8", "train@4", "train@8"]
    assert sent["wandb"]["sent"] == []  # no W&B session finished yet
    # 3-7: resumed at step 12, epoch 4 trained, then killed at each point after its checkpoint.
    for where, n in AFTER_THE_LAST_CHECKPOINT:
        launcher.killed_at(where, n, *args)
        assert (run / "results.json").exists() == (where.endswith(("finish", "file", "close")))
    assert json.loads((run / "tracking.json").read_text())["mlflow"]["sent"] == sorted(
        f"{split}@{step}" for split in ("train", "eval") for step in (4, 8, 12, 16)
    )
    # 8: rerun as finished: the trackers get what they lack.
    for key, value in tracking_env.items():
        monkeypatch.setenv(key, value)
    done = cli(*args)
    assert done.returncode == 0, done.stderr[-3000:]

    jsonl = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    expected = {split: [(r["step"], r["loss"]) for r in jsonl if r["split"] == split] for split in ("train", "eval")}
    assert [s for s, _ in expected["eval"]] == [4, 8, 12, 16]
    results = json.loads((run / "results.json").read_text())
    ids = json.loads((run / "tracking.json").read_text())
    assert ids["mlflow"]["finished"] and ids["wandb"]["finished"]

    # MLflow: one run, finished, each step once with metrics.jsonl's value; params; results; files.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # this test's client: the run undid its own setting
    client = MlflowClient(tracking_uri=store)
    (experiment,) = [e for e in client.search_experiments() if e.name == "resnet-train"]
    (tracked,) = client.search_runs([experiment.experiment_id])
    assert tracked.info.run_id == ids["mlflow"]["id"] and tracked.info.status == "FINISHED"
    for split in ("train", "eval"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(tracked.info.run_id, f"{split}/loss"))
        assert [s for s, _ in history] == [s for s, _ in expected[split]]
        np.testing.assert_allclose([v for _, v in history], [v for _, v in expected[split]], rtol=1e-6)
    for key in ("train/accuracy", "epoch"):  # every key once a step (epoch: the train and eval records' both)
        assert sorted(m.step for m in client.get_metric_history(tracked.info.run_id, key)) == [4, 8, 12, 16]
    assert [m.step for m in client.get_metric_history(tracked.info.run_id, "results/test/accuracy")] == [16]
    params = tracked.data.params
    assert params["depth"] == "8" and params["epochs"] == str(EPOCHS) and params["optimizer.name"] == "sgd"
    assert tracked.data.metrics["results/test/accuracy"] == pytest.approx(results["test"]["accuracy"])
    artifacts = {a.path for a in client.list_artifacts(tracked.info.run_id)}
    assert {"curves.png", "confusion_test.png", "results.json"} <= artifacts
    assert mlflow.artifacts.load_dict(f"{tracked.info.artifact_uri}/results.json")["steps"] == 4 * EPOCHS

    # W&B offline: a folder per session, all of the same run id; together each step once.
    sessions = sorted((wandb_dir / "wandb").glob("offline-run-*"), key=lambda d: d.stat().st_mtime)
    assert len(sessions) == 8 and all(ids["wandb"]["id"] in d.name for d in sessions)
    # W&B keeps a session's records once its run is finished: the killed sessions' may be lost
    # (they were: wandb 0.31 left their logs empty), so the last session sends what no finished
    # session kept. Any step two sessions have carries the same values (W&B keeps the first).
    last = wandb_history(sessions[-1:])
    assert [step for step, _ in last] == [4, 8, 12, 16]
    np.testing.assert_allclose([row["eval/loss"] for _, row in last], [v for _, v in expected["eval"]], rtol=1e-6)
    for step, row in wandb_history(sessions[:-1]):
        assert row.get("eval/loss", dict(last)[step]["eval/loss"]) == dict(last)[step]["eval/loss"]
    files = {p.name for p in (sessions[-1] / "files").iterdir()}
    assert {"curves.png", "confusion_test.png", "results.json"} <= files
    summary = {}
    for record in wandb_records(next(sessions[-1].glob("run-*.wandb"))):
        if record.WhichOneof("record_type") == "summary":
            summary.update({u.key or "/".join(u.nested_key): json.loads(u.value_json) for u in record.summary.update})
    assert summary["results/test/accuracy"] == pytest.approx(results["test"]["accuracy"])

    # Rerun again: nothing is missing, no tracker is opened.
    again = cli(*args)
    assert again.returncode == 0 and len(list((wandb_dir / "wandb").glob("offline-run-*"))) == 8


# A run without loggers, trained once for the module (conftest's `trained`): each test gets a copy.
UNTRACKED = (*TINY, "epochs=1", "logger=[]")


def test_tensorboard_can_be_left_out_and_the_confusion_matrix_is_drawn(tmp_path, trained):
    run = tmp_path / "run"
    trained(run, *UNTRACKED)
    assert not (run / "tensorboard").exists() and not (run / "tracking.json").exists()
    assert (run / "confusion_test.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["split"], r["epoch"]) for r in records] == [("train", 1), ("eval", 1)]  # always written


def test_a_tracker_that_fails_mid_run_is_dropped_and_the_run_finishes(tmp_path, cli, monkeypatch, caplog):
    from resnet_train.report import tracking_mlflow

    log, calls = tracking_mlflow.MlflowTracker.log, [0]

    def fails_second_time(self, step, values):
        calls[0] += 1
        if calls[0] == 3:  # epoch 2's second record
            raise OSError(28, "No space left on device")
        return log(self, step, values)

    monkeypatch.setattr(tracking_mlflow.MlflowTracker, "log", fails_second_time)
    run = tmp_path / "run"
    done = cli(*TINY, "epochs=3", "logger=[mlflow]", f"mlflow.tracking_uri={(tmp_path / 'ml').as_uri()}",
               f"hydra.run.dir={run}")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "logger=mlflow failed ([Errno 28] No space left on device)" in (run / "train.log").read_text()
    assert json.loads((run / "tracking.json").read_text())["mlflow"]["sent"] == ["eval@4", "train@4"]
    assert json.loads((run / "results.json").read_text())["steps"] == 12


@pytest.mark.parametrize(
    "args, message",
    [
        (["logger=[mlflow]", "mlflow.tracking_uri=bogus://me:tok3n@x"], "logger=mlflow could not start its run: "),
        (["logger=[wandb]", "wandb.mode=offline", "wandb.project=a/b"], "logger=wandb could not start its run: "),
    ],
)
def test_a_tracker_that_cannot_start_is_one_line_exit_2(cli, tmp_path, monkeypatch, args, message):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    done = cli(*TINY, "epochs=1", *args, f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 2, done.stderr[-2000:]
    (line,) = [x for x in done.stderr.splitlines() if x.strip()]
    assert message in line and "tok3n" not in line, line  # a URI's password is never shown
    if args[0] == "logger=[wandb]":  # (the settings' own bad values are in test_bad_input's table)
        assert "wandb login" in line and "wandb.mode=offline" in line


@pytest.mark.parametrize("name", ["mlflow", "wandb"])
def test_a_tracker_not_installed_is_named_with_its_extra_before_any_work(cli, tmp_path, monkeypatch, name):
    monkeypatch.setitem(sys.modules, name, None)  # what `import name` meets when it is not installed
    run = tmp_path / "run"
    done = cli(*TINY, f"logger=[{name}]", f"hydra.run.dir={run}")
    assert done.returncode == 2
    (line,) = [x for x in done.stderr.splitlines() if x.strip()]
    assert line.startswith(f"resnet-train: error: logger={name} needs the {name} package (") and line.endswith(
        f"pip install 'resnet-train[{name}]'"
    ), line
    assert not (run / "checkpoints").exists()


def test_each_sweep_member_is_its_own_tracked_run_and_a_rerun_member_continues_it(cli, tmp_path, monkeypatch):
    """Two members in one process (Hydra's basic launcher), then the sweep rerun longer (what a
    requeued member does): still two tracked runs in each tracker, each with both epochs."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    sweep, store, wandb_dir = tmp_path / "sweep", (tmp_path / "mlruns").as_uri(), tmp_path / "wb"
    small = (*TINY, "data.limit_train=64", "data.limit_test=32", "logger=[mlflow,wandb]", "wandb.mode=offline")
    common = ("-m", *small, f"mlflow.tracking_uri={store}", f"wandb.dir={wandb_dir}", f"hydra.sweep.dir={sweep}")
    first = cli(*common, "epochs=1", "seed=1,2")
    assert first.returncode == 0, first.stderr[-3000:]
    ids = [json.loads((sweep / m / "tracking.json").read_text()) for m in ("0", "1")]
    again = cli(*common, "epochs=2", "seed=1,2")
    assert again.returncode == 0, again.stderr[-3000:]
    assert [json.loads((sweep / m / "tracking.json").read_text())["mlflow"]["id"] for m in ("0", "1")] == [
        i["mlflow"]["id"] for i in ids
    ]

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # this test's client: the run undid its own setting
    client = MlflowClient(tracking_uri=store)
    (experiment,) = [e for e in client.search_experiments() if e.name == "resnet-train"]
    tracked = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_id for r in tracked) == sorted(i["mlflow"]["id"] for i in ids)
    for member, run in (("0", ids[0]), ("1", ids[1])):
        history = sorted(m.step for m in client.get_metric_history(run["mlflow"]["id"], "eval/accuracy"))
        assert history == [2, 4]  # 2 steps an epoch
        assert client.get_run(run["mlflow"]["id"]).data.params["seed"] == str(int(member) + 1)
        sessions = sorted((wandb_dir / "wandb").glob(f"offline-run-*-{run['wandb']['id']}"))
        assert len(sessions) == 2 and [s for s, _ in wandb_history(sessions)] == [2, 4]


def test_a_copied_run_directory_starts_its_own_tracked_run_and_a_moved_one_keeps_its(tmp_path, cli, monkeypatch):
    """cp -r A B, then B continued: B's own tracked runs (with every record of its metrics.jsonl);
    mv A C, then C continued: A's tracked runs, now naming C."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    store, wandb_dir = (tmp_path / "mlruns").as_uri(), tmp_path / "wb"
    common = (*TINY, "logger=[mlflow,wandb]", "wandb.mode=offline", f"mlflow.tracking_uri={store}")
    common = (*common, f"wandb.dir={wandb_dir}")
    a, b, c = tmp_path / "A", tmp_path / "B", tmp_path / "C"
    assert cli(*common, "epochs=1", f"hydra.run.dir={a}").returncode == 0
    original = json.loads((a / "tracking.json").read_text())
    shutil.copytree(a, b)
    assert cli(*common, "epochs=2", f"hydra.run.dir={b}").returncode == 0
    a.rename(c)
    assert cli(*common, "epochs=2", f"hydra.run.dir={c}").returncode == 0

    copied, moved = (json.loads((d / "tracking.json").read_text()) for d in (b, c))
    for name in ("mlflow", "wandb"):
        assert moved[name]["id"] == original[name]["id"] != copied[name]["id"]
    assert moved["directory"] == {"token": original["directory"]["token"], "path": str(c.resolve())}
    assert copied["directory"]["token"] != original["directory"]["token"]
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # this test's client: the run undid its own setting
    client = MlflowClient(tracking_uri=store)
    for ids, directory in ((moved, c), (copied, b)):
        tracked = client.get_run(ids["mlflow"]["id"])
        assert tracked.data.tags["run_dir"] == str(directory.resolve())
        assert sorted(m.step for m in client.get_metric_history(ids["mlflow"]["id"], "eval/accuracy")) == [4, 8]
    (session,) = (wandb_dir / "wandb").glob(f"offline-run-*-{copied['wandb']['id']}")  # W&B: all of B's, too
    assert [step for step, _ in wandb_history([session])] == [4, 8]


# Sweep members in processes of their own (Hydra's joblib launcher, a SLURM array), opening their
# tracked runs at once in a new store: all of them create the experiment.
RACE = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from types import SimpleNamespace
    from resnet_train.report.tracking_mlflow import MlflowTracker
    import mlflow.tracking

    store, folder, member = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    (folder / f"ready{member}").touch()
    while not (folder / "go").exists():
        time.sleep(0.001)
    settings = SimpleNamespace(tracking_uri=store, experiment="resnet-train")
    print(MlflowTracker(settings, folder / member, None, {}, {"member": member}).run_id)
""")


def test_parallel_members_creating_the_experiment_all_start_in_one_experiment(tmp_path, tracking_env, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # for this process's client (the members set it)
    store, members = (tmp_path / "mlruns").as_uri(), 4
    started = [
        launches.popen([sys.executable, "-c", RACE, store, str(tmp_path), str(i)], cwd=ROOT, env=tracking_env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(members)
    ]  # fmt: skip
    deadline = time.time() + 240
    while len(list(tmp_path.glob("ready*"))) < members and time.time() < deadline:
        time.sleep(0.01)
    (tmp_path / "go").touch()
    done = [p.communicate(timeout=240) for p in started]
    assert [p.returncode for p in started] == [0] * members, [err[-1500:] for _, err in done]
    client = MlflowClient(tracking_uri=store)
    (experiment,) = [e for e in client.search_experiments() if e.name == "resnet-train"]  # (and MLflow's Default)
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_id for r in runs) == sorted(out.strip() for out, _ in done)


def test_secrets_stay_out_of_the_trackers_params_and_the_log(tmp_path, cli, monkeypatch):
    """A password in the tracking URI and a value from an environment variable (`${oc.env:...}`)
    reach neither MLflow's params, W&B's config, tracking.json nor train.log."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RT_WANDB_DIR", str(tmp_path / "wb-s3cr3t"))
    store, run = f"file://me:tok3n@{tmp_path / 'mlruns'}", tmp_path / "run"
    done = cli(*TINY, "epochs=1", "logger=[mlflow,wandb]", "wandb.mode=offline", f"mlflow.tracking_uri={store}",
               "wandb.dir=${oc.env:RT_WANDB_DIR}", f"hydra.run.dir={run}")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # this test's client: the run undid its own setting
    ids = json.loads((run / "tracking.json").read_text())
    params = MlflowClient(tracking_uri=store).get_run(ids["mlflow"]["id"]).data.params
    assert params["mlflow.tracking_uri"] == f"file://me:***@{tmp_path / 'mlruns'}"
    assert params["wandb.dir"] == "${oc.env:RT_WANDB_DIR}"
    (session,) = (tmp_path / "wb-s3cr3t" / "wandb").glob("offline-run-*")
    config = [  # W&B's config: in the run record, and in config records for later changes
        item.value_json
        for record in wandb_records(next(session.glob("run-*.wandb")))
        if record.WhichOneof("record_type") in ("run", "config")
        for item in (record.run.config if record.WhichOneof("record_type") == "run" else record.config).update
    ]
    assert config and any("${oc.env:RT_WANDB_DIR}" in value for value in config)
    for where in (json.dumps(params), "".join(config), (run / "train.log").read_text(), json.dumps(ids)):
        assert "tok3n" not in where and "s3cr3t" not in where
    assert "s3cr3t" not in (run / ".hydra" / "config.yaml").read_text()  # the run's record: unresolved


@pytest.mark.parametrize("store", ["default", "sqlite"])
def test_mlflow_defaults_to_a_local_mlruns_store_and_takes_a_sqlite_uri(tmp_path, trained, cli, monkeypatch, store):
    """README: mlflow.tracking_uri=null is ./mlruns where the command runs; any URI works, a sqlite
    database (MLflow's SQLAlchemy store) included. The command: a finished run without trackers,
    rerun with logger=[mlflow], which opens the tracker as a training run does (open_trackers) and
    sends it every record, the results, the files and FINISHED (tracking.complete)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # this test's client reads the file store too
    uri = (tmp_path / "mlruns").as_uri() if store == "default" else f"sqlite:///{tmp_path / 'mlflow.db'}"
    chosen = [] if store == "default" else [f"mlflow.tracking_uri={uri}"]
    trained(tmp_path / "run", *UNTRACKED)
    done = cli(*UNTRACKED[:-1], "logger=[mlflow]", *chosen, f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(tracking_uri=uri)
    (found,) = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert found.info.status == "FINISHED" and "results/test/accuracy" in found.data.metrics
    assert [m.step for m in client.get_metric_history(found.info.run_id, "eval/loss")] == [4]
    assert json.loads((tmp_path / "run" / "tracking.json").read_text())["mlflow"]["tracking_uri"] == uri
