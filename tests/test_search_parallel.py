"""Several trials of one Optuna search at once (issue 33 item 3): n_jobs trials launched together
run at the same time under the joblib launcher, and two invocations of one search on one study
(hydra_plugins/resnet_train_optuna/claims.py) share its trials without a gap or a clash."""

import datetime
import json
import subprocess

import launches
from helpers import CLI, ROOT, TINY

SMALL = (*TINY, "epochs=1", "data.limit_train=64", "data.limit_test=32")


def study_of(sweep):
    import optuna

    from resnet_train.tools.optuna_storage import open_storage

    return optuna.load_study(study_name="resnet_train", storage=open_storage(sweep / "optuna.journal"))


def start(*args):
    return launches.popen([str(CLI), *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_window(member) -> tuple[float, float]:
    """When the member's run began (its train.log's first line, to the second: the run's first
    second, so + 1 is after its start) and ended (its last metrics.jsonl record's time)."""
    records = [json.loads(line) for line in (member / "metrics.jsonl").read_text().splitlines()]
    end = max(r["time"] for r in records)
    clock = (member / "train.log").read_text().splitlines()[0][1:9]  # [HH:MM:SS]
    day = datetime.datetime.fromtimestamp(end)
    began = datetime.datetime.combine(day.date(), datetime.time.fromisoformat(clock))
    if began > day:  # the run began before midnight
        began -= datetime.timedelta(days=1)
    return began.timestamp() + 1, end


def test_n_jobs_trials_run_at_the_same_time_under_the_joblib_launcher(tmp_path):
    """hydra.sweeper.n_jobs=2 hands the joblib launcher two trials at once: each trains in a
    process of its own while the other trains (each run's window, from its own log and metrics,
    overlaps the other's), and the study records both, one per member."""
    sweep = tmp_path / "sweep"
    search = start("hparams_search=optuna", "hydra/launcher=joblib", "hydra.sweeper.n_jobs=2",
                   "hydra.sweeper.n_trials=2", *SMALL, f"hydra.sweep.dir={sweep}")  # fmt: skip
    out, err = search.communicate(timeout=300)
    assert search.returncode == 0, err[-3000:]
    assert "Joblib.Parallel" in out + err
    (start0, end0), (start1, end1) = windows = [run_window(sweep / m) for m in ("0", "1")]
    assert start0 < end1 and start1 < end0, windows  # after its start, each ran before the other ended
    assert [(t.number, t.state.name) for t in study_of(sweep).get_trials()] == [(0, "COMPLETE"), (1, "COMPLETE")]


def test_two_invocations_of_one_search_share_its_trials_without_a_gap_or_a_clash(tmp_path):
    """The same command twice at once on one study (as on two machines sharing its storage): each
    asks the study for trials, n_trials=4 caps the two together, trials 0..3 each ran exactly once
    in their own member, and both invocations ran some (each trial names the one that ran it)."""
    from hydra_plugins.resnet_train_optuna.claims import OWNER

    sweep = tmp_path / "sweep"
    command = ("hparams_search=optuna", "hydra.sweeper.n_trials=4", *SMALL, f"hydra.sweep.dir={sweep}")
    searches = [start(*command), start(*command)]
    outputs = [search.communicate(timeout=300) for search in searches]
    for search, (out, err) in zip(searches, outputs):
        assert search.returncode == 0, err[-3000:]
    trials = study_of(sweep).get_trials()
    assert [(t.number, t.state.name) for t in trials] == [(n, "COMPLETE") for n in range(4)]
    assert sum(out.count("Test accuracy") for out, _ in outputs) == 4  # no trial ran twice
    assert {t.system_attrs[OWNER]["pid"] for t in trials} == {search.pid for search in searches}
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1", "2", "3"]
    for t in trials:
        member = sweep / str(t.number)
        records = [json.loads(line) for line in (member / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in records if r["split"] == "eval"] == [1], member  # one run, one epoch
        assert "already finished" not in (member / "train.log").read_text()
        assert t.value == json.loads((member / "results.json").read_text())["eval"]["accuracy"]


def test_a_running_trial_is_taken_over_only_when_its_search_is_gone(tmp_path):
    """claims.Claims.orphaned, as run_lock.py judges a lock's owner: a live search on this machine
    keeps its trial however old its heartbeat, a dead one's (or a reused PID's) is free; on another
    machine, a heartbeat older than STALE_AFTER_S frees it; a trial with no owner is free."""
    import time

    import optuna

    from hydra_plugins.resnet_train_optuna.claims import BEAT, OWNER, Claims
    from resnet_train.training import run_lock

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "j")))
    study = optuna.create_study(study_name="s", storage=storage)
    me, other = Claims(storage, tmp_path / "lock"), Claims(storage, tmp_path / "lock")
    dead = launches.popen(["true"])
    dead.wait()

    def judged(**owner_changes):
        trial = study.ask()
        other.claim(trial)
        owner = {**other.me, **owner_changes}
        storage.set_trial_system_attr(trial._trial_id, OWNER, owner)
        if "beat" in owner:
            storage.set_trial_system_attr(trial._trial_id, BEAT, owner["beat"])
        return me.orphaned(storage.get_trial(trial._trial_id))

    old = time.time() - run_lock.STALE_AFTER_S - 10
    assert not judged()  # another search in this very process: alive
    assert not judged(beat=old)  # alive here, however old its heartbeat
    assert judged(pid=dead.pid)  # gone
    assert judged(start_time=other.me["start_time"] + 1)  # its PID is another process now
    assert not judged(host="elsewhere", boot_id="b", beat=time.time())  # another machine, beating
    assert judged(host="elsewhere", boot_id="b", beat=old)  # its heartbeat stopped
    assert me.orphaned(storage.get_trial(study.ask()._trial_id))  # no owner: an earlier version's, or asked by hand
    own = study.ask()
    me.claim(own)
    assert not me.orphaned(storage.get_trial(own._trial_id))  # this search's own
