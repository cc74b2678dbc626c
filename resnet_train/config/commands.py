"""The commands' configs beside training's: resnet-plot-schedule and resnet-show-augment extend the
train config (schema.TrainConfig); the tools (eval, predict, explain, export, plot) have their own."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from resnet_train.config.hints import with_hint
from resnet_train.config.schema import TrainConfig


@dataclass
class PlotScheduleConfig(TrainConfig):
    """resnet-plot-schedule: a train config and where its lr curve goes."""

    out: str = "lr_schedule.png"
    train_size: Optional[int] = with_hint("the training examples, e.g. 50000", None)


@dataclass
class ShowAugmentConfig(TrainConfig):
    """resnet-show-augment: a train config and the gallery it draws."""

    out: str = "augment_gallery.png"
    images: int = 8
    versions: int = 5


# --- the tools (resnet-eval, -predict, -explain, -export, -plot) -----------------------------
@dataclass
class RunToolConfig:
    run: Optional[str] = with_hint("a run directory made by resnet-train", None)
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
    threshold: Optional[float] = None  # data.task=multilabel: a label is predicted at >= this (null: the run's)
    data: EvalDataConfig = field(default_factory=EvalDataConfig)


@dataclass
class PredictConfig(RunToolConfig):
    images: List[str] = field(default_factory=list)
    top_k: int = 5
    output: str = "text"  # text | json | embeddings
    out: Optional[str] = None  # output=embeddings: an .npz or .parquet file (default <run>/embeddings.npz)
    threshold: Optional[float] = None  # data.task=multilabel: every label at >= this (null: the run's)


@dataclass
class ExplainConfig(RunToolConfig):
    images: List[str] = field(default_factory=list)
    class_index: Optional[int] = None
    out: Optional[str] = None


@dataclass
class ExportConfig(RunToolConfig):
    format: str = "saved_model"
    quantize: str = "none"
    opset: Optional[int] = None
    out: Optional[str] = None
    split: str = "test"
    calibration_images: int = 200  # int8 exports' training images (export.CALIBRATION_IMAGES)
    latency_runs: int = 20  # format=all: timed calls per batch size (compare.LATENCY_RUNS)
    push_to: Optional[str] = None  # hf://USER/REPO: the export folder uploaded to the Hugging Face Hub


@dataclass
class PlotConfig:
    runs: List[str] = field(default_factory=list)
    names: Optional[List[str]] = None
    out: str = "runs_comparison.png"


TOOLS = {
    "train": TrainConfig,
    "plot_schedule": PlotScheduleConfig,
    "show_augment": ShowAugmentConfig,
    "eval": EvalConfig,
    "predict": PredictConfig,
    "explain": ExplainConfig,
    "export": ExportConfig,
    "plot": PlotConfig,
}
