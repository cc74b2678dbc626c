"""The model's and the loss's settings (models/, training/losses.py), kept apart from schema.py's
other groups. No TensorFlow here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from omegaconf import II


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
    # Bottlenecks: the stride on the first 1x1 conv (ResNet v1, keras.applications' ResNet50)
    # rather than on the 3x3 (v1.5: torchvision, Model Garden, keras-hub; ours by default).
    stride_in_1x1: bool = False
    # Stochastic depth: the last block's per-example drop rate, rising linearly from 0 (timm's rule).
    drop_path: float = 0.0
    style: str = "standard"  # standard | resnet_d (He et al. 2019: deep stem, average-pool shortcut)


@dataclass
class LossConfig:
    # ce: softmax cross-entropy. bce: binary cross-entropy per class on the (mixed, smoothed)
    # one-hot targets (Wightman et al. 2021); target_threshold (timm's bce_target_thresh): targets
    # above it become 1, the rest 0 (bce only; null: targets as they are).
    name: str = "ce"
    target_threshold: Optional[float] = None
