"""Hydra's composition errors as one line that says what was wrong and how to fix it.

Hydra prints these as several lines (a stack excerpt, the search path) and exits with 1. Our
console scripts run the Hydra app with HYDRA_FULL_ERROR set so the exception reaches us, and
`explain` turns the ones a user causes (an unknown key or option, a malformed override, a broken
YAML file, an unusable run directory) into one line; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from pathlib import Path

from resnet_train.errors import EXIT_USER_ERROR, first_line
from resnet_train.runtime import environ_restored


def known_keys(config_name: str) -> list[str]:
    """Every dotted key of the default config, plus the config groups' names."""
    from omegaconf import OmegaConf

    from resnet_train.config import flatten, load_config

    try:
        cfg = OmegaConf.to_container(load_config((), config_name), resolve=False)
    except Exception:  # noqa: BLE001 -- suggestions are a nicety; never fail while explaining
        return []
    configs = Path(__file__).parents[1] / "configs"
    groups = [
        p.name for p in configs.iterdir() if p.is_dir() and p.name != "__pycache__" and "model" in cfg
    ]  # the training config's groups, not the tools'
    leaves = flatten(cfg)
    sections = {key.rsplit(".", i)[0] for key in leaves for i in range(1, key.count(".") + 1)}
    return sorted(leaves.keys() | sections) + groups


def did_you_mean(key: str, config_name: str) -> str:
    candidates = known_keys(config_name)
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if not close and "." in key:  # a typo in the last part only: optimizer.momentun
        head, last = key.rsplit(".", 1)
        children = [c.rsplit(".", 1)[1] for c in candidates if c.startswith(head + ".")]
        close = [f"{head}.{m}" for m in difflib.get_close_matches(last, children, n=1, cutoff=0.6)]
    return f" (did you mean {close[0]}?)" if close else ""


def explain(error: BaseException, config_name: str) -> str | None:
    """One line for a user-caused Hydra/OmegaConf/YAML/OS error, or None for anything else."""
    import yaml
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

    text = str(error)
    if isinstance(error, MissingConfigException):
        match = re.search(r"Could not find '([^']+)'", text)
        missing = match.group(1) if match else error.missing_cfg_file
        if missing and "/" in missing:
            group, option = missing.rsplit("/", 1)
            options = list(error.options or [])
            hint = difflib.get_close_matches(option, options, n=1)
            return (
                f"unknown {group} '{option}'"
                + (f" (did you mean {hint[0]}?)" if hint else "")
                + f": choose one of {', '.join(options)}"
                if options
                else f"no config '{missing}'"
            )
        return f"no config '{missing}': check the name (configs/ lists them)"
    if isinstance(error, OverrideParseException):
        return f"{first_line(error, None)}: overrides are key=value, e.g. optimizer.lr=0.05 (quote values with spaces)"
    if isinstance(error, ConfigCompositionException):
        if isinstance(error.__cause__, ValidationError):  # the schema refused the value's type
            from resnet_train.config import store

            return store.wrong_type(error.__cause__)
        outside = re.search(r"In '([^']+)': ConfigKeyError.*?full_key: (\S+)", text, re.S)
        if outside:  # a preset sets a key the chosen option's schema lacks
            where, key = outside.groups()
            return (
                f"{where} sets {key}, which the chosen {key.split('.')[0]} does not have: choose a matching "
                f"{key.split('.')[0]}=... or drop the setting"
            )
        match = re.search(r"Could not override '([^']+)'", text)
        if match:
            key = match.group(1)
            cause = error.__cause__
            # The schema has no such key (ConfigKeyError / ConfigAttributeError), or a known key got a bad value.
            unknown = cause is None or isinstance(cause, (ConfigKeyError, ConfigAttributeError))
            if not unknown:  # a known key, a bad value
                return f"cannot set {key}: {first_line(cause, None)}"
            return (
                f"unknown setting '{key}'{did_you_mean(key, config_name)}; "
                f"`{os.path.basename(sys.argv[0]) or 'resnet-train'} --cfg job` lists the settings"
            )
        return " ".join(line.strip() for line in text.splitlines() if line.strip())
    if isinstance(error, yaml.YAMLError):
        mark = getattr(error, "problem_mark", None)
        where = f"{mark.name}, line {mark.line + 1}" if mark is not None else "a config file"
        problem = getattr(error, "problem", None) or first_line(error, None)
        return f"YAML syntax error in {where}: {problem}; fix the file"
    if isinstance(error, OmegaConfBaseException):
        return _omegaconf_line(error)
    if isinstance(error, OSError) and error.filename:  # e.g. Hydra creating hydra.run.dir
        return f"{error.strerror}: {error.filename} (check the path, e.g. hydra.run.dir=...)"
    return None


def _omegaconf_line(error: BaseException) -> str:
    """An OmegaConf error's first line; a UserError it was raised from (our resolver's, e.g.
    ${worker_suffix:} reading TF_CONFIG, at any depth of its causes) speaks for itself."""
    from resnet_train.errors import UserError

    cause, seen = error, set()
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, UserError):
            return str(cause)
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return " ".join(first_line(error, None).split()) + " (check the override or config file)"


@environ_restored()  # called as a function (a test, a notebook), the caller's os.environ is kept
def run_app(app, config_name: str) -> None:
    """Runs a @hydra.main function; composition errors become one line and exit code 2 (the full
    traceback stays available with HYDRA_FULL_ERROR=1, as in any Hydra app)."""
    user_wants_traceback = os.environ.get("HYDRA_FULL_ERROR") == "1"  # Hydra's own test
    multirun = any(a in ("-m", "--multirun") for a in sys.argv[1:])
    if multirun:  # a sweep: Hydra reports each member's failure itself
        return app()
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        return app()
    except Exception as error:  # re-raised unless it is the user's to fix
        message = None if user_wants_traceback else explain(error, config_name)
        if message is None:
            raise
        print(f"{os.path.basename(sys.argv[0]) or 'resnet-train'}: error: {message}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
