"""The config schema (schema.py): every preset is an instance of its option's dataclass, keys the
code would ignore are refused at composition, a wrong type is one line naming the key, and an old
run's saved config loads with the values that reproduce it. No TensorFlow is needed here."""

from pathlib import Path

import pytest
from helpers import compose
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from resnet_train.cli.hydra_errors import explain
from resnet_train.config import commands, schema, store
from resnet_train.errors import ConfigError

CONFIGS = Path(schema.__file__).parents[1] / "configs"
PRESETS = [
    (group.name, option.stem)
    for group in sorted(CONFIGS.iterdir())
    if group.is_dir() and group.name in schema.GROUPS
    for option in sorted(group.glob("*.yaml"))
]


@pytest.mark.parametrize("group, option", PRESETS, ids=[f"{g}={o}" for g, o in PRESETS])
def test_every_preset_is_typed_by_the_schema_of_its_option(group, option):
    cfg = compose(f"{group}={option}", *(["data.name=svhn_cropped"] if option == "tfds" else []))
    node = cfg[group]
    assert OmegaConf.get_type(node) is store.option_schema(group, OmegaConf.to_container(node))
    assert OmegaConf.get_type(cfg) is schema.TrainConfig
    # Every key the preset holds is a field of that dataclass (the schema refuses others).
    fields = set(store.option_schema(group, OmegaConf.to_container(node)).__dataclass_fields__)
    assert set(node.keys()) == fields


@pytest.mark.parametrize("tool", sorted(commands.TOOLS))
def test_every_command_composes_a_config_typed_by_its_schema(tool):
    from resnet_train.config import load_config

    assert OmegaConf.get_type(load_config((), tool)) is commands.TOOLS[tool]


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml")))
def test_every_recipe_composes(experiment):
    assert compose(f"experiment={experiment}").epochs >= 1


@pytest.mark.parametrize(
    "overrides, message",
    [
        # Keys that loaders used to ignore: the shape comes from the data or data.image_size.
        (["data=cifar10", "data.image_shape=[64,64,3]"], "unknown setting 'data.image_shape'"),
        (["data=folder", "data.image_shape=[64,64,3]"], "unknown setting 'data.image_shape'"),
        (["data=digits", "data.name=mnist"], "unknown setting 'data.name'"),
        (["data=folder", "data.name=pets"], "unknown setting 'data.name'"),
        # A preset that sets a key the chosen option does not have (SGD's momentum under Adam).
        (
            ["experiment=cifar10_fast", "optimizer=adam"],
            "experiment/cifar10_fast sets optimizer.momentum, which the chosen optimizer does not have",
        ),
        # Wrong types: one line naming the key, with the schema's hint where it has one.
        (["epochs=2.5"], "epochs must be an integer (got 2.5)"),
        (["model.sync_bn=sometimes"], "model.sync_bn must be true or false (got 'sometimes')"),
        (["optimizer.lr=fast"], "optimizer.lr must be a number (got 'fast')"),
        (
            ["data=cifar10", "data.download=maybe"],
            "data.download must be true or false (got 'maybe'): false never touches the network",
        ),
    ],
)
def test_the_schema_refuses_at_composition_with_one_line(overrides, message):
    with pytest.raises(ConfigCompositionException) as refused:
        compose(*overrides)
    assert explain(refused.value, "train").startswith(message)


def test_runtime_devices_under_multi_worker_is_refused_before_anything_runs(monkeypatch):
    from resnet_train import config

    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 0}}')
    with pytest.raises(ConfigError, match=r"^runtime.devices is not used under runtime=multi_worker"):
        config.validate(compose("runtime=multi_worker", "runtime.devices=[/gpu:0]"))


def test_settings_built_in_code_are_typed_and_checked_like_composed_ones():
    cfg = store.group_config("optimizer", {"name": "lamb", "lr": 0.01})
    assert (cfg.weight_decay_mode, cfg.epsilon, cfg.beta_1) == ("decoupled", 1e-6, 0.9)  # the lamb preset's
    with pytest.raises(ConfigError, match=r"^schedule name=cosine has no setting schedule.milestones"):
        store.group_config("schedule", {"name": "cosine", "milestones": [0.5]})
    with pytest.raises(ConfigError, match=r"^data.source must be one of embedded, tfds, folder, tfrecord, synthetic"):
        store.data_config({"source": "csv"})
    with pytest.raises(ConfigError, match=r"^data.limit_train must be an integer \(got 'all'\)"):
        store.data_config({"source": "synthetic", "limit_train": "all"})


def test_an_old_runs_saved_config_loads_with_the_values_that_reproduce_it():
    """A run saved before model.padding and data.split_seed existed, with a key since removed
    (data.image_shape) and no ema/finetune sections: the old-run loader fills in what reproduces
    that run (TF's "same" padding, the legacy split), not today's defaults, and drops the rest."""
    old = OmegaConf.to_container(compose("data=cifar10"), resolve=True)
    del old["model"]["padding"], old["data"]["split_seed"], old["ema"], old["finetune"]
    old["data"]["image_shape"] = [32, 32, 3]
    cfg = store.saved_run_config(OmegaConf.create(old))
    assert cfg.model.padding == "same" and cfg.data.split_seed == "legacy"
    assert cfg.ema.decay is None and cfg.finetune.freeze == "none"
    assert "image_shape" not in cfg.data and cfg.data.name == "cifar10" and cfg.model.depth == 20
    assert OmegaConf.get_type(cfg.optimizer) is schema.SGDConfig


def test_the_library_reads_no_config_key_with_a_default_of_its_own():
    """`.get(` on a config would restate a default beside the schema's: only the old-run loader
    (schema.py) and non-config mappings (JSON records, os.environ, device details) use it."""
    import re

    root = Path(schema.__file__).parents[1]
    config_get = re.compile(r"\b(cfg|ft|data_cfg|run_cfg)(\.[a-z_]+)*\.get\(")
    offenders = [
        f"{p.relative_to(root)}:{i}"
        for p in sorted(root.rglob("*.py"))
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if config_get.search(line)
    ]
    assert offenders == []
