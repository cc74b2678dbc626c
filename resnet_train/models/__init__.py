"""ResNet models: `build(...)` is the one factory; `layout(...)` validates a depth without building.

model = build(depth=56, num_classes=10, image_shape=(32, 32, 3))
"""

from __future__ import annotations

import sys

from resnet_train.errors import ConfigError
from resnet_train.models import names
from resnet_train.models.depths import Layout, layout, resolve_variant
from resnet_train.models.freeze import freeze


# The layers import Keras (TensorFlow, seconds): loaded when a model is built, so that config.validate
# checks depths and settings before TensorFlow starts (the CLI refuses a bad value in about a second).
def __getattr__(name):
    if name in ("Builder", "ZeroPadShortcut"):
        from resnet_train.models import layers

        return getattr(layers, name)
    if name == "FAMILIES":
        from resnet_train.models.resnet import FAMILIES

        return FAMILIES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Layout", "ZeroPadShortcut", "build", "freeze", "from_config", "layout", "names", "resolve_layout"]

# Option A for the CIFAR ResNets (the paper's default), projections elsewhere.
_DEFAULT_SHORTCUT = {"cifar": "A", "preact": "B", "imagenet": "B"}
PADDINGS = ("symmetric", "same")


def resolve_layout(depth: int, image_shape, variant: str = "auto", block: str = "auto") -> Layout:
    return layout(resolve_variant(variant, image_shape), depth, block)


def build(
    depth: int,
    num_classes: int,
    image_shape=(32, 32, 3),
    variant: str = "auto",
    block: str = "auto",
    shortcut: str = "auto",
    mean=(127.5, 127.5, 127.5),
    std=(64.0, 64.0, 64.0),
    init_mode: str = "fan_out",
    bn_momentum: float = 0.9,
    bn_epsilon: float = 1e-5,
    sync_bn: bool = False,
    fused_bn: bool = True,
    zero_init_residual: bool = False,
    padding: str = "symmetric",
    stride_in_1x1: bool = False,
    drop_path: float = 0.0,
    style: str = "standard",
):
    """A Keras model mapping images (0..255) to float32 logits. Needs no data.

    zero_init_residual: start the last batch norm of every residual branch (bn2 of a basic block,
    bn3 of a bottleneck) with gamma = 0, so each block starts as its shortcut (Goyal et al. 2017,
    sec. 5.1; torchvision's `zero_init_residual`). Only the post-activation families (cifar,
    imagenet) have such a batch norm: a pre-activation branch ends in a conv, and neither Goyal et
    al. nor torchvision define the option there, so variant preact with it is a ConfigError.

    padding: "symmetric" pads every strided conv and pool k // 2 on each side, as the papers' nets
    and torchvision (proven equal in tests/test_reference_models.py); "same" is TF's, one pixel off
    on even-sized maps, kept only so that runs made before it load and resume as they were trained.

    drop_path: stochastic depth, the last block's per-example drop rate (rising linearly from 0 at
    the first block). style: "standard" or "resnet_d" (He et al. 2019: deep stem, average-pool
    shortcut).
    """
    from resnet_train.models.layers import Builder
    from resnet_train.models.resnet import FAMILIES

    lay = resolve_layout(depth, image_shape, variant, block)
    shortcut = _shortcut(lay, depth, shortcut, style)
    _check(lay, num_classes, image_shape, mean, std, init_mode, padding, zero_init_residual)
    check_tricks(drop_path, style)
    builder = Builder(
        init_mode=init_mode,
        bn_momentum=bn_momentum,
        bn_epsilon=bn_epsilon,
        sync_bn=sync_bn,
        fused_bn=fused_bn,
        zero_init_residual=zero_init_residual,
        padding=padding,
        stride_in_1x1=stride_in_1x1,
        drop_path=drop_path,
        resnet_d=style == "resnet_d",
    )
    name = f"{lay.variant}_resnet{depth}{'d' if style == 'resnet_d' else ''}"
    # Keras walks the functional graph recursively, a few frames per layer: ResNet-1202 has
    # ~3,600 layers. Python 3.11+ keeps these frames off the C stack, so a higher limit is safe.
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20 * depth + 1000))
    return FAMILIES[lay.variant](lay, num_classes, image_shape, mean, std, shortcut, builder, name)


