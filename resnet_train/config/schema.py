"""The one schema of the training config: a dataclass per config group option, registered in
Hydra's ConfigStore under schema/<group>/<option> (store.register; the commands' own configs are in
commands.py). Each YAML file in configs/ names its schema
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

from resnet_train.config.data_schema import (
    EmbeddedDataConfig,
    FolderDataConfig,
    SyntheticDataConfig,
    TfdsDataConfig,
    TfrecordDataConfig,
)
from resnet_train.config.hints import with_hint
from resnet_train.config.model_schema import LossConfig, ModelConfig
from resnet_train.config.prune_schema import PruneConfig


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
    # Micro-batches of batch_size per optimizer step (gradient accumulation): the effective batch
    # is batch_size x accumulate_steps; batch norm sees the micro-batches.
    accumulate_steps: int = 1


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
    onednn: Any = "auto"  # auto | true | false
    xla: Any = "auto"  # auto | true | false
    devices: Any = None  # null | pool | [/gpu:0, ...] (device_pool.check)
    cpu_replicas: int = 1
    # devices=pool: the lock files' directory (null: one per user and host) and how long a run waits.
    device_pool_dir: Optional[str] = None
    device_pool_timeout_s: Optional[float] = None
    deterministic: bool = False
    steps_per_call: Any = "auto"  # auto | N
    threads: Any = "auto"  # auto | default | [inter_op, intra_op]
    max_nonfinite_steps: int = 20
    # The exit code of a stop a rerun continues (SIGTERM/SIGINT/SIGUSR2: 75, a lost peer: 4), for
    # schedulers that retry only their own codes; null keeps 75 and 4.
    retry_exit_code: Optional[int] = with_hint("null or an exit code from 4 to 255, e.g. 138", None)


# --- the run ---------------------------------------------------------------------------------
@dataclass
class CheckpointConfig:
    keep: int = 3
    every_steps: Optional[int] = None
    # chooses best/ (selection.py)
    best_metric: str = with_hint("accuracy | balanced_accuracy | macro_f1 | map (data.task=multilabel)", "accuracy")


@dataclass
class EarlyStopConfig:
    # Epochs without an improvement of checkpoint.best_metric (on the evaluation split) by more
    # than min_delta before the run stops; null: never.
    patience: Optional[int] = with_hint("null or a number of epochs, e.g. 10", None)
    min_delta: float = 0.0


@dataclass
class LogConfig:
    # Inside an epoch: a TensorBoard point (batch/loss, batch/lr, batch/images_per_sec) and, off a
    # terminal, a log line with the ETA, every `every_steps` steps or `every_seconds` seconds,
    # whichever comes first (null: that trigger off).
    every_steps: Optional[int] = 100
    every_seconds: Optional[float] = 60.0


@dataclass
class MlflowConfig:
    # null: a local file store, mlruns/ in the directory the command is started from (where
    # `mlflow ui --backend-store-uri ./mlruns` finds it); else any MLflow tracking URI.
    tracking_uri: Optional[str] = None
    experiment: str = "resnet-train"


@dataclass
class WandbConfig:
    project: str = "resnet-train"
    entity: Optional[str] = None
    mode: str = with_hint("online or offline", "online")  # offline: `wandb sync` uploads later
    dir: Optional[str] = None  # where W&B writes its files; null: its own default (./wandb)


@dataclass
class EmaConfig:
    decay: Optional[float] = with_hint("e.g. 0.999", None)


@dataclass
class FinetuneConfig:
    freeze: str = "none"
    head_lr_mult: float = 1.0
    # The input normalisation with init_from: the source model's statistics, or this dataset's.
    normalization: str = with_hint("source or data", "source")


@dataclass
class DistillConfig:
    # Knowledge distillation (training/distill.py): a run directory (or a checkpoint in one) or
    # keras_hub:NAME|DIR; null: off. The loss: (1 - alpha) CE + alpha T^2 KL(teacher/T || student/T).
    teacher: Optional[str] = None
    temperature: float = with_hint("a number > 0, e.g. 4", 4.0)
    alpha: float = with_hint("the soft targets' weight, in [0, 1]", 0.5)


@dataclass
class TrainConfig:
    # The groups: each option brings its own schema (above) through its YAML's defaults list.
    model: Any = MISSING
    optimizer: Any = MISSING
    schedule: Any = MISSING
    augment: Any = MISSING
    loss: Any = MISSING
    runtime: Any = MISSING
    data: Any = MISSING
    depth: int = 20
    epochs: int = 30
    steps: Optional[int] = None
    batch_size: int = 128
    seed: int = 0
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    log: LogConfig = field(default_factory=LogConfig)
    # Where each epoch's metrics go besides metrics.jsonl: tensorboard, mlflow, wandb (any of them).
    logger: List[str] = field(default_factory=lambda: ["tensorboard"])
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    init_from: Optional[str] = None
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)


GROUPS = {
    "model": {"resnet": ModelConfig},
    "optimizer": {"sgd": SGDConfig, "adam": AdamConfig, "adamw": AdamWConfig, "lamb": LambConfig, "lars": LARSConfig},
    "schedule": {
        "step": StepScheduleConfig,
        "cosine": CosineScheduleConfig,
        "exponential": ExponentialScheduleConfig,
        "onecycle": OneCycleScheduleConfig,
        "constant": ConstantScheduleConfig,
    },
    "augment": {"augment": AugmentConfig},
    "loss": {"loss": LossConfig},
    "runtime": {"runtime": RuntimeConfig},
    "data": {
        "embedded": EmbeddedDataConfig,
        "tfds": TfdsDataConfig,
        "folder": FolderDataConfig,
        "tfrecord": TfrecordDataConfig,
        "synthetic": SyntheticDataConfig,
    },
}
