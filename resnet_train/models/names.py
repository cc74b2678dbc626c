"""The layer names every model builder uses: fine-tuning matches layers by them, freezing picks
stages by them, Grad-CAM reads the last feature map before POOL, the trainer finds the head."""

from __future__ import annotations

import re

NORMALIZE = "normalize"  # the input's channel statistics (the dataset's, not trained)
STEM = "stem"  # prefix of the stem's layers: stem_conv, stem_bn, stem_relu, stem_pool
POOL = "pool"  # global average pooling; its input is the last feature map
HEAD = "logits"  # the classifier: new when fine-tuning to other classes
_STAGE = re.compile(r"stage(\d+)_")


def block(stage: int, index: int) -> str:
    """The name prefix of block `index` (from 1) of stage `stage` (from 1)."""
    return f"stage{stage}_block{index}"


def stage_of(layer_name: str) -> int | None:
    """The stage (from 1) a layer belongs to, or None outside the stages."""
    match = _STAGE.match(layer_name)
    return int(match.group(1)) if match else None
