"""Parameter counts and shapes of every listed depth (no training), and depth validation."""
import keras
import numpy as np
import pytest

from resnet_train import models
from resnet_train.errors import ConfigError
from resnet_train.models import build, count_params

# (variant, depth, num_classes, input side, paper's figure in millions, exact reference count).
# Exact counts: torchvision for the ImageNet ResNets; the standard implementations of the
# CIFAR ResNets (option A) and pre-activation ResNets (projection shortcuts).
PAPER = [
    ("cifar", 20, 10, 32, "0.27", 269_722),
    ("cifar", 32, 10, 32, "0.46", 464_154),
    ("cifar", 44, 10, 32, "0.66", 658_586),
    ("cifar", 56, 10, 32, "0.85", 853_018),
    ("cifar", 110, 10, 32, "1.7", 1_727_962),
    ("cifar", 1202, 10, 32, "19.4", 19_421_274),
    ("preact", 164, 10, 32, "1.7", 1_703_258),
    ("preact", 1001, 10, 32, "10.2", 10_327_706),
    ("imagenet", 18, 1000, 224, "11.7", 11_689_512),
    ("imagenet", 34, 1000, 224, "21.8", 21_797_672),
    ("imagenet", 50, 1000, 224, "25.6", 25_557_032),
    ("imagenet", 101, 1000, 224, "44.5", 44_549_160),
    ("imagenet", 152, 1000, 224, "60.2", 60_192_808),
    ("imagenet", 200, 1000, 224, "64.7", 64_673_832),
]


def bn_params(model):
    return sum(v.numpy().size for v in model.trainable_variables if "gamma" in v.path or "beta" in v.path)


@pytest.mark.parametrize("variant,depth,classes,side,paper,exact", PAPER, ids=[f"{v}{d}" for v, d, *_ in PAPER])
def test_parameter_counts_match_the_papers(variant, depth, classes, side, paper, exact):
    keras.backend.clear_session()
    model = build(depth, classes, (side, side, 3), variant=variant)
    count = count_params(model)
    assert count == exact
    decimals = len(paper.split(".")[1])
    if (variant, depth) == ("preact", 1001):
        # Identity Mappings reports 10.2M, which is the count without BN's gamma/beta
        # (10.18M); with them it is 10.33M. The 164-layer figure (1.7M) fits either way.
        assert round((count - bn_params(model)) / 1e6, decimals) == float(paper)
    else:
        assert round(count / 1e6, decimals) == float(paper)
    assert model.output.shape == (None, classes)
    assert model.output.dtype == "float32"
    assert model.name == f"{variant}_resnet{depth}"


@pytest.mark.parametrize("variant,depth", [("cifar", 20), ("preact", 20), ("preact", 164), ("imagenet", 18)])
def test_forward_pass_shapes(variant, depth):
    keras.backend.clear_session()
    side = 64 if variant == "imagenet" else 32
    model = build(depth, 7, (side, side, 3), variant=variant)
    images = np.random.default_rng(0).integers(0, 256, (2, side, side, 3)).astype("uint8")
    logits = model(images, training=False)
    assert logits.shape == (2, 7)
    assert np.all(np.isfinite(np.asarray(logits)))


def test_shortcut_b_adds_projections_and_a_has_none():
    keras.backend.clear_session()
    a = build(20, 10, variant="cifar", shortcut="A")
    b = build(20, 10, variant="cifar", shortcut="B")
    # Two projections (16->32, 32->64) with their BN: 16*32 + 32*64 + 2*(32+64)
    assert count_params(b) - count_params(a) == 16 * 32 + 32 * 64 + 2 * (32 + 64)
    assert not any("proj" in layer.name for layer in a.layers)


def test_auto_variant_follows_image_size():
    assert models.resolve_layout(20, (32, 32, 3)).variant == "cifar"
    assert models.resolve_layout(50, (224, 224, 3)).variant == "imagenet"
    assert models.resolve_layout(164, (32, 32, 3), "preact").block == "bottleneck"
    assert models.resolve_layout(110, (32, 32, 3), "preact").block == "basic"


