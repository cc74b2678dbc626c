"""What pyproject.toml promises: the Python it states is the one its dependencies need (keras 3.15
needs 3.11), and ruff and the README say the same."""

import re
import tomllib
from importlib.metadata import PackageNotFoundError, metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _lowest_python(specifier: str | None) -> Version:
    """The lowest Python 3 minor release a Requires-Python specifier admits (3.0 without one)."""
    allowed = SpecifierSet(specifier or "")
    return next(Version(f"3.{minor}") for minor in range(0, 30) if Version(f"3.{minor}") in allowed)


def _required_pythons(requirements) -> dict[str, Version]:
    """{installed requirement: the lowest Python its own metadata admits}."""
    found = {}
    for line in requirements:
        name = Requirement(line).name
        try:
            found[name] = _lowest_python(metadata(name).get("Requires-Python"))  # some state none
        except PackageNotFoundError:  # an extra's package this environment lacks
            continue
    return found


def test_requires_python_is_what_the_dependencies_need():
    ours = _lowest_python(PROJECT["project"]["requires-python"])
    needed = _required_pythons(PROJECT["project"]["dependencies"])
    assert "keras" in needed and needed["keras"] <= ours
    assert ours == max(needed.values()), f"requires-python admits {ours}; the dependencies need {needed}"
    extras = PROJECT["project"]["optional-dependencies"].values()
    too_new = {n: v for n, v in _required_pythons(line for lines in extras for line in lines).items() if v > ours}
    assert not too_new, f"extras that need a newer Python than requires-python: {too_new}"


def test_ruff_and_the_readme_state_the_same_python():
    ours = _lowest_python(PROJECT["project"]["requires-python"])
    assert PROJECT["tool"]["ruff"]["target-version"] == f"py{ours.major}{ours.minor}"
    stated = set(re.findall(r"Python (3\.\d+)\+", (ROOT / "README.md").read_text()))
    assert stated == {str(ours)}, stated


def test_the_readme_says_that_hydras_experimental_rerun_unpickles():
    """Every command is a Hydra app, whose --experimental-rerun FILE runs pickle.load on FILE: the
    README's security paragraph must not promise "nothing is pickled" without saying so."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.utils import get_args_parser

    from resnet_train.config import store

    assert any("--experimental-rerun" in action.option_strings for action in get_args_parser()._actions)
    security = (ROOT / "README.md").read_text().split("**Security.**")[1].split("\n\n")[0]
    assert "--experimental-rerun" in security and "unpickles" in security and "nothing is pickled" not in security
    store.register()
    for search in ([], ["hparams_search=optuna"]):  # our runs write no pickle for it to read
        with initialize_config_dir(config_dir=str(ROOT / "resnet_train" / "configs"), version_base=None):
            callbacks = compose("train", search, return_hydra_config=True).hydra.callbacks
        assert callbacks and not any("Pickle" in str(callback) for callback in callbacks.values()), callbacks
