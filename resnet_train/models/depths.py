"""Which depths each ResNet family allows, and how a depth maps to blocks per stage.

Checked before any layer is built, so a wrong depth fails in milliseconds with the valid choices.
"""

from __future__ import annotations

from dataclasses import dataclass

from resnet_train.errors import ConfigError

VARIANTS = ("cifar", "preact", "imagenet")

# He et al. 2016, Table 1 (ImageNet ResNets). ResNet-200 is from the Identity Mappings paper.
IMAGENET_DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),
}

# The depths the papers report for the CIFAR families, used in error messages.
CIFAR_PAPER_DEPTHS = (20, 32, 44, 56, 110, 1202)
PREACT_BASIC_DEPTHS = (20, 56, 110)
PREACT_BOTTLENECK_DEPTHS = (164, 1001)
# The Identity Mappings paper switches to bottleneck blocks from ResNet-164 on.
PREACT_BOTTLENECK_FROM = 164


@dataclass(frozen=True)
class Layout:
    """What a depth means for one variant: the block type and the number of blocks per stage."""

    variant: str
    depth: int
    block: str  # "basic" or "bottleneck"
    stages: tuple[int, ...]


def _listing(depths) -> str:
    return ", ".join(str(d) for d in depths)


def layout(variant: str, depth: int, block: str = "auto") -> Layout:
    """The stage layout for `depth` in `variant`; raises ConfigError naming the valid depths."""
    if variant not in VARIANTS:
        raise ConfigError(f"model.variant must be one of auto, {', '.join(VARIANTS)} (got {variant!r})")
    if not isinstance(depth, int) or isinstance(depth, bool):
        raise ConfigError(f"depth must be an integer (got {depth!r})")
    if block not in ("auto", "basic", "bottleneck"):
        raise ConfigError(f"model.block must be auto, basic or bottleneck (got {block!r})")

    if variant == "imagenet":
        if depth not in IMAGENET_DEPTHS:
            raise ConfigError(f"ImageNet ResNet depth must be one of {_listing(IMAGENET_DEPTHS)} (got {depth})")
        kind, stages = IMAGENET_DEPTHS[depth]
        if block not in ("auto", kind):
            raise ConfigError(f"ImageNet ResNet-{depth} uses {kind} blocks; drop model.block={block}")
        return Layout(variant, depth, kind, stages)

    if variant == "cifar":
        if block == "bottleneck":
            raise ConfigError(
                "The CIFAR ResNet of He et al. 2016 has basic blocks only; "
                "use model.variant=preact for bottleneck blocks"
            )
        if depth < 8 or (depth - 2) % 6:
            raise ConfigError(
                f"CIFAR ResNet depth must be 6n+2: {_listing(CIFAR_PAPER_DEPTHS)}, ... (got {depth}); "
                f"for ImageNet ResNets ({_listing(IMAGENET_DEPTHS)}) add model.variant=imagenet"
            )
        n = (depth - 2) // 6
        return Layout(variant, depth, "basic", (n, n, n))

    # Pre-activation ResNet (He et al. 2016b, Identity Mappings).
    if block == "auto":
        block = "bottleneck" if depth >= PREACT_BOTTLENECK_FROM else "basic"
    if block == "basic":
        if depth < 8 or (depth - 2) % 6:
            raise ConfigError(
                f"Pre-activation ResNet depth with basic blocks must be 6n+2: "
                f"{_listing(PREACT_BASIC_DEPTHS)}, ...; with bottleneck blocks 9n+2: "
                f"{_listing(PREACT_BOTTLENECK_DEPTHS)}, ... (got {depth})"
            )
        n = (depth - 2) // 6
    else:
        if depth < 11 or (depth - 2) % 9:
            raise ConfigError(
                f"Pre-activation ResNet depth with bottleneck blocks must be 9n+2: "
                f"{_listing(PREACT_BOTTLENECK_DEPTHS)}, ...; with basic blocks 6n+2: "
                f"{_listing(PREACT_BASIC_DEPTHS)}, ... (got {depth})"
            )
        n = (depth - 2) // 9
    return Layout(variant, depth, block, (n, n, n))


def resolve_variant(variant: str, image_shape) -> str:
    """`auto` picks the ImageNet stem for ImageNet-sized inputs (at least 128 pixels a side)."""
    if variant != "auto":
        return variant
    return "imagenet" if min(image_shape[0], image_shape[1]) >= 128 else "cifar"
