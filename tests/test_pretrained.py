"""init_from= a public pretrained ResNet (keras-hub preset, keras.applications weight file): the
sources are built here with random weights (and random batch-norm statistics and conv biases, so
that every mapped number matters), saved locally, loaded through init_from, and must give the
source's own features and predictions."""

import json
import re
from types import SimpleNamespace

import keras
import keras_hub  # noqa: E402 (the [pretrained] extra, in the test extras: `make setup` installs it)
import numpy as np
import pytest
from helpers import TINY

from resnet_train import models
from resnet_train.errors import UserError
from resnet_train.models import names
from resnet_train.training import pretrained

HUB_RESNET18 = dict(
    input_conv_filters=[64],
    input_conv_kernel_sizes=[7],
    stackwise_num_filters=[64, 128, 256, 512],
    stackwise_num_blocks=[2, 2, 2, 2],
    stackwise_num_strides=[1, 2, 2, 2],
    block_type="basic_block",
    use_pre_activation=False,
)
# ResNet-50's bottleneck blocks (1x1 -> 3x3 -> 1x1 x4, a projection in each stage's first block) but
# one block per stage: where the stride sits (keras-hub's v1.5: on the 3x3) decides the features,
# at a fraction of ResNet-50's cost. Our builder knows it as depth 14 once IMAGENET_DEPTHS has it.
HUB_BOTTLENECK = {**HUB_RESNET18, "stackwise_num_blocks": [1, 1, 1, 1], "block_type": "bottleneck_block"}
BOTTLENECK_DEPTH = 14


def _randomise_statistics(model, seed=0):
    """Batch-norm moving statistics, gamma, beta and conv biases away from their initial values."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights(
                [rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c), rng.normal(0, 0.1, c), rng.uniform(0.5, 1.5, c)]
            )
        elif isinstance(layer, keras.layers.Conv2D) and layer.use_bias:
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.normal(0, 0.1, bias.shape)])


def _close(ours, theirs):
    """Equal within 1e-4 of the outputs' magnitude."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert np.abs(ours - theirs).max() <= 1e-4 * np.abs(theirs).max(), np.abs(ours - theirs).max()


def _with_weights(model) -> int:
    return len([layer for layer in model.layers if layer.weights])


def _features(model, layer, images):
    return keras.Model(model.inputs, model.get_layer(layer).output)(images).numpy()


def _random_preset(tmp_path_factory, name, config, seed, statistics_seed=0):
    """A keras-hub ResNet backbone with random weights and batch-norm statistics, saved as a local
    preset (no download): (its folder, the backbone)."""
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.ResNetBackbone(**config)
    _randomise_statistics(backbone, seed=statistics_seed)
    path = tmp_path_factory.mktemp("hub") / name
    backbone.save_to_preset(str(path))
    return path, backbone


@pytest.fixture(scope="module")
def hub_preset(tmp_path_factory):
    return _random_preset(tmp_path_factory, "resnet18", HUB_RESNET18, seed=1)


def test_a_keras_hub_preset_gives_the_backbones_own_features(hub_preset):
    path, backbone = hub_preset
    init_from = f"keras_hub:{path}"
    mean, std = pretrained.input_statistics(init_from)
    assert mean == pytest.approx(pretrained.IMAGENET_MEAN) and std == pytest.approx(pretrained.IMAGENET_STD)
    ours = models.build(18, 10, (128, 128, 3), mean=mean, std=std)
    done = pretrained.initialise(ours, init_from, SimpleNamespace(depth=18, stride_in_1x1=False))
    assert done["new"] == [names.HEAD] and len(done["loaded"]) == len(
        [layer for layer in backbone.layers if layer.weights]
    )
    images = np.random.default_rng(2).integers(0, 256, (2, 128, 128, 3)).astype("float32")
    theirs = backbone((images - np.array(mean)) / np.array(std)).numpy().mean(axis=(1, 2))
    _close(_features(ours, names.POOL, images), theirs)


@pytest.fixture(scope="module")
def hub_bottleneck_preset(tmp_path_factory):
    return _random_preset(tmp_path_factory, "bottleneck", HUB_BOTTLENECK, seed=6, statistics_seed=7)


@pytest.fixture
def bottleneck_depth(monkeypatch):
    """Depth 14: ImageNet bottleneck blocks, one per stage (ResNet-50's layout, 1/4 of its blocks)."""
    from resnet_train.models import depths

    monkeypatch.setitem(depths.IMAGENET_DEPTHS, BOTTLENECK_DEPTH, ("bottleneck", (1, 1, 1, 1)))
    return BOTTLENECK_DEPTH


def test_a_keras_hub_bottleneck_preset_keeps_the_stride_on_the_3x3_conv(hub_bottleneck_preset, bottleneck_depth):
    """keras-hub's bottleneck ResNets are v1.5 (the stride on the 3x3 conv, as ours by default): the
    features match only with the stride there; model.stride_in_1x1=true (v1) is refused, naming the fix."""
    path, backbone = hub_bottleneck_preset
    init_from = f"keras_hub:{path}"
    mean, std = pretrained.input_statistics(init_from)
    images = np.random.default_rng(8).integers(0, 256, (2, 64, 64, 3)).astype("float32")
    ours = models.build(bottleneck_depth, 10, (64, 64, 3), variant="imagenet", mean=mean, std=std)
    done = pretrained.initialise(ours, init_from, SimpleNamespace(depth=bottleneck_depth, stride_in_1x1=False))
    assert done["new"] == [names.HEAD] and len(done["loaded"]) == _with_weights(backbone)
    theirs = backbone((images - np.array(mean)) / np.array(std)).numpy().mean(axis=(1, 2))
    _close(_features(ours, names.POOL, images), theirs)

    v1 = models.build(bottleneck_depth, 10, (64, 64, 3), variant="imagenet", mean=mean, std=std, stride_in_1x1=True)
    with pytest.raises(UserError, match=r"keras-hub's .* v1\.5, the stride on the 3x3 conv.*drop model\.stride_in_1x1"):
        pretrained.initialise(v1, init_from, SimpleNamespace(depth=bottleneck_depth, stride_in_1x1=True))


