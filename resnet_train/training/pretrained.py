"""init_from= a public ImageNet-pretrained ResNet, mapped into our model by structure:

    init_from=keras_hub:resnet_50_imagenet       a keras-hub preset by name (downloads from Kaggle)
    init_from=keras_hub:/path/to/preset          a keras-hub preset directory (offline)
    init_from=keras_applications:/path/file.h5   keras.applications' ResNet50/101/152 weights

keras-hub's ResNets (v1.5: the stride on the 3x3 conv, convs without bias, BN eps 1e-5) are ours
layer for layer (model.stride_in_1x1=true, v1, is refused for their bottlenecks). keras.applications'
are ResNet v1: their stride sits on the first 1x1 conv (model.stride_in_1x1=true builds ours the
same way; refused otherwise) and their convs have a bias, which is folded into the following
batch norm's moving mean (exact: BN subtracts a mean).
They take BGR input, so the stem's kernel is reversed over its input channels.

The model's input normalisation becomes the source's (ImageNet's mean and std for keras-hub,
"caffe" mean subtraction for keras.applications): the pretrained stem sees the inputs it was
trained on. The head (`logits`) is loaded when the source has one of the same shape, else new.
"""

from __future__ import annotations

import logging
import re

import numpy as np

from resnet_train.errors import UserError, first_line
from resnet_train.models import names

log = logging.getLogger(__name__)

HUB, APPLICATIONS = "keras_hub:", "keras_applications:"
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)  # keras-hub's ResNet presets (torchvision's)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
CAFFE_MEAN, CAFFE_STD = (123.68, 116.779, 103.939), (1.0, 1.0, 1.0)  # keras.applications.resnet, RGB
APPLICATION_DEPTHS = (50, 101, 152)


def is_pretrained(init_from) -> bool:
    return isinstance(init_from, str) and init_from.startswith((HUB, APPLICATIONS))


def input_statistics(init_from) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) on the 0..255 scale of the inputs the source was trained on."""
    if init_from.startswith(APPLICATIONS):
        return CAFFE_MEAN, CAFFE_STD
    try:  # a preset saved with its image converter says how it scales inputs: x * scale + offset
        import keras_hub

        converter = keras_hub.layers.ResNetImageConverter.from_preset(init_from[len(HUB) :])
        scale = np.broadcast_to(np.asarray(converter.scale, np.float64), 3)
        offset = np.broadcast_to(np.asarray(converter.offset or 0.0, np.float64), 3)
        return tuple(float(m) for m in -offset / scale), tuple(float(s) for s in 1.0 / scale)
    except Exception:  # noqa: BLE001 (no converter saved, whatever keras-hub raises): ImageNet's, as its ResNet presets use
        return IMAGENET_MEAN, IMAGENET_STD


def _hub_backbone(spec: str):
    try:
        import keras_hub
    except ImportError:
        raise UserError("init_from=keras_hub:... needs keras-hub: pip install 'resnet-train[pretrained]'") from None
    try:
        backbone = keras_hub.models.Backbone.from_preset(spec)
    except Exception as error:  # noqa: BLE001 (keras-hub raises many kinds: missing file, no network, ...)
        reason = first_line(error)
        raise UserError(
            f"init_from={HUB}{spec}: not a keras-hub preset that could be loaded ({reason}); a preset "
            f"name needs the internet once (Kaggle), a directory needs config.json and model.weights.h5"
        ) from None
    config = backbone.get_config()
    differs = []
    vd = config.get("block_type") == "bottleneck_block_vd"  # ResNet-D: ours under model.style=resnet_d
    if type(backbone).__name__ != "ResNetBackbone":
        differs.append(f"it is a {type(backbone).__name__}")
    elif config["block_type"] == "basic_block_vd":
        # keras-hub's (PaddleClas') basic vd blocks project 64 -> 64 in the first block; ours do not.
        differs.append("its basic ResNet-vd blocks have a projection in the first stage, which ResNet-D lacks")
    elif config["use_pre_activation"] or config["block_type"] not in ("basic_block", "bottleneck_block") and not vd:
        differs.append(
            f"its blocks are {config['block_type']}{' pre-activation' if config['use_pre_activation'] else ''}"
        )
    elif (list(config["input_conv_kernel_sizes"]), list(config["input_conv_filters"])) != (
        ([3, 3, 3], [32, 32, 64]) if vd else ([7], [64])
    ):
        differs.append(f"its stem is {config['input_conv_kernel_sizes']} convolutions")
    if differs:
        raise UserError(
            f"init_from={HUB}{spec}: {differs[0]}; only keras-hub's post-activation ResNets (v1.5, a 7x7 stem: "
            f"resnet_18/34/50/101/152_imagenet) and bottleneck ResNet-vd (resnet_vd_50/101/152/200_imagenet, "
            f"with model.style=resnet_d) map onto our models"
        )
    return backbone


def _hub_name(ours: str) -> str | None:
    """keras-hub's name for our layer: stem -> conv1, stageS_blockB_convK -> stack{S-1}_block{B-1}_K."""
    if ours in ("stem_conv", "stem_bn"):
        return "conv1_" + ours[5:]
    deep_stem = re.fullmatch(r"stem_(conv|bn)(\d)", ours)  # ResNet-D's three stem convs
    if deep_stem:
        return f"conv{deep_stem[2]}_{deep_stem[1]}"
    found = re.fullmatch(r"stage(\d+)_block(\d+)_(conv|bn|proj_bn|proj)(\d*)", ours)
    if not found:
        return None
    stage, block, kind, k = found.groups()
    part = "0" if kind.startswith("proj") else k
    return f"stack{int(stage) - 1}_block{int(block) - 1}_{part}_{'bn' if kind.endswith('bn') else 'conv'}"


