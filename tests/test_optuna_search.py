"""Our Optuna sweeper (hydra_plugins/resnet_train_optuna) on today's Optuna: its storages, a study
the former plugin wrote, pruning by epochs, and what the sweep report says about the study.
(tests/test_sweeps.py holds the searches' continuation: trial i in member i, n_trials, resumes.)"""

import json
import sqlite3
import sys

import pytest
from helpers import TINY, file_digests
from omegaconf import OmegaConf

SMALL = (*TINY, "data.limit_train=64", "data.limit_test=32")
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