def test_he_initialisation_fan_out():
    keras.backend.clear_session()
    model = build(20, 10, variant="cifar", init_mode="fan_out")
    kernel = model.get_layer("stage3_block1_conv2").kernel.numpy()  # 3x3, 64 -> 64
    expected = np.sqrt(2.0 / (3 * 3 * 64))
    assert abs(kernel.std() - expected) / expected < 0.05


@pytest.mark.parametrize(
    "variant,depth,message",
    [
        ("cifar", 57, "CIFAR ResNet depth must be 6n+2: 20, 32, 44, 56, 110, 1202"),
        ("cifar", 51, "6n+2"),
        ("cifar", 2, "6n+2"),
        ("imagenet", 20, "ImageNet ResNet depth must be one of 18, 34, 50, 101, 152, 200"),
        ("preact", 165, "9n+2"),
        ("preact", 57, "6n+2"),
    ],
)
def test_invalid_depths_name_the_valid_ones(variant, depth, message):
    with pytest.raises(ConfigError, match=message.replace("+", r"\+")):
        models.layout(variant, depth)


def test_invalid_depth_fails_before_building(monkeypatch):
    # Nothing may be built: make any layer construction explode.
    monkeypatch.setattr(keras.layers.Conv2D, "__init__", lambda *a, **k: pytest.fail("built a layer"))
    with pytest.raises(ConfigError, match="6n"):
        build(57, 10)


@pytest.mark.parametrize("variant,depth,block", [("cifar", 8, "auto"), ("preact", 8, "basic"),
                                                 ("preact", 11, "bottleneck"), ("imagenet", 18, "auto"),
                                                 ("imagenet", 50, "auto")])
def test_every_layer_has_a_deterministic_name(variant, depth, block):
    # Fine-tuning matches layers by name: no Keras auto-numbered names (re_lu_12) may appear.
    keras.backend.clear_session()
    model = build(depth, 10, (64, 64, 3), variant=variant, block=block)
    names = [layer.name for layer in model.layers]
    assert len(names) == len(set(names))
    assert not [n for n in names if n.split("_")[-1].isdigit() and not n.startswith(("stage", "stem"))]
    build(depth, 10, (64, 64, 3), variant=variant, block=block)  # a second build: the same names


def test_fused_batch_norm_matches_keras_batch_norm():
    import tensorflow as tf

    from resnet_train.models.layers import FusedBatchNorm

    x = tf.constant(np.random.default_rng(0).normal(2, 3, (16, 8, 8, 5)).astype(np.float32))
    ours, theirs = FusedBatchNorm(momentum=0.9, epsilon=1e-5), keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)
    for layer in (ours, theirs):
        layer.build(x.shape)
        layer.gamma.assign(np.linspace(0.5, 2, 5))
        layer.beta.assign(np.linspace(-1, 1, 5))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y_ours, y_theirs = ours(x, training=True), theirs(x, training=True)
        loss_ours, loss_theirs = (tf.reduce_sum(y * y * 0.3 + y) for y in (y_ours, y_theirs))
    np.testing.assert_allclose(y_ours, y_theirs, atol=1e-5)
    for a, b in zip(tape.gradient(loss_ours, [x, ours.gamma, ours.beta]),
                    tape.gradient(loss_theirs, [x, theirs.gamma, theirs.beta])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-3)
    np.testing.assert_allclose(ours.moving_mean.numpy(), theirs.moving_mean.numpy(), atol=1e-6)
    # The fused kernel tracks the unbiased batch variance: n / (n - 1) with n = 16 x 8 x 8.
    n = 16 * 8 * 8
    expected = 0.9 * 1.0 + 0.1 * (theirs.moving_variance.numpy() - 0.9) / 0.1 * n / (n - 1)
    np.testing.assert_allclose(ours.moving_variance.numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(ours(x, training=False), (x - ours.moving_mean) / np.sqrt(ours.moving_variance + 1e-5)
                               * ours.gamma + ours.beta, atol=1e-4)
    assert isinstance(build(8, 10).get_layer("stem_bn"), FusedBatchNorm)
    assert not isinstance(build(8, 10, sync_bn=True).get_layer("stem_bn"), FusedBatchNorm)