def _application_name(ours: str) -> str | None:
    """keras.applications' name: stageS_blockB_convK -> conv{S+1}_block{B}_K, the head predictions."""
    if ours == names.HEAD:
        return "predictions"
    hub = _hub_name(ours)
    if hub is None or hub.startswith("conv1_"):
        return hub
    stack, block, rest = re.fullmatch(r"stack(\d+)_block(\d+)_(.*)", hub).groups()
    return f"conv{int(stack) + 2}_block{int(block) + 1}_{rest}"


def _application_model(path: str, depth: int, stride_in_1x1: bool):
    import keras

    if depth not in APPLICATION_DEPTHS:
        raise UserError(
            f"init_from={APPLICATIONS}{path}: keras.applications has ResNet{'/'.join(map(str, APPLICATION_DEPTHS))} "
            f"(bottleneck) weights; this model is depth {depth}"
        )
    if not stride_in_1x1:
        raise UserError(
            f"init_from={APPLICATIONS}{path}: keras.applications' ResNet{depth} is ResNet v1, its stride on the "
            f"first 1x1 conv of a block; ours puts it on the 3x3 (v1.5): add model.stride_in_1x1=true"
        )
    make = getattr(keras.applications, f"ResNet{depth}")
    errors = []
    for top in (True, False):  # a weight file with or without the ImageNet classifier
        model = make(weights=None, include_top=top)
        try:
            model.load_weights(path)
            return model
        except Exception as error:  # noqa: BLE001 (Keras' loaders raise ValueError, OSError, KeyError, ...)
            errors.append(first_line(error, 160))
    raise UserError(
        f"init_from={APPLICATIONS}{path}: not a keras.applications ResNet{depth} weight file ({errors[-1]})"
    )


def _same_style(init_from: str, vd: bool, model) -> None:
    """A ResNet-vd source needs our ResNet-D (model.style=resnet_d), a standard one our standard."""
    ours_d = any(layer.name == "stem_conv1" for layer in model.layers)
    if vd != ours_d:
        fix = "add model.style=resnet_d" if vd else "drop model.style=resnet_d"
        kind = "a ResNet-vd (deep stem, average-pool shortcuts)" if vd else "a standard ResNet (7x7 stem)"
        raise UserError(f"init_from={init_from}: the source is {kind}, this model is not: {fix}")


def initialise(model, init_from: str, model_cfg) -> dict:
    """Copies the pretrained source into `model`; returns what was loaded and what is new."""
    from resnet_train.models.drop_path import DropPath

    if init_from.startswith(HUB):
        source, rename, bgr = _hub_backbone(init_from[len(HUB) :]), _hub_name, False
        _same_style(init_from, source.get_config()["block_type"].endswith("_vd"), model)
        if model_cfg.stride_in_1x1 and source.get_config()["block_type"] == "bottleneck_block":
            raise UserError(
                f"init_from={init_from}: keras-hub's ResNets are v1.5, the stride on the 3x3 conv of a block; "
                f"model.stride_in_1x1=true puts it on the first 1x1 (v1, for keras.applications' weights): "
                f"drop model.stride_in_1x1=true"
            )
    else:
        _same_style(init_from, False, model)
        source = _application_model(init_from[len(APPLICATIONS) :], model_cfg.depth, model_cfg.stride_in_1x1)
        rename, bgr = _application_name, True
    theirs = {layer.name: layer for layer in source.layers if layer.weights}
    loaded, new, biases = [], [], {}
    for layer in model.layers:  # in graph order: a conv comes before its batch norm
        if not layer.weights or layer.name == names.NORMALIZE or isinstance(layer, DropPath):
            continue  # (DropPath's weight counts its random draws: nothing learned)
        other = theirs.get(rename(layer.name) or "")
        weights = other.get_weights() if other is not None else None
        if weights and layer.name != names.HEAD and len(weights) == 2 and weights[0].ndim == 4:  # a conv's bias
            biases[
                re.sub(r"(conv|proj)(\d*)$", lambda m: ("bn" if m[1] == "conv" else "proj_bn") + m[2], layer.name)
            ] = weights.pop()
        if weights and len(weights) == 4 and layer.name in biases:  # fold the conv's bias into BN
            weights[2] = weights[2] - biases.pop(layer.name)
        if weights and bgr and layer.name == "stem_conv":
            weights[0] = weights[0][:, :, ::-1, :]  # the source's input is BGR
        shapes = [tuple(w.shape) for w in layer.weights]
        if weights is not None and [tuple(w.shape) for w in weights] == shapes:
            layer.set_weights(weights)
            loaded.append(layer.name)
        elif layer.name == names.HEAD:
            new.append(layer.name)
        else:
            found = "missing" if weights is None else [tuple(w.shape) for w in weights]
            raise UserError(
                f"init_from={init_from} ({source.name}) does not fit {model.name}: layer {layer.name} needs {shapes}, "
                f"the source has {found}; choose the same depth (and the ImageNet variant, at 128 px or more)"
            )
    log.info("Initialised from %s: %d layers loaded; new: %s", init_from, len(loaded), ", ".join(new) or "none")
    return {"source": init_from, "loaded": loaded, "new": new}
