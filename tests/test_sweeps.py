"""Multirun sweeps, their summary, failures, Optuna search, the joblib launcher, recipes, EMA."""

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import launches
import pytest
from helpers import CLI, ROOT, TINY, compose, file_digests
from omegaconf import OmegaConf

from resnet_train.errors import EXIT_PREEMPTED
from resnet_train.training.loop import train_and_evaluate

SMALL = (*TINY, "epochs=1", "data.limit_train=64", "data.limit_test=32")
# The sweeps that two tests each start from (sweep_made_by).
TWO_MEMBERS = ("-m", *SMALL, "optimizer.lr=0.05,0.2")
TWO_TRIALS = ("hparams_search=optuna", *SMALL, "hydra.sweeper.n_trials=2")


def rows(sweep):
    with open(sweep / "summary.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def _sweeps_made():
    """{command: (its sweep dir, its result)}: each shared sweep is made once per module."""
    return {}


@pytest.fixture
def sweep_made_by(cli, tmp_path_factory, tmp_path, _sweeps_made):
    """sweep_made_by(*command) -> (sweep dir, result): this test's own copy of the sweep that the
    command made (in process, by whichever test asked first), so that tests sharing a start stay
    independent and order-free. A copy reruns as the original would: finished members are
    recognised by their checkpoint's name, not their path (run_dir.finished); Optuna's storage is
    ${hydra.sweep.dir}/optuna.journal, the copy's; Hydra's record of the original's paths
    (.hydra/hydra.yaml) is what a rerun that skips or refuses a member puts back anyway."""

    def made(*command):
        if command not in _sweeps_made:
            sweep = tmp_path_factory.mktemp("shared_sweep")
            _sweeps_made[command] = sweep, cli(*command, f"hydra.sweep.dir={sweep}")
        original, done = _sweeps_made[command]
        shutil.copytree(original, tmp_path / "sweep")
        return tmp_path / "sweep", done

    return made


def hparams_record(member) -> dict:
    """The settings in the member's TensorBoard HParams record (its session start)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2

    for path in (member / "tensorboard").glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "hparams":
                    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                    if data.HasField("session_start_info"):
                        return {k: getattr(v, v.WhichOneof("kind")) for k, v in data.session_start_info.hparams.items()}
    raise AssertionError(f"no HParams record in {member}/tensorboard")


def test_two_member_sweep_summary_and_rerun_skips_finished(cli, sweep_made_by):
    sweep, done = sweep_made_by(*TWO_MEMBERS)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (sweep / "0" / "results.json").exists() and (sweep / "1" / "results.json").exists()
    table = rows(sweep)
    assert [r["status"] for r in table] == ["finished", "finished"]
    assert sorted(r["overrides"].split()[-1] for r in table) == ["optimizer.lr=0.05", "optimizer.lr=0.2"]
    best = [float(r["final_test"]) for r in table]  # no validation split: the final test figure, and only it
    assert best == sorted(best, reverse=True)  # sorted by the target metric
    assert "| member | status | overrides |" in (sweep / "summary.md").read_text()
    for member in ("0", "1"):  # the HParams record holds the member's own settings
        lr = OmegaConf.load(sweep / member / ".hydra" / "overrides.yaml")[-1].split("=")[1]
        settings = hparams_record(sweep / member)
        assert settings["lr"] == settings["optimizer.lr"] == float(lr) and settings["depth"] == 8, settings
        assert settings["data"] == "digits" and settings["precision"] == "float32"

    again = cli(*TWO_MEMBERS, f"hydra.sweep.dir={sweep}")
    assert again.returncode == 0
    assert again.stdout.count("Test accuracy") == 2
    for member in ("0", "1"):
        assert "already finished" in (sweep / member / "train.log").read_text()


def test_a_failed_member_is_reported_and_the_others_finish(cli, tmp_path):
    sweep = tmp_path / "sweep"
    others = [o for o in SMALL if not o.startswith("depth=")]
    done = cli("-m", *others, "depth=9,8", f"hydra.sweep.dir={sweep}")
    assert done.returncode != 0
    assert "depth=9" in done.stderr  # Hydra names the failed member's overrides
    table = {r["overrides"].split()[-1]: r for r in rows(sweep)}
    assert table["depth=8"]["status"] == "finished" and (sweep / "1" / "results.json").exists()
    assert table["depth=9"]["status"] == "failed" and "6n+2" in table["depth=9"]["error"]
    # The suite's one run of the real `resnet-sweep-report` console script (its exit code).
    report = launches.run(
        [str(Path(sys.executable).with_name("resnet-sweep-report")), str(sweep)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert report.returncode == 1 and "failed members: 0" in report.stderr
    assert "| 1 | finished |" in report.stdout


def test_optuna_search_runs_two_trials_with_storage_in_the_sweep_dir(sweep_made_by):
    sweep, done = sweep_made_by(*TWO_TRIALS)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (sweep / "optuna.journal").exists() and (sweep / "optimization_results.yaml").exists()
    assert len(rows(sweep)) == 2 and all("optimizer.lr=" in r["overrides"] for r in rows(sweep))
    # Optuna optimised the validation accuracy (10% held out by the search's config), never the test set's.
    from omegaconf import OmegaConf

    members = [json.loads((sweep / m / "results.json").read_text()) for m in ("0", "1")]
    assert all(m["eval_split"] == "val" and m["eval"]["examples"] == 6 for m in members)  # 10% of 64
    best = OmegaConf.load(sweep / "optimization_results.yaml").best_value
    assert best == max(m["best_val_accuracy"] for m in members)


def test_a_search_optimises_the_figure_behind_best_not_the_last_epoch(cli, tmp_path, monkeypatch):
    """What a trial returns is best_val_<checkpoint.best_metric>, the figure that chose best/ (the
    run is stood in for by its results here: which epoch was best is the point, not the training)."""
    from resnet_train.training import loop

    figures = {"accuracy": 0.5, "macro_f1": 0.25, "loss": 1.0, "top5": 0.9, "examples": 6}
    results = {"eval_split": "val", "eval": figures, "test": figures, "top_k": 5, "epochs": 3, "wall_time_s": 1.0}
    results.update(best_val_accuracy=0.75, best_val_macro_f1=0.625)
    monkeypatch.setattr(loop, "train_and_evaluate", lambda *args, **kwargs: results)
    sweep = tmp_path / "search"
    done = cli(
        *TWO_TRIALS[:-1], "hydra.sweeper.n_trials=1", "checkpoint.best_metric=macro_f1", f"hydra.sweep.dir={sweep}"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert OmegaConf.load(sweep / "optimization_results.yaml").best_value == 0.625


def test_optuna_search_without_a_validation_split_is_refused(cli, tmp_path):
    done = cli(
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=1",
        *SMALL,
        "data.val_split=null",
        f"hydra.sweep.dir={tmp_path / 'search'}",
    )
    assert done.returncode == 2
    assert "hparams_search=optuna needs a validation split to optimise (data.val_split=0.1" in done.stderr
    assert not list((tmp_path / "search").glob("*/results.json"))


def test_a_finished_member_rerun_with_another_config_is_left_as_it_was(cli, sweep_made_by):
    """Hydra rewrites a member's .hydra/ before the member runs: a rerun that does not take the
    directory (member 1: refused, another lr; member 0: finished, skipped) puts its record back,
    and a refusal never marks a finished member failed."""
    sweep, done = sweep_made_by(*TWO_MEMBERS)
    assert done.returncode == 0, done.stderr[-3000:]
    before = {m: file_digests(sweep / m) for m in ("0", "1")}

    again = cli("-m", *SMALL, "optimizer.lr=0.05,0.1", f"hydra.sweep.dir={sweep}")
    assert again.returncode != 0  # member 1 was not run with lr 0.1: the sweep says so
    assert "holds a run with another config (optimizer.lr: 0.2 -> 0.1)" in again.stderr
    assert "left as it was" in again.stderr
    assert file_digests(sweep / "1") == before["1"]  # every file, .hydra/* and train.log included
    assert not (sweep / "1" / "failed.json").exists()
    skipped = file_digests(sweep / "0")  # its train.log says it was skipped; nothing else changed
    assert {k: v for k, v in skipped.items() if k != "train.log"} == {
        k: v for k, v in before["0"].items() if k != "train.log"
    }
    table = {r["member"]: r for r in rows(sweep)}
    assert table["1"]["status"] == "finished" and table["1"]["overrides"].split()[-1] == "optimizer.lr=0.2"
    assert table["0"]["status"] == "finished" and table["0"]["overrides"].split()[-1] == "optimizer.lr=0.05"
    assert "| 1 | finished |" in (sweep / "summary.md").read_text()


def test_optuna_rerun_with_more_trials_continues_the_study(cli, sweep_made_by):
    """n_trials is the study's total and members are numbered by trial: a rerun with n_trials=4
    after a 2-trial search runs trials 2 and 3 in members 2 and 3, and leaves 0 and 1 untouched;
    the same command once more runs nothing."""
    sweep, done = sweep_made_by(*TWO_TRIALS)
    search = ("hparams_search=optuna", *SMALL, f"hydra.sweep.dir={sweep}")
    assert done.returncode == 0, done.stderr[-3000:]
    before = {m: file_digests(sweep / m) for m in ("0", "1")}

    more = cli(*search, "hydra.sweeper.n_trials=4")
    assert more.returncode == 0, more.stderr[-3000:]
    assert more.stdout.count("Test accuracy") == 2  # only the 2 new trials ran
    assert sorted(p.name for p in sweep.iterdir() if (p / "results.json").exists()) == ["0", "1", "2", "3"]
    assert {m: file_digests(sweep / m) for m in ("0", "1")} == before  # results, metrics, checkpoints, .hydra/*
    study = _study(sweep)
    trials = study.get_trials()
    assert [(t.number, t.state.name) for t in trials] == [(n, "COMPLETE") for n in range(4)]
    assert len({t.params["optimizer.lr"] for t in trials}) == 4  # the seeded sampler drew new points
    accuracies = {}
    for t in trials:  # member i is trial i: its overrides are the trial's parameters
        member = sweep / str(t.number)
        assert f"optimizer.lr={t.params['optimizer.lr']}" in OmegaConf.load(member / ".hydra" / "overrides.yaml")
        accuracies[t.number] = json.loads((member / "results.json").read_text())["eval"]["accuracy"]
        assert t.value == accuracies[t.number]
    assert OmegaConf.load(sweep / "optimization_results.yaml").best_value == max(accuracies.values())
    assert len(rows(sweep)) == 4 and all(r["status"] == "finished" for r in rows(sweep))

    same = cli(*search, "hydra.sweeper.n_trials=4")
    assert same.returncode == 0, same.stderr[-3000:]
    assert "Test accuracy" not in same.stdout and len(study.get_trials()) == 4


def test_optuna_rerun_resumes_a_trial_left_running_and_replaces_a_failed_one(cli, sweep_made_by):
    """A search killed during a trial (preempted, OOM) leaves it RUNNING in the study: the rerun
    runs it in its own member, with its own parameters, before any new trial. A failed trial stays
    failed and does not count towards n_trials (the number of complete trials): a new one replaces it."""
    sweep, done = sweep_made_by(*TWO_TRIALS)  # trials 0 and 1 complete
    search = ("hparams_search=optuna", *SMALL, f"hydra.sweep.dir={sweep}")
    assert done.returncode == 0, done.stderr[-3000:]
    import optuna

    study = _study(sweep)
    first = study.get_trials()[0]
    left = study.ask(first.distributions)  # what the killed search had asked: trial 2, never told
    for key, value in first.user_attrs.items():  # the command's fixed settings, as the sweeper records them
        left.set_user_attr(key, value)
    study.tell(study.ask(first.distributions), state=optuna.trial.TrialState.FAIL)  # trial 3 failed

    again = cli(*search, "hydra.sweeper.n_trials=4")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("Test accuracy") == 2  # trial 2, resumed, and trial 4 in place of the failed 3
    trials = _study(sweep).get_trials()
    assert [(t.number, t.state.name) for t in trials] == [
        (0, "COMPLETE"),
        (1, "COMPLETE"),
        (2, "COMPLETE"),
        (3, "FAIL"),
        (4, "COMPLETE"),
    ]
    assert sorted(p.name for p in sweep.iterdir() if (p / "results.json").exists()) == ["0", "1", "2", "4"]
    overrides = list(OmegaConf.load(sweep / "2" / ".hydra" / "overrides.yaml"))
    assert f"optimizer.lr={left.params['optimizer.lr']}" in overrides and "depth=8" in overrides
    assert trials[2].value == json.loads((sweep / "2" / "results.json").read_text())["eval"]["accuracy"]


def _study(sweep):
    """The search's study, from its default storage (a journal file in the sweep directory)."""
    import optuna

    from resnet_train.tools.optuna_storage import open_storage

    return optuna.load_study(study_name="resnet_train", storage=open_storage(sweep / "optuna.journal"))


def event_file_pids(member):
    """The PIDs of the processes that wrote the member's TensorBoard files: TF names each file
    events.out.tfevents.<time>.<host>.<pid>.<n>.v2."""
    names = [p.name for p in (member / "tensorboard").rglob("events.out.tfevents.*")]
    assert names, member
    return {int(re.search(r"\.(\d+)\.\d+\.v2$", name).group(1)) for name in names}


def test_joblib_launcher_runs_members_in_parallel_processes(tmp_path):
    # A subprocess: the launching process's PID is part of what is checked.
    sweep = tmp_path / "sweep"
    launcher = launches.popen(
        [
            str(CLI),
            "-m",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            *SMALL,
            "seed=1,2",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = launcher.communicate(timeout=300)
    assert launcher.returncode == 0, err[-3000:]
    assert "Joblib" in out + err
    assert [r["status"] for r in rows(sweep)] == ["finished", "finished"]
    # Each member trained in a process of its own (one PID per member, in all of its files),
    # neither of them the launching process: two worker processes, as n_jobs=2 asks.
    pids = [event_file_pids(sweep / m) for m in ("0", "1")]
    assert all(len(p) == 1 for p in pids), pids
    assert pids[0] != pids[1] and launcher.pid not in pids[0] | pids[1], (launcher.pid, pids)
    # And at the same time: each member's run (Hydra writes its .hydra/ as the job starts, the run
    # its results.json last) overlaps the other's, which two processes taking turns would not.
    windows = [
        ((sweep / m / ".hydra" / "config.yaml").stat().st_mtime_ns, (sweep / m / "results.json").stat().st_mtime_ns)
        for m in ("0", "1")
    ]
    (start0, end0), (start1, end1) = windows
    assert start0 < end1 and start1 < end0, windows


def test_a_preempted_sweep_stops_and_its_rerun_resumes_only_the_unfinished_members(cli, tmp_path, monkeypatch):
    """Three members of 4 steps, a checkpoint every step; the sweep is preempted in member 1 after
    its step 1 (it stops at step 2, the step its stop request reaches). The rerun skips member 0
    (finished: nothing of it changes but its log), continues member 1 from step 2 and runs
    member 2, which the preempted sweep never reached, from the start."""
    from resnet_train.training.checkpoint import Checkpointer

    sweep = tmp_path / "sweep"
    command = ("-m", *TINY, "epochs=1", "checkpoint.every_steps=1", "seed=1,2,3", f"hydra.sweep.dir={sweep}")
    # A SIGTERM to this process right after member 1's first checkpoint save: a preemption at a
    # known step (one from outside would land wherever the machine's load puts it). In this process:
    # the sweep's bookkeeping is the point; a signal reaching the console script is test_faults.py's.
    save, signalled = Checkpointer.save, []

    def save_then_signal(self, step, epoch):
        path = save(self, step, epoch)
        if self.directory.parent.name == "1" and not signalled:
            signalled.append(step)
            # (Without the run's handler the signal would end this test process: a failed member instead.)
            assert callable(signal.getsignal(signal.SIGTERM)), "no SIGTERM handler while training"
            os.kill(os.getpid(), signal.SIGTERM)  # handled by the run's StopRequests, as in a process of its own
        return path

    monkeypatch.setattr(Checkpointer, "save", save_then_signal)
    stopped = cli(*command)
    monkeypatch.setattr(Checkpointer, "save", save)
    assert signalled == [1] and stopped.returncode == EXIT_PREEMPTED, stopped.stderr[-3000:]
    assert stopped.stderr.strip().splitlines()[-1] == (
        f"resnet-train: stopped by SIGTERM at step 2 of 4; checkpoint {sweep / '1' / 'checkpoints' / 'ckpt-2'} "
        f"written: run the same command again to continue from this step"
    )
    assert (sweep / "0" / "results.json").exists() and not (sweep / "1" / "results.json").exists()
    assert not (sweep / "2").exists()  # the sweep stopped: member 2 never started
    finished = file_digests(sweep / "0")

    again = cli(*command)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("Test accuracy") == 3  # member 0's results are reported again, not recomputed
    assert {k: v for k, v in file_digests(sweep / "0").items() if k != "train.log"} == {
        k: v for k, v in finished.items() if k != "train.log"
    }
    assert "already finished" in (sweep / "0" / "train.log").read_text()
    log_1, log_2 = ((sweep / m / "train.log").read_text() for m in ("1", "2"))
    assert "Continuing at step 2 of 4" in log_1
    assert "Continuing at step" not in log_2 and "Resumed from" not in log_2
    for member in ("1", "2"):
        assert json.loads((sweep / member / "results.json").read_text())["steps"] == 4
    assert [r["status"] for r in rows(sweep)] == ["finished"] * 3


@pytest.mark.parametrize(
    "name,depth,epochs,lr,schedule",
    [
        ("cifar10_paper", 56, 182, 0.1, "step"),
        ("cifar10_preact", 164, 182, 0.1, "step"),  # sized in steps (64k): epochs not used
        ("cifar10_fast", 20, 30, 0.1, "cosine"),
        ("imagenet_90ep", 50, 90, 0.1, "step"),
        ("imagenet_rsb_a3", 50, 100, 8e-3, "cosine"),
    ],
)
def test_recipes_compose_and_state_their_reference(name, depth, epochs, lr, schedule):
    cfg = compose(f"experiment={name}")
    assert (cfg.depth, cfg.epochs, cfg.optimizer.lr, cfg.schedule.name) == (depth, epochs, lr, schedule)
    header = (Path(__file__).parents[1] / "configs" / "experiment" / f"{name}.yaml").read_text().split("defaults:")[0]
    assert "resnet-train experiment=" in header and "%" in header and "Ours:" in header


def test_ema_is_evaluated_beside_the_weights_and_checkpointed(tmp_path):
    import tensorflow as tf

    results = train_and_evaluate(compose(*TINY, "epochs=2", "ema.decay=0.9"), tmp_path)
    assert results["test_ema"]["examples"] == results["test"]["examples"] == 64
    assert results["test_ema"]["loss"] != results["test"]["loss"]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["split"] == "eval_ema"] == [1, 2]
    shapes = tf.train.load_checkpoint(results["checkpoint"]).get_variable_to_shape_map()
    head_sized = [k for k, shape in shapes.items() if k.startswith("optimizer/_variables/") and shape == [64, 10]]
    assert len(head_sized) == 2  # the head's momentum and its moving average: EMA is checkpointed


def test_the_summary_is_always_whole_while_members_write_it_at_once(tmp_path):
    """Members of a parallel launcher (joblib) write summary.csv/.md as each ends: a reader (or the
    last writer) never sees a file cut short or two writes interleaved."""
    import io
    import threading
    import time

    from resnet_train.tools.sweep import write_summary

    for i in range(3):
        (tmp_path / str(i) / ".hydra").mkdir(parents=True)
        (tmp_path / str(i) / ".hydra" / "overrides.yaml").write_text(f"- seed={i}\n")
    stop, written = threading.Event(), []

    def member_ending():
        while not stop.is_set():
            write_summary(tmp_path)
            written.append(1)  # (list.append is atomic)

    writers = [threading.Thread(target=member_ending) for _ in range(2)]
    for t in writers:
        t.start()
    seen = []
    try:
        deadline = time.monotonic() + 120  # a hang guard: the loop ends after enough reads and writes
        while len(seen) < 200 or len(written) < 50:  # reads across many writes (one lasts ~100 reads here)
            assert time.monotonic() < deadline, f"{len(seen)} reads, {len(written)} writes"
            try:
                csv_text, md_text = (tmp_path / "summary.csv").read_text(), (tmp_path / "summary.md").read_text()
            except FileNotFoundError:  # not written yet
                continue
            seen.append((len(list(csv.DictReader(io.StringIO(csv_text)))), md_text.count("| incomplete |")))
    finally:
        stop.set()
        for t in writers:
            t.join()
    assert set(seen) == {(3, 3)}


FAILED_MEMBER = """
import json, resource, signal, sys
from pathlib import Path
from types import SimpleNamespace
from hydra.conf import HydraConf
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf
from resnet_train.tools.sweep import SweepCallback

member = Path(sys.argv[1])
hydra = OmegaConf.structured(HydraConf)
hydra.runtime.output_dir, hydra.mode = str(member), RunMode.RUN
HydraConfig.instance().set_config(OmegaConf.create({"hydra": hydra}))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, like a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (16, resource.RLIM_INFINITY))
job = SimpleNamespace(status=SimpleNamespace(name="FAILED"), _return_value=ValueError("x" * 100))
try:
    SweepCallback().on_job_end(None, job)
except OSError as e:
    print("write failed:", e.strerror)
"""


def test_an_unreadable_failed_json_is_a_failed_member_and_it_is_written_whole(tmp_path, caplog):
    """failed.json is written atomically (a member's failure recorded on a full disk leaves none,
    never an empty one), and one left empty or cut short by an earlier version still marks its
    member failed, with a warning, instead of crashing resnet-sweep-report."""
    import logging

    from resnet_train.tools.sweep import write_summary

    member = tmp_path / "sweep" / "0"
    member.mkdir(parents=True)
    done = launches.run([sys.executable, "-c", FAILED_MEMBER, str(member)], capture_output=True, text=True)
    assert "write failed: File too large" in done.stdout, done.stderr[-2000:]
    assert not (member / "failed.json").exists() and not list(member.iterdir())  # no file, no temporary left

    for i, text in enumerate(("", '{"error": "ValueError: cut', '{"error": "ValueError: bad depth"}')):
        (tmp_path / "sweep" / str(i) / ".hydra").mkdir(parents=True, exist_ok=True)
        (tmp_path / "sweep" / str(i) / ".hydra" / "overrides.yaml").write_text(f"- seed={i}\n")
        (tmp_path / "sweep" / str(i) / "failed.json").write_text(text)
    with caplog.at_level(logging.WARNING):
        table = {r["member"]: r for r in write_summary(tmp_path / "sweep")}
    assert [table[m]["status"] for m in "012"] == ["failed"] * 3
    assert table["0"]["error"] == "(failed.json unreadable: JSONDecodeError)" and table["2"]["error"].endswith("depth")
    assert "0/failed.json is unreadable (JSONDecodeError" in caplog.text and "1/failed.json" in caplog.text
