"""Freezing part of a model for fine-tuning (finetune.freeze=...), by the layer-name contract."""

from __future__ import annotations

import logging
import re

from resnet_train.errors import ConfigError
from resnet_train.models import names

log = logging.getLogger(__name__)


def freeze(model, spec: str) -> list[str]:
    """`none`, `backbone` (all but the head) or `stages:N` (the stem and the first N stages).
    Frozen batch-norm layers run in inference mode (Keras does that for trainable=False).
    Returns the names of the frozen layers that have weights."""
    spec = str(spec or "none")
    if spec == "none":
        return []
    if spec == "backbone":
        chosen = [layer for layer in model.layers if layer.name != names.HEAD]
    else:
        match = re.fullmatch(r"stages:(\d+)", spec)
        if not match:
            raise ConfigError(f"finetune.freeze must be none, backbone or stages:N (got {spec!r})")
        n = int(match.group(1))
        chosen = [
            layer
            for layer in model.layers
            if layer.name.startswith(names.STEM) or (names.stage_of(layer.name) or n + 1) <= n
        ]
    for layer in chosen:
        layer.trainable = False
    frozen = [layer.name for layer in chosen if layer.weights]
    log.info("Frozen (%s): %d layers with weights", spec, len(frozen))
    return frozen