def _shortcut(lay, depth: int, shortcut: str, style: str = "standard") -> str:
    """model.shortcut, with auto resolved per family."""
    if shortcut == "auto":  # ResNet-D's average pool belongs to a projection shortcut
        shortcut = "B" if style == "resnet_d" else _DEFAULT_SHORTCUT[lay.variant]
    if style == "resnet_d" and shortcut == "A":
        raise ConfigError(
            "model.style=resnet_d average-pools the projection shortcut; option A has none: use model.shortcut=B"
        )
    if shortcut not in ("A", "B"):
        raise ConfigError(f"model.shortcut must be auto, A or B (got {shortcut!r})")
    if shortcut == "A" and lay.variant == "preact" and lay.block == "bottleneck":
        # It was silently ignored: the bottleneck's first unit widens 16 -> 64 channels, which
        # Identity Mappings (and its code) do by projection.
        raise ConfigError(
            f"model.shortcut=A: pre-activation bottleneck ResNets (depth {depth}) use projection "
            f"shortcuts; use model.shortcut=B (or auto)"
        )
    return shortcut


STYLES = ("standard", "resnet_d")


def check_tricks(drop_path: float, style: str) -> None:
    """model.drop_path and model.style, checked by config.validate too (before any data)."""
    if not 0.0 <= drop_path < 1.0:
        raise ConfigError(f"model.drop_path must be in [0, 1), the last block's drop rate (got {drop_path:g})")
    if style not in STYLES:
        raise ConfigError(f"model.style must be {' or '.join(STYLES)} (got {style!r})")


def _check(lay, num_classes: int, image_shape, mean, std, init_mode: str, padding: str, zero_init_residual: bool):
    if init_mode not in ("fan_in", "fan_out"):
        raise ConfigError(f"model.init_mode must be fan_in or fan_out (got {init_mode!r})")
    if num_classes < 2:
        raise ConfigError(f"a classifier needs at least 2 classes (got {num_classes})")
    if padding not in PADDINGS:
        raise ConfigError(f"model.padding must be {' or '.join(PADDINGS)} (got {padding!r})")
    if zero_init_residual and lay.variant == "preact":
        raise ConfigError(
            "model.zero_init_residual applies to post-activation ResNets (variant cifar or imagenet): "
            "a pre-activation block's branch ends in a conv, with no batch norm to start at zero"
        )
    channels = image_shape[-1]
    if len(mean) != channels or len(std) != channels:
        raise ConfigError(f"mean/std need one value per channel ({channels}), got {len(mean)}/{len(std)}")


def from_config(m, info, **override):
    """`build` for a config's `model` group and the data's DatasetInfo (input shape, classes,
    channel statistics): the one place training and the tools turn a config into a model.
    `override`: the arguments that differ (the tools build for inference: no sync_bn, no
    zero-init; a run saved before model.padding existed keeps TF's "same")."""
    args = dict(
        depth=m.depth,
        num_classes=info.num_classes,
        image_shape=info.image_shape,
        variant=m.variant,
        block=m.block,
        shortcut=m.shortcut,
        mean=info.mean,
        std=info.std,
        init_mode=m.init_mode,
        bn_momentum=m.bn_momentum,
        bn_epsilon=m.bn_epsilon,
        sync_bn=m.sync_bn,
        zero_init_residual=m.zero_init_residual,
        padding=m.padding,
        stride_in_1x1=m.stride_in_1x1,
        drop_path=m.drop_path,
        style=m.style,
    )
    return build(**{**args, **override})


def count_params(model) -> int:
    """Trainable parameters, the figure the papers report (BN moving statistics excluded)."""
    return int(sum(v.numpy().size for v in model.trainable_variables))


def forward_flops(model) -> int:
    """Multiply-adds x 2 of one image's forward pass through the conv and dense layers (what
    dominates a ResNet; batch norm, ReLU and adds are left out, as in the papers' FLOP counts)."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            c_in = layer.input.shape[-1]
            total += 2 * h * w * kh * kw * c_in * c_out
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * layer.input.shape[-1] * layer.units
    return int(total)
