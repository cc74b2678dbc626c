"""The schema of magnitude pruning's settings (training/prune.py), kept apart from schema.py's
groups. No TensorFlow here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from resnet_train.config.hints import with_hint


@dataclass
class PruneConfig:
    # Zhu & Gupta 2017: the final fraction of each pruned kernel's weights at zero (0: off), reached
    # on their cubic schedule from start to end (in `unit`: a fraction of the run's steps, epochs or
    # steps), the masks rebuilt every `frequency` optimizer steps and at end; ranked by each layer's
    # magnitudes, or all pruned kernels' together (scope=global). exclude: layer names or their
    # prefixes before "_" (training/prune.excluded); by default the stem's convs (one, or ResNet-D's
    # three) and the head (models/names.py), which hold few weights and cost most accuracy pruned.
    sparsity: float = with_hint("in [0, 1), e.g. 0.8; 0: off", 0.0)
    start: float = 0.0
    end: float = 0.5
    unit: str = with_hint("fraction, epoch or step", "fraction")
    frequency: int = 100
    scope: str = with_hint("layer or global", "layer")
    exclude: List[str] = field(default_factory=lambda: ["stem", "logits"])
