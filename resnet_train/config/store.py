"""The schemas in Hydra's ConfigStore (register), and settings typed by them outside a composition:
a mapping built in code (group_config), an old run's saved config (saved_run_config, the one place
that supplies defaults), OmegaConf's type errors as one line (wrong_type). No TensorFlow here."""

from __future__ import annotations

import re

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ValidationError

from resnet_train.config.commands import TOOLS
from resnet_train.config.hints import hint
from resnet_train.config.schema import GROUPS, TrainConfig
from resnet_train.errors import ConfigError


def _plain(values) -> dict:
    """`values` as a plain dict (a DictConfig resolved)."""
    return OmegaConf.to_container(values, resolve=True) if isinstance(values, DictConfig) else dict(values)


def _known_only(values: dict, node) -> dict:
    """`values` without the keys `node` (a typed config) lacks, at every level."""

    def keep(values, shape):
        return {
            key: keep(value, shape[key]) if isinstance(value, dict) and isinstance(shape[key], dict) else value
            for key, value in values.items()
            if key in shape
        }

    return keep(values, OmegaConf.to_container(node, resolve=False))  # unresolved: ${depth} needs the root


# The key that names a group's option (its schema) inside the group's settings.
CHOSEN_BY = {"optimizer": "name", "schedule": "name", "data": "source"}


def option_schema(group: str, values: dict):
    """The dataclass of `group` that the settings `values` belong to."""
    options = GROUPS[group]
    if group not in CHOSEN_BY:
        return next(iter(options.values()))
    key = CHOSEN_BY[group]
    chosen = values[key] if key in values else None
    if chosen not in options:
        raise ConfigError(f"{group}.{key} must be one of {', '.join(options)} (got {chosen!r})")
    return options[chosen]


def group_config(group: str, values, drop_unknown: bool = False, defaults=None):
    """A group's settings `values` (a mapping; None: none given) typed by the schema of the option
    they name (data.source, optimizer.name, schedule.name), unset keys at `defaults`, else the
    schema's. drop_unknown: keys that option lacks are dropped instead of refused (a run's data
    evaluated on another source, an old run's keys that no longer exist)."""

    plain = _plain(values or {})
    settings = option_schema(group, plain)
    if isinstance(values, DictConfig) and OmegaConf.get_type(values) is settings and not defaults:
        return values  # typed already (a composed config)
    node = OmegaConf.merge(OmegaConf.structured(settings), defaults or {})
    if drop_unknown:
        plain = _known_only(plain, node)
    unknown = sorted(set(plain) - set(node))
    if unknown:
        named = f" {CHOSEN_BY[group]}={plain[CHOSEN_BY[group]]}" if group in CHOSEN_BY else ""
        raise ConfigError(
            f"{group}{named} has no setting {', '.join(f'{group}.{k}' for k in unknown)}: remove it, "
            f"or choose the {group} it belongs to ({group}=...)"
        )
    try:
        return OmegaConf.merge(node, plain)
    except ValidationError as e:  # a value of the wrong type, from a mapping built in code
        raise ConfigError(wrong_type(e, group)) from None


def augment_config(values):
    """`augment` settings typed, unset keys at the standard preset's values."""
    return group_config("augment", values)


def data_config(values, drop_unknown: bool = False):
    return group_config("data", values, drop_unknown)


# Keys added after runs were made, at the value that reproduces those runs (not today's default):
# the old-run loader (saved_run_config) fills them in, and a resumed run keeps its own value
# (run_dir.RUN_OWNED, which says why for each).
ADDED_LATER = {"model": {"padding": "same"}, "data": {"split_seed": "legacy", "split_method": "uniform"}}


def saved_run_config(saved):
    """A run directory's saved config (plain YAML) typed by the schema: keys the run predates get
    ADDED_LATER's values, else the schema's defaults; keys that no longer exist are dropped. The only
    place where the code supplies defaults for config keys."""
    plain = _plain(saved)
    typed = OmegaConf.structured(TrainConfig)
    for group in GROUPS:
        later = ADDED_LATER[group] if group in ADDED_LATER else None
        typed[group] = group_config(group, plain[group] if group in plain else {}, True, later)
    return OmegaConf.merge(typed, _known_only(plain, typed))


def register() -> None:
    """Puts the schemas into Hydra's ConfigStore (idempotent): schema/<group>/<option>, schema/train.
    Once per process: storing converts every schema again (~0.2 s, half of a compose's time)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    if "train.yaml" in store.repo.get("schema", {}):  # stored last (below): all are there
        return
    for group, options in GROUPS.items():
        for name, node in options.items():
            store.store(group=f"schema/{group}", name=name, node=node)
    for name, node in sorted(TOOLS.items(), key=lambda item: item[0] == "train"):  # train last
        store.store(group="schema", name=name, node=node)


KINDS = {"Integer": "an integer", "Float": "a number", "bool": "true or false", "String": "a string"}


def wrong_type(error, group: str | None = None) -> str:
    """'<key> must be <kind> (got <value>)' for OmegaConf's ValidationError of a value the schema's
    type refused, with the key's hint where the schema has one. `group`: the key's group when the
    error came from a group's settings alone (its full_key lacks the group)."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    key = f"{group}.{error.full_key}" if group else error.full_key
    kind = next((k for word, k in KINDS.items() if re.search(rf"\b{word}\b", text)), None)
    if kind is None:
        return f"cannot set {key}: {text}"
    extra = hint(error.object_type, error.key)
    return f"{key} must be {kind} (got {error.value!r})" + (f": {extra}" if extra else "")