def test_a_keras_applications_weight_file_gives_the_models_own_features_and_predictions(tmp_path):
    keras.utils.set_random_seed(3)
    source = keras.applications.ResNet50(weights=None)  # v1, conv biases, BGR "caffe" input
    _randomise_statistics(source, seed=4)
    path = tmp_path / "resnet50.weights.h5"
    source.save_weights(str(path))
    init_from = f"keras_applications:{path}"
    mean, std = pretrained.input_statistics(init_from)
    ours = models.build(50, 1000, (224, 224, 3), mean=mean, std=std, stride_in_1x1=True)
    done = pretrained.initialise(ours, init_from, SimpleNamespace(depth=50, stride_in_1x1=True))
    assert done["new"] == [] and names.HEAD in done["loaded"]  # its ImageNet classifier too
    images = np.random.default_rng(5).integers(0, 256, (2, 224, 224, 3)).astype("float32")
    preprocessed = keras.applications.resnet.preprocess_input(images.copy())
    _close(_features(ours, names.POOL, images), _features(source, "avg_pool", preprocessed))
    _close(keras.ops.softmax(ours(images)).numpy(), source(preprocessed).numpy())

    v15 = models.build(50, 1000, (224, 224, 3), mean=mean, std=std)
    with pytest.raises(Exception, match="is ResNet v1, its stride on the first 1x1 conv .* model.stride_in_1x1=true"):
        pretrained.initialise(v15, init_from, SimpleNamespace(depth=50, stride_in_1x1=False))


def test_fine_tuning_a_folder_from_a_keras_hub_preset_through_resnet_train(cli, hub_preset, tmp_path):
    from test_folder import write_images

    path, backbone = hub_preset
    photos = tmp_path / "photos"
    write_images(photos / "cat", 6, (200, 40, 40), "jpg", size=(40, 30))
    write_images(photos / "dog", 6, (40, 200, 40), "png", size=(30, 40))
    run = tmp_path / "run"
    args = [*TINY, "data=folder", f"data.path={photos}", "data.image_size=128", "depth=18", "batch_size=4"]
    args += ["steps=2", f"init_from=keras_hub:{path}", "finetune.freeze=backbone", f"hydra.run.dir={run}"]
    done = cli(*args)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = json.loads((run / "init_from.json").read_text())
    assert loaded["new"] == [names.HEAD] and len(loaded["loaded"]) == len(
        [layer for layer in backbone.layers if layer.weights]
    )
    assert json.loads((run / "dataset.json").read_text())["mean"] == pytest.approx(pretrained.IMAGENET_MEAN)
    assert "Input normalisation of keras_hub:" in (run / "train.log").read_text()


@pytest.mark.parametrize(
    "init_from,extra,message",
    [
        (
            "keras_hub:{tmp}/no_preset",
            ["depth=18"],
            "init_from=keras_hub:{tmp}/no_preset: not a keras-hub preset that could be",
        ),
        ("keras_applications:{tmp}/x.h5", ["depth=18"], "keras.applications has ResNet50/101/152 (bottleneck) weights"),
    ],
    ids=["no-preset", "applications-depth"],
)
def test_bad_pretrained_sources_are_one_line_exit_2(cli, tmp_path, init_from, extra, message):
    args = [*TINY, "data.image_size=128", *extra, f"init_from={init_from.format(tmp=tmp_path)}"]
    done = cli(*args, f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 2 and message.format(tmp=tmp_path) in done.stderr, done.stderr[-1500:]
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_keras_hub_bottleneck_into_stride_in_1x1_is_one_line_exit_2(
    cli, hub_bottleneck_preset, bottleneck_depth, tmp_path
):
    path, _ = hub_bottleneck_preset
    args = [*TINY, "data.image_size=64", "model.variant=imagenet", f"depth={bottleneck_depth}", "steps=1"]
    done = cli(*args, "model.stride_in_1x1=true", f"init_from=keras_hub:{path}", f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 2 and "drop model.stride_in_1x1=true" in done.stderr, done.stderr[-1500:]
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize(
    "layout,message",
    [
        ({"use_pre_activation": True}, "its blocks are basic_block pre-activation"),  # ResNet v2
        # a deep stem on standard blocks (a vd preset has vd blocks too: tests/test_resnet_d.py)
        (
            {"input_conv_filters": [32, 32, 64], "input_conv_kernel_sizes": [3, 3, 3]},
            "its stem is [3, 3, 3] convolutions",
        ),
    ],
    ids=["v2", "deep_stem"],
)
def test_keras_hub_v2_and_mixed_presets_are_refused_saying_why(tmp_path, layout, message):
    """README: only the post-activation 7x7-stem presets map onto our models; the others are
    refused by what differs, not loaded into a network of another shape."""
    from resnet_train.errors import UserError
    from resnet_train.training.pretrained import _hub_backbone

    keras.utils.set_random_seed(1)
    path = tmp_path / "preset"
    keras_hub.models.ResNetBackbone(**{**HUB_RESNET18, "stackwise_num_blocks": [1, 1, 1, 1], **layout}).save_to_preset(
        str(path)
    )
    with pytest.raises(UserError, match=re.escape(message) + ".*only keras-hub's post-activation ResNets"):
        _hub_backbone(str(path))
