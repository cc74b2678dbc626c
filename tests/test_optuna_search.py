"""Our Optuna sweeper (hydra_plugins/resnet_train_optuna) on today's Optuna: its storages, a study
the former plugin wrote, pruning by epochs, and what the sweep report says about the study.
(tests/test_sweeps.py holds the searches' continuation: trial i in member i, n_trials, resumes.)"""

import json
import re
import sqlite3

import pytest
from helpers import ROOT, TINY, file_digests
from omegaconf import OmegaConf

SMALL = (*TINY, "data.limit_train=64", "data.limit_test=32")
CONFIGS = ROOT / "resnet_train" / "configs"
OLD_REVISION = "v2.6.0.a"  # the schema hydra-optuna-sweeper's Optuna 2.10 left in its optuna.db


def old_study(path):
    """An sqlite file as Optuna 2.10 left it: its tables, alembic's record of their revision."""
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
        db.execute("INSERT INTO alembic_version VALUES (?)", (OLD_REVISION,))
        db.execute("CREATE TABLE studies (study_id INTEGER PRIMARY KEY, study_name VARCHAR(512))")
        db.execute("INSERT INTO studies VALUES (1, 'resnet_train')")
        db.execute("CREATE TABLE version_info (version_info_id INTEGER PRIMARY KEY, schema_version INTEGER, "
                   "library_version VARCHAR(256))")  # fmt: skip
        db.execute("INSERT INTO version_info VALUES (1, 12, '2.10.1')")
    db.close()
    return path


@pytest.mark.parametrize("given", ["default storage", "its sqlite URL"])
def test_a_study_of_the_former_plugin_is_refused_in_one_line_and_left_as_it_was(cli, tmp_path, given):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    db = old_study(sweep / "optuna.db")
    before = file_digests(sweep)
    storage = [f"hydra.sweeper.storage=sqlite:///{db}"] if given == "its sqlite URL" else []
    done = cli("hparams_search=optuna", *SMALL, "hydra.sweeper.n_trials=1", f"hydra.sweep.dir={sweep}", *storage)
    assert done.returncode == 2, done.stderr[-2000:]
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("resnet-train: error:")]
    assert f"optuna storage upgrade --storage sqlite:///{db}" in line and "another hydra.sweep.dir" in line
    assert file_digests(sweep) == before  # nothing deleted, nothing created (no journal, no member)
    assert "Traceback" not in done.stderr


def test_sqlite_urls_still_work_and_a_current_schema_opens(tmp_path):
    import optuna

    from resnet_train.tools.optuna_storage import open_storage

    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=open_storage(url), direction="maximize")
    study.tell(study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}), 0.5)
    again = optuna.load_study(study_name="s", storage=open_storage(url))  # its schema is this Optuna's
    assert [t.value for t in again.get_trials()] == [0.5]
    assert open_storage(None) is None and open_storage("null") is None


def seeded_study(sweep, values):
    """The search's study, made before the search with complete trials of `values` (a value per
    epoch, 3 epochs): what a pruner compares a new trial's epochs with."""
    import optuna

    from hydra_plugins.resnet_train_optuna.space import search_space
    from resnet_train.tools.optuna_storage import open_storage

    params = OmegaConf.load(CONFIGS / "hparams_search" / "optuna.yaml").hydra.sweeper.params
    distributions, _ = search_space(params, [])
    study = optuna.create_study(
        study_name="resnet_train", storage=open_storage(sweep / "optuna.journal"), direction="maximize"
    )
    for i, value in enumerate(values):
        chosen = {name: d.to_external_repr(d.to_internal_repr(d.low if hasattr(d, "low") else d.choices[i % 3]))
                  for name, d in distributions.items()}  # fmt: skip
        study.add_trial(optuna.trial.create_trial(
            params=chosen, distributions=distributions, value=value, intermediate_values={1: value, 2: value, 3: value}
        ))  # fmt: skip
    return study


PRUNED_SEARCH = ("hparams_search=optuna", *SMALL, "epochs=3", "hydra.sweeper.n_trials=2",
                 "hydra.sweeper.pruner=median", "hydra.sweeper.pruner_kwargs={n_startup_trials: 1}")  # fmt: skip


