"""model.style=resnet_d: ResNet-D (He et al. 2019, "Bag of Tricks"): a deep stem (three 3x3 convs,
32/32/64) and strided projection shortcuts that average-pool 2x2 before a stride-1 1x1 conv.
Proven against keras-hub's ResNet-vd backbone (PaddleClas' layout, as timm's resnet50d), built
here with random weights and batch-norm statistics, saved as a local preset and loaded through
init_from: the same parameter count and the same features."""

from types import SimpleNamespace

import keras
import keras_hub  # noqa: E402 (the [pretrained] extra, in the test extras)
import numpy as np
import pytest
from helpers import TINY, compose
from test_pretrained import _close, _features, _random_preset, _with_weights

from resnet_train import models
from resnet_train.config import validate
from resnet_train.data.info import DatasetInfo
from resnet_train.errors import ConfigError, UserError
from resnet_train.models import depths, names
from resnet_train.training import pretrained

VD = dict(
    input_conv_filters=[32, 32, 64],
    input_conv_kernel_sizes=[3, 3, 3],
    stackwise_num_filters=[64, 128, 256, 512],
    stackwise_num_blocks=[1, 2, 1, 1],  # a stride-1 block with an identity shortcut in stage 2
    stackwise_num_strides=[1, 2, 2, 2],
    block_type="bottleneck_block_vd",
    use_pre_activation=False,
)
DEPTH = 17  # 5 bottleneck blocks x 3 + stem + head, known to our builder through the fixture below


@pytest.fixture
def depth(monkeypatch):
    monkeypatch.setitem(depths.IMAGENET_DEPTHS, DEPTH, ("bottleneck", (1, 2, 1, 1)))
    return DEPTH


@pytest.fixture(scope="module")
def vd_preset(tmp_path_factory):
    return _random_preset(tmp_path_factory, "resnet_vd", VD, seed=11, statistics_seed=12)


def test_resnet50_d_has_keras_hubs_resnet_vd_50_parameter_count():
    """25,576,264 with a 1000-class head: timm's resnet50d (25.58M in its model table); the
    standard ResNet-50 has 25,557,032 (the deep stem adds 19,232)."""
    backbone = keras_hub.models.ResNetBackbone(**{**VD, "stackwise_num_blocks": [3, 4, 6, 3]})
    ours = models.build(50, 1000, (224, 224, 3), style="resnet_d")
    head = 2048 * 1000 + 1000
    assert models.count_params(ours) == backbone.count_params() - _bn_statistics(backbone) + head == 25_576_264
    assert models.count_params(models.build(50, 1000, (224, 224, 3))) == 25_557_032


def _bn_statistics(model) -> int:
    return sum(2 * layer.gamma.shape[0] for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))


def test_a_keras_hub_vd_preset_loads_into_resnet_d_and_gives_its_features(vd_preset, depth):
    """112 px: stage 4's input is 7x7, so the average pool's ceil (a last row and column averaged
    over the real pixels only) is in the comparison."""
    path, backbone = vd_preset
    init_from = f"keras_hub:{path}"
    mean, std = pretrained.input_statistics(init_from)
    ours = models.build(depth, 10, (112, 112, 3), variant="imagenet", mean=mean, std=std, style="resnet_d")
    assert ours.get_layer("stage4_block1_proj_pool").input.shape[1:3] == (7, 7)
    done = pretrained.initialise(ours, init_from, SimpleNamespace(depth=depth, stride_in_1x1=False))
    assert done["new"] == [names.HEAD] and len(done["loaded"]) == _with_weights(backbone)
    images = np.random.default_rng(13).integers(0, 256, (2, 112, 112, 3)).astype("float32")
    theirs = backbone((images - np.array(mean)) / np.array(std)).numpy().mean(axis=(1, 2))
    _close(_features(ours, names.POOL, images), theirs)


def test_the_strikes_back_combination_loads_too(vd_preset, depth):
    """ResNet-D with stochastic depth: the DropPath layers' draw counts are not weights to load."""
    path, backbone = vd_preset
    init_from = f"keras_hub:{path}"
    ours = models.build(depth, 10, (112, 112, 3), variant="imagenet", style="resnet_d", drop_path=0.05)
    done = pretrained.initialise(ours, init_from, SimpleNamespace(depth=depth, stride_in_1x1=False))
    assert len(done["loaded"]) == _with_weights(backbone)


def test_a_vd_preset_needs_resnet_d_and_a_standard_one_refuses_it(vd_preset, depth):
    path, _ = vd_preset
    standard = models.build(depth, 10, (112, 112, 3), variant="imagenet")
    with pytest.raises(UserError, match="the source is a ResNet-vd .*: add model.style=resnet_d"):
        pretrained.initialise(standard, f"keras_hub:{path}", SimpleNamespace(depth=depth, stride_in_1x1=False))


def test_basic_vd_presets_are_refused_naming_the_extra_projection(tmp_path):
    backbone = keras_hub.models.ResNetBackbone(
        **{**VD, "stackwise_num_blocks": [1, 1, 1, 1], "block_type": "basic_block_vd"}, image_shape=(64, 64, 3)
    )
    backbone.save_to_preset(str(tmp_path / "basic_vd"))
    ours = models.build(18, 10, (64, 64, 3), variant="imagenet", style="resnet_d")
    with pytest.raises(UserError, match="projection in the first stage"):
        pretrained.initialise(
            ours, f"keras_hub:{tmp_path / 'basic_vd'}", SimpleNamespace(depth=18, stride_in_1x1=False)
        )


def test_the_config_builds_it_and_cifar_nets_get_the_pooled_projection():
    cfg = compose(*TINY, "model.style=resnet_d")
    validate(cfg)
    model = models.from_config(cfg.model, DatasetInfo("x", 10, (32, 32, 3), 1, 1))
    pools = [layer.name for layer in model.layers if isinstance(layer, keras.layers.AveragePooling2D)]
    assert pools == ["stage2_block1_proj_pool", "stage3_block1_proj_pool"]  # auto: option B under resnet_d
    assert model.get_layer("stage2_block1_proj").strides == (1, 1)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["model.style=resnet_e"], "model.style must be standard or resnet_d (got 'resnet_e')"),
        (["model.style=resnet_d", "model.shortcut=A"], "option A has none: use model.shortcut=B"),
    ],
)
def test_bad_settings_are_one_line(overrides, message):
    with pytest.raises(ConfigError) as error:
        cfg = compose(*TINY, *overrides)
        validate(cfg)
        models.from_config(cfg.model, DatasetInfo("x", 10, (32, 32, 3), 1, 1))
    assert message in str(error.value) and "\n" not in str(error.value)
