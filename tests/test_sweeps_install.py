"""The `sweeps` extra beside today's packages (issue 33): Optuna >= 4 with SQLAlchemy 2 in the same
environment, no leftover of hydra-optuna-sweeper (which pinned optuna<3 and SQLAlchemy<2), and
`pip check` clean over everything the test extra installs (sweeps, mlflow, ray, ...)."""

import subprocess
import sys
from importlib import metadata

import pytest


def _major(package: str) -> int:
    return int(metadata.version(package).split(".")[0])


def test_optuna_4_or_later_installs_beside_sqlalchemy_2():
    assert _major("optuna") >= 4
    assert _major("sqlalchemy") >= 2  # the old plugin's optuna 2.10 required SQLAlchemy < 2
    with pytest.raises(metadata.PackageNotFoundError):
        metadata.version("hydra-optuna-sweeper")


def test_pip_check_is_clean():
    done = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
