"""The one schema of the training config: a dataclass per config group option, registered in
Hydra's ConfigStore under schema/<group>/<option>. Each YAML file in configs/ names its schema
first in its defaults list and is a preset of it, so Hydra refuses a key the schema lacks (a typo,
or a key the code would ignore) and a value of the wrong type before anything runs; ranges and
choices are checked in config.validate. The code reads cfg.x with no defaults of its own.

A `hint` in a field's metadata is appended to the one-line error for a wrong value of that key.
No TensorFlow here: the CLI composes configs before TensorFlow starts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from omegaconf import II, MISSING


def _hint(text: str, default=MISSING, factory=None):
    if factory is not None:
        return field(default_factory=factory, metadata={"hint": text})
    return field(default=default, metadata={"hint": text})


# --- model -----------------------------------------------------------------------------------
@dataclass
class ModelConfig:
    variant: str = "auto"
    depth: int = II("depth")
    block: str = "auto"
    shortcut: str = "auto"
    init_mode: str = "fan_out"
    bn_momentum: float = 0.9
    bn_epsilon: float = 1.0e-5
    sync_bn: bool = False
    zero_init_residual: bool = False
    padding: str = "symmetric"


# --- optimizer -------------------------------------------------------------------------------
@dataclass
class OptimizerConfig:
    name: str = MISSING
    lr: float = MISSING
    lr_batch_reference: Optional[int] = II("oc.select:data.lr_batch_reference,null")
    weight_decay: float = 0.0
    weight_decay_mode: str = "coupled"
    decay_bn: bool = False
    clip_norm: Optional[float] = None


@dataclass
class SGDConfig(OptimizerConfig):
    name: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = False


@dataclass
class AdamConfig(OptimizerConfig):
    name: str = "adam"
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1.0e-7


@dataclass
class AdamWConfig(AdamConfig):
    name: str = "adamw"
    weight_decay_mode: str = "decoupled"


@dataclass
class LambConfig(AdamConfig):
    name: str = "lamb"
    weight_decay_mode: str = "decoupled"
    epsilon: float = 1.0e-6


@dataclass
class LARSConfig(OptimizerConfig):
    name: str = "lars"
    weight_decay_mode: str = "trust_ratio"
    momentum: float = 0.9
    eta: float = 0.001


# --- schedule --------------------------------------------------------------------------------
@dataclass
class ScheduleConfig:
    name: str = MISSING
    warmup_epochs: float = 0.0
    warmup_steps: int = 0
    warmup_mode: str = "linear"
    warmup_factor: float = 0.1


@dataclass
class StepScheduleConfig(ScheduleConfig):
    name: str = "step"
    milestones: List[float] = field(default_factory=lambda: [0.5, 0.75])
    milestones_unit: str = "fraction"
    factor: float = 0.1


@dataclass
class CosineScheduleConfig(ScheduleConfig):
    name: str = "cosine"
    floor: float = 0.0


@dataclass
class ExponentialScheduleConfig(ScheduleConfig):
    name: str = "exponential"
    decay_rate: float = 0.97
    decay_epochs: float = 2.4
    staircase: bool = False


@dataclass
class OneCycleScheduleConfig(ScheduleConfig):
    name: str = "onecycle"
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1.0e4
    anneal: str = "cos"


@dataclass
class ConstantScheduleConfig(ScheduleConfig):
    name: str = "constant"


# --- augmentation ----------------------------------------------------------------------------
@dataclass
class RandAugmentConfig:
    num_ops: int = 2
    magnitude: float = 9.0


@dataclass
class AugmentConfig:
    crop: str = "auto"
    padding: int = 4
    horizontal_flip: bool = True
    autoaugment: Optional[str] = None
    randaugment: Optional[RandAugmentConfig] = None
    cutout: int = 0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    label_smoothing: float = 0.0


# --- runtime ---------------------------------------------------------------------------------
@dataclass
class RuntimeConfig:
    strategy: str = "auto"
    precision: str = "auto"
    onednn: Any = "auto"          # auto | true | false
    xla: Any = "auto"             # auto | true | false
    devices: Optional[List[str]] = None
    cpu_replicas: int = 1
    deterministic: bool = False
    steps_per_call: Any = "auto"  # auto | N
    threads: Any = "auto"         # auto | default | [inter_op, intra_op]
    max_nonfinite_steps: int = 20


# --- data ------------------------------------------------------------------------------------
@dataclass
class DataConfig:
    """What every source has: the subset and split of its examples."""
    source: str = MISSING
    lr_batch_reference: Optional[int] = None
    classes: Optional[List[int]] = None
    limit_train: Optional[int] = None
    limit_test: Optional[int] = None
    val_split: Any = _hint("a fraction of train (0.1) or a count of images (5000)", None)
    # An integer; "legacy" only for runs made before split_seed existed (run_dir.RUN_OWNED).
    split_seed: Any = 0
    shuffle_buffer: Optional[int] = None  # null: the whole training set in memory, 10,000 streamed images


@dataclass
class EmbeddedDataConfig(DataConfig):
    source: str = "embedded"
    image_size: int = 32
    test_fraction: float = 0.2


@dataclass
class TfdsDataConfig(DataConfig):
    source: str = "tfds"
    name: Optional[str] = None  # the tensorflow-datasets name (cifar10, imagenet2012, ...); required
    data_dir: Optional[str] = None
    manual_dir: Optional[str] = None
    download: bool = _hint("false never touches the network, true lets tensorflow-datasets download a dataset "
                           "that is not prepared", True)
    cache: bool = True
    image_size: int = 224  # streamed (cache=false) images are decoded and cropped to this
    train_split: str = "train"
    test_split: str = "test"
    mean: Optional[List[float]] = None
    std: Optional[List[float]] = None


@dataclass
class FolderDataConfig(DataConfig):
    source: str = "folder"
    path: Optional[str] = None
    image_size: int = 32
    val_fraction: float = 0.2


@dataclass
class SyntheticDataConfig(DataConfig):
    source: str = "synthetic"
    image_shape: List[int] = field(default_factory=lambda: [32, 32, 3])
    num_classes: int = 10
    train_size: int = 1024
    test_size: int = 256


# --- the run ---------------------------------------------------------------------------------
@dataclass
class CheckpointConfig:
    keep: int = 3
    every_steps: Optional[int] = None


@dataclass
class EmaConfig:
    decay: Optional[float] = _hint("e.g. 0.999", None)


@dataclass
class FinetuneConfig:
    freeze: str = "none"
    head_lr_mult: float = 1.0


@dataclass
class TrainConfig:
    # The groups: each option brings its own schema (above) through its YAML's defaults list.
    model: Any = MISSING
    optimizer: Any = MISSING
    schedule: Any = MISSING
    augment: Any = MISSING
    runtime: Any = MISSING
    data: Any = MISSING
    depth: int = 20
    epochs: int = 30
    steps: Optional[int] = None
    batch_size: int = 128
    seed: int = 0
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    init_from: Optional[str] = None
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)


@dataclass
class PlotScheduleConfig(TrainConfig):
    """resnet-plot-schedule: a train config and where its lr curve goes."""
    out: str = "lr_schedule.png"
    train_size: Optional[int] = _hint("the training examples, e.g. 50000", None)


@dataclass
class ShowAugmentConfig(TrainConfig):
    """resnet-show-augment: a train config and the gallery it draws."""
    out: str = "augment_gallery.png"
    images: int = 8
    versions: int = 5


# --- the tools (resnet-eval, -predict, -explain, -export, -plot) -----------------------------
@dataclass
class RunToolConfig:
    run: Optional[str] = _hint("a run directory made by resnet-train", None)
    checkpoint: str = "auto"  # auto | best | last | PATH


@dataclass
class EvalDataConfig:
    """resnet-eval's data: the split, and settings that replace the run's own data config."""
    split: str = "test"
    source: Optional[str] = None
    name: Optional[str] = None
    path: Optional[str] = None
    data_dir: Optional[str] = None
    manual_dir: Optional[str] = None
    image_size: Optional[int] = None
    val_split: Any = None


@dataclass
class EvalConfig(RunToolConfig):
    tta: str = "none"
    batch_size: int = 256
    data: EvalDataConfig = field(default_factory=EvalDataConfig)


@dataclass
class PredictConfig(RunToolConfig):
    images: List[str] = field(default_factory=list)
    top_k: int = 5
    output: str = "text"


@dataclass
class ExplainConfig(RunToolConfig):
    images: List[str] = field(default_factory=list)
    class_index: Optional[int] = None
    out: Optional[str] = None


@dataclass
class ExportConfig(RunToolConfig):
    format: str = "saved_model"
    quantize: str = "none"
    out: Optional[str] = None
    split: str = "test"


@dataclass
class PlotConfig:
    runs: List[str] = field(default_factory=list)
    names: Optional[List[str]] = None
    out: str = "runs_comparison.png"


TOOLS = {"train": TrainConfig, "plot_schedule": PlotScheduleConfig, "show_augment": ShowAugmentConfig,
         "eval": EvalConfig, "predict": PredictConfig, "explain": ExplainConfig, "export": ExportConfig,
         "plot": PlotConfig}


GROUPS = {
    "model": {"resnet": ModelConfig},
    "optimizer": {"sgd": SGDConfig, "adam": AdamConfig, "adamw": AdamWConfig, "lamb": LambConfig, "lars": LARSConfig},
    "schedule": {"step": StepScheduleConfig, "cosine": CosineScheduleConfig, "exponential": ExponentialScheduleConfig,
                 "onecycle": OneCycleScheduleConfig, "constant": ConstantScheduleConfig},
    "augment": {"augment": AugmentConfig},
    "runtime": {"runtime": RuntimeConfig},
    "data": {"embedded": EmbeddedDataConfig, "tfds": TfdsDataConfig, "folder": FolderDataConfig,
             "synthetic": SyntheticDataConfig},
}


def _plain(values) -> dict:
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_container(values, resolve=True) if isinstance(values, DictConfig) else dict(values)


def _known_only(values: dict, node) -> dict:
    """`values` without the keys `node` (a typed config) lacks, at every level."""
    from omegaconf import OmegaConf

    def keep(values, shape):
        return {key: keep(value, shape[key]) if isinstance(value, dict) and isinstance(shape[key], dict) else value
                for key, value in values.items() if key in shape}

    return keep(values, OmegaConf.to_container(node, resolve=False))  # unresolved: ${depth} needs the root


# The key that names a group's option (its schema) inside the group's settings.
CHOSEN_BY = {"optimizer": "name", "schedule": "name", "data": "source"}


def option_schema(group: str, values: dict):
    """The dataclass of `group` that the settings `values` belong to."""
    from resnet_train.errors import ConfigError

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
    from omegaconf import DictConfig, OmegaConf

    from resnet_train.errors import ConfigError

    plain = _plain(values or {})
    settings = option_schema(group, plain)
    if isinstance(values, DictConfig) and OmegaConf.get_type(values) is settings and not defaults:
        return values  # typed already (a composed config)
    from omegaconf.errors import ValidationError

    node = OmegaConf.merge(OmegaConf.structured(settings), defaults or {})
    if drop_unknown:
        plain = _known_only(plain, node)
    unknown = sorted(set(plain) - set(node))
    if unknown:
        named = f" {CHOSEN_BY[group]}={plain[CHOSEN_BY[group]]}" if group in CHOSEN_BY else ""
        raise ConfigError(f"{group}{named} has no setting {', '.join(f'{group}.{k}' for k in unknown)}: remove it, "
                          f"or choose the {group} it belongs to ({group}=...)")
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
ADDED_LATER = {"model": {"padding": "same"}, "data": {"split_seed": "legacy"}}


def saved_run_config(saved):
    """A run directory's saved config (plain YAML) typed by the schema: keys the run predates get
    ADDED_LATER's values, else the schema's defaults; keys that no longer exist are dropped. The only
    place where the code supplies defaults for config keys."""
    from omegaconf import OmegaConf

    plain = _plain(saved)
    typed = OmegaConf.structured(TrainConfig)
    for group in GROUPS:
        later = ADDED_LATER[group] if group in ADDED_LATER else None
        typed[group] = group_config(group, plain[group] if group in plain else {}, True, later)
    return OmegaConf.merge(typed, _known_only(plain, typed))


def register() -> None:
    """Puts the schemas into Hydra's ConfigStore (idempotent): schema/<group>/<option>, schema/train."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name, node in TOOLS.items():
        store.store(group="schema", name=name, node=node)
    for group, options in GROUPS.items():
        for name, node in options.items():
            store.store(group=f"schema/{group}", name=name, node=node)


KINDS = {"Integer": "an integer", "Float": "a number", "bool": "true or false", "String": "a string"}


def wrong_type(error, group: str | None = None) -> str:
    """'<key> must be <kind> (got <value>)' for OmegaConf's ValidationError of a value the schema's
    type refused, with the key's hint where the schema has one. `group`: the key's group when the
    error came from a group's settings alone (its full_key lacks the group)."""
    import re

    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    key = f"{group}.{error.full_key}" if group else error.full_key
    kind = next((k for word, k in KINDS.items() if re.search(rf"\b{word}\b", text)), None)
    if kind is None:
        return f"cannot set {key}: {text}"
    extra = hint(error.object_type, error.key)
    return f"{key} must be {kind} (got {error.value!r})" + (f": {extra}" if extra else "")


def hint(object_type, key) -> str:
    """The schema's hint for a key of a config node of `object_type` ('' if none)."""
    import dataclasses

    if not dataclasses.is_dataclass(object_type):
        return ""
    for f in dataclasses.fields(object_type):
        if f.name == key:
            return f.metadata["hint"] if "hint" in f.metadata else ""
    return ""