def test_a_pruned_trial_stops_after_its_epoch_is_recorded_pruned_and_a_rerun_leaves_it(cli, tmp_path):
    """Trial 0 (made beforehand) reached 1.0 every epoch: the median pruner stops trial 1, whose
    first epoch is below it, after that epoch, as an early stop would; the study counts it
    towards n_trials, so the same command again trains nothing."""
    sweep = tmp_path / "sweep"
    seeded_study(sweep, [1.0])
    done = cli(*PRUNED_SEARCH, f"hydra.sweep.dir={sweep}")
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((sweep / "1" / "results.json").read_text())
    assert results["pruned_at_epoch"] == results["stopped_early_at_epoch"] == 1 and results["epochs"] == 3
    records = [json.loads(line) for line in (sweep / "1" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["split"] == "eval"] == [1]
    assert results["checkpoint"].endswith(f"ckpt-{results['steps']}")  # the epoch's checkpoint, kept
    (trial_0, trial_1) = study_of(sweep).get_trials()
    assert (trial_0.state.name, trial_1.state.name) == ("COMPLETE", "PRUNED")
    evals = [r for r in records if r["split"] == "eval"]
    assert trial_1.intermediate_values == {1: evals[0]["accuracy"]}  # what the member reported, once
    rows = {r["member"]: r for r in csv_rows(sweep)}
    assert rows["1"]["status"] == "pruned" and rows["1"]["epochs"] == "1"
    assert "| 1 | pruned |" in (sweep / "summary.md").read_text()
    before = file_digests(sweep / "1")

    again = cli(*PRUNED_SEARCH, f"hydra.sweep.dir={sweep}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Test accuracy" not in again.stdout and not (sweep / "2").exists()
    assert file_digests(sweep / "1") == before
    assert [t.state.name for t in study_of(sweep).get_trials()] == ["COMPLETE", "PRUNED"]


def study_of(sweep):
    import optuna

    from resnet_train.tools.optuna_storage import open_storage

    return optuna.load_study(study_name="resnet_train", storage=open_storage(sweep / "optuna.journal"))


def csv_rows(sweep):
    import csv

    with open(sweep / "summary.csv") as f:
        return list(csv.DictReader(f))


def test_the_report_shows_the_studys_pruned_trials_and_parameter_importances(tmp_path):
    """resnet-sweep-report's summary.md: trials by state, each pruned trial with the epochs it ran,
    and fANOVA importances once two trials are complete (before that, a line saying so)."""
    import optuna

    from resnet_train.tools.sweep import write_summary

    sweep = tmp_path / "sweep"
    study = seeded_study(sweep, [0.5])
    (sweep / "0" / ".hydra").mkdir(parents=True)
    (sweep / "0" / ".hydra" / "overrides.yaml").write_text("- seed=0\n")
    (sweep / "optuna_study.yaml").write_text("storage: optuna.journal\nstudy_name: resnet_train\n")
    assert "Parameter importances: need 2 complete trials (1 so far)" in write_summary_text(sweep, write_summary)
    seeded = study.get_trials()[0]
    for value in (0.7, 0.9):
        study.add_trial(optuna.trial.create_trial(
            params={**seeded.params, "optimizer.lr": value / 4}, distributions=seeded.distributions, value=value
        ))  # fmt: skip
    study.add_trial(optuna.trial.create_trial(
        params=seeded.params, distributions=seeded.distributions, state=optuna.trial.TrialState.PRUNED,
        intermediate_values={1: 0.1, 2: 0.2},
    ))  # fmt: skip
    text = write_summary_text(sweep, write_summary)
    assert "Trials: 3 complete, 1 pruned" in text
    assert "| 3 | 2 | 0.2000 |" in text  # trial 3, pruned after its second epoch
    importances = dict(re.findall(r"^\| (\S+) \| ([0-9.]+) \|$", text, re.M))
    assert set(importances) == {"optimizer.lr", "optimizer.weight_decay", "batch_size", "augment.mixup_alpha"}
    assert max(importances, key=lambda k: float(importances[k])) == "optimizer.lr"  # the only one that varied

    (sweep / "optuna.journal").unlink()  # a study that cannot be read: the table still comes out
    assert "Study: not readable (FileNotFoundError" in write_summary_text(sweep, write_summary)


def write_summary_text(sweep, write_summary) -> str:
    write_summary(sweep)
    return (sweep / "summary.md").read_text()
