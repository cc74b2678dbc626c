"""Parameter counts and shapes of every listed depth (no training), and depth validation."""

import collections
import functools
import re

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


# Built, ResNet-1202 takes ~18 s and -1001 ~14 s here: the deepest of each family are counted by
# a formula instead. A ResNet's parameters are those outside its stages plus, per stage, its first
# block (it may change width and stride) and n - 1 times the repeated block. The per-block counts
# are read off one shallow build per family; the formula must give every built depth's exact count
# too (test below), so a block it mis-counts fails there.
FORMULA_ONLY = {("cifar", 1202), ("preact", 1001), ("imagenet", 152), ("imagenet", 200)}
SHALLOW = {
    ("cifar", "basic"): 20,
    ("preact", "bottleneck"): 29,
    ("imagenet", "basic"): 18,
    ("imagenet", "bottleneck"): 50,
}


@functools.lru_cache(maxsize=None)
def block_counts(variant, block, classes, side):
    """{(stage, block) or "outside": (parameters, of which BN gamma/beta)} of the family's shallow build."""
    depth = SHALLOW[(variant, block)]
    keras.backend.clear_session()
    model = build(depth, classes, (side, side, 3), variant=variant, block=block)
    counts = collections.defaultdict(lambda: np.zeros(2, np.int64))
    for layer in model.layers:
        match = re.match(r"stage(\d+)_block(\d+)_", layer.name)
        for v in layer.trainable_weights:
            size = v.numpy().size
            counts[(int(match[1]), int(match[2])) if match else "outside"] += (
                size,
                size if "gamma" in v.path or "beta" in v.path else 0,
            )
    assert int(sum(c[0] for c in counts.values())) == count_params(model)  # no weight outside a layer
    assert int(sum(c[1] for c in counts.values())) == bn_params(model)
    stages = models.layout(variant, depth, block).stages
    assert min(stages) >= 2  # a repeated block in every stage, and all of a stage's repeats alike
    for stage, n in enumerate(stages, 1):
        assert all((counts[(stage, k)] == counts[(stage, 2)]).all() for k in range(3, n + 1)), (variant, stage)
    return dict(counts)


def formula_count(variant, depth, classes, side):
    """(parameters, of which BN gamma/beta) of `depth` from its layout and the shallow build's blocks."""
    layout = models.layout(variant, depth)
    blocks = block_counts(variant, layout.block, classes, side)
    total = blocks["outside"].copy()
    for stage, n in enumerate(layout.stages, 1):
        total += blocks[(stage, 1)] + (n - 1) * blocks[(stage, 2)]
    return int(total[0]), int(total[1])


@pytest.mark.parametrize("variant,depth,classes,side,paper,exact", PAPER, ids=[f"{v}{d}" for v, d, *_ in PAPER])
def test_parameter_counts_match_the_papers(variant, depth, classes, side, paper, exact):
    count, bn = formula_count(variant, depth, classes, side)
    assert count == exact  # every depth, the deepest by the formula only
    if (variant, depth) not in FORMULA_ONLY:
        keras.backend.clear_session()
        model = build(depth, classes, (side, side, 3), variant=variant)
        assert count_params(model) == count and bn_params(model) == bn  # the formula, checked on a build
        assert model.output.shape == (None, classes)
        assert model.output.dtype == "float32"
        assert model.name == f"{variant}_resnet{depth}"
    decimals = len(paper.split(".")[1])
    if (variant, depth) == ("preact", 1001):
        # Identity Mappings reports 10.2M, which is the count without BN's gamma/beta
        # (10.18M); with them it is 10.33M. The 164-layer figure (1.7M) fits either way.
        assert round((count - bn) / 1e6, decimals) == float(paper)
    else:
        assert round(count / 1e6, decimals) == float(paper)


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


def test_shortcut_a_on_a_pre_activation_bottleneck_is_refused_not_ignored():
    with pytest.raises(
        ConfigError,
        match="model.shortcut=A: pre-activation bottleneck ResNets \\(depth 164\\) use "
        "projection shortcuts; use model.shortcut=B",
    ):
        build(164, 10, variant="preact", shortcut="A")
    # auto is B on every bottleneck depth: the shallowest (29) builds in a fraction of 164's time.
    assert count_params(build(29, 10, variant="preact", block="bottleneck", shortcut="auto")) == count_params(
        build(29, 10, variant="preact", block="bottleneck", shortcut="B")
    )


def test_auto_variant_follows_image_size():
    assert models.resolve_layout(20, (32, 32, 3)).variant == "cifar"
    assert models.resolve_layout(50, (224, 224, 3)).variant == "imagenet"
    assert models.resolve_layout(164, (32, 32, 3), "preact").block == "bottleneck"
    assert models.resolve_layout(110, (32, 32, 3), "preact").block == "basic"


@pytest.mark.parametrize("mode,fan", [("fan_out", 3 * 3 * 32), ("fan_in", 3 * 3 * 16)])
def test_he_initialisation_uses_the_chosen_fan(mode, fan):
    """N(0, 2/fan) on a layer whose fans differ (3x3, 16 -> 32: fan_in 144, fan_out 288), so the
    wrong mode is 41% off; the estimate's own spread over 4,608 weights is about 1%."""
    keras.backend.clear_session()
    model = build(20, 10, variant="cifar", init_mode=mode)
    kernel = model.get_layer("stage2_block1_conv1").kernel.numpy()
    assert kernel.shape == (3, 3, 16, 32)
    expected = np.sqrt(2.0 / fan)
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


@pytest.mark.parametrize(
    "variant,depth,block",
    [
        ("cifar", 8, "auto"),
        ("preact", 8, "basic"),
        ("preact", 11, "bottleneck"),
        ("imagenet", 18, "auto"),
        ("imagenet", 50, "auto"),
    ],
)
def test_every_layer_has_a_deterministic_name(variant, depth, block):
    # Fine-tuning matches layers by name: no Keras auto-numbered names (re_lu_12) may appear.
    keras.backend.clear_session()
    model = build(depth, 10, (64, 64, 3), variant=variant, block=block)
    names = [layer.name for layer in model.layers]
    assert len(names) == len(set(names))
    assert not [n for n in names if n.split("_")[-1].isdigit() and not n.startswith(("stage", "stem"))]
    # A second build in the same session (Keras' name counters have moved on): the same names,
    # in the same order, and so the same weight paths (what a checkpoint's layers are matched by).
    again = build(depth, 10, (64, 64, 3), variant=variant, block=block)
    assert [layer.name for layer in again.layers] == names
    assert [w.path for w in again.weights] == [w.path for w in model.weights]
    assert len({w.path for w in model.weights}) == len(model.weights)


def test_fused_batch_norm_matches_keras_batch_norm():
    import tensorflow as tf

    from resnet_train.models.layers import FusedBatchNorm

    x = tf.constant(np.random.default_rng(0).normal(2, 3, (16, 8, 8, 5)).astype(np.float32))
    ours = FusedBatchNorm(momentum=0.9, epsilon=1e-5)
    theirs = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)
    for layer in (ours, theirs):
        layer.build(x.shape)
        layer.gamma.assign(np.linspace(0.5, 2, 5))
        layer.beta.assign(np.linspace(-1, 1, 5))
    # Random weights on y and y^2: sum(y) and sum(y^2) alone are constant under batch norm, their
    # input gradient zero up to rounding, a comparison that could not fail.
    r1, r2 = np.random.default_rng(1).normal(0, 1, (2, *x.shape)).astype(np.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y_ours, y_theirs = ours(x, training=True), theirs(x, training=True)
        loss_ours, loss_theirs = (tf.reduce_sum(y * r1 + 0.3 * r2 * y * y) for y in (y_ours, y_theirs))
    # Bounds: 3-5x the largest difference over inputs of seeds 0-4 with TF_ENABLE_ONEDNN_OPTS=0 and =1
    # (scripts/threshold_spread.py) on an AMD EPYC Zen 4 (2026-12-02, re-measured 2026-12-08: the same
    # maxima but gamma's 4.2e-6) and a Zen 3 (AVX2 only; Zen 4's figure first where they differ):
    # outputs 2.9e-6; gradients 4.2e-7 / 4.4e-7 (x), 3.0e-6 / 4.2e-6
    # (gamma), 8.9e-7 / 9.2e-7 (beta) of their largest value; moving mean 1.9e-7; moving variance
    # 4.7e-7 relative; inference 1.9e-6.
    np.testing.assert_allclose(y_ours, y_theirs, rtol=0, atol=1e-5)
    for a, b in zip(
        tape.gradient(loss_ours, [x, ours.gamma, ours.beta]), tape.gradient(loss_theirs, [x, theirs.gamma, theirs.beta])
    ):
        np.testing.assert_allclose(a, b, rtol=0, atol=1.5e-5 * np.abs(b).max())
    np.testing.assert_allclose(ours.moving_mean.numpy(), theirs.moving_mean.numpy(), atol=1e-6)
    # The fused kernel tracks the unbiased batch variance: n / (n - 1) with n = 16 x 8 x 8.
    n = 16 * 8 * 8
    expected = 0.9 * 1.0 + 0.1 * (theirs.moving_variance.numpy() - 0.9) / 0.1 * n / (n - 1)
    np.testing.assert_allclose(ours.moving_variance.numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(
        ours(x, training=False),
        (x - ours.moving_mean) / np.sqrt(ours.moving_variance + 1e-5) * ours.gamma + ours.beta,
        rtol=0,
        atol=1e-5,
    )
    assert isinstance(build(8, 10).get_layer("stem_bn"), FusedBatchNorm)
    assert not isinstance(build(8, 10, sync_bn=True).get_layer("stem_bn"), FusedBatchNorm)


def test_standardize_equals_keras_normalization_to_the_bit():
    import tensorflow as tf

    from resnet_train.models.layers import Standardize

    rng = np.random.default_rng(0)
    for channels in (1, 3, 5):
        mean = rng.uniform(0, 255, channels).tolist()
        std = [*rng.uniform(1e-9, 100, channels - 1).tolist(), 1e-9]  # one below keras' epsilon
        x = tf.constant(rng.uniform(0, 255, (4, 6, 6, channels)).astype(np.float32))
        theirs = keras.layers.Normalization(mean=mean, variance=[s * s for s in std], dtype="float32")
        ours = Standardize(mean, std, dtype="float32")
        np.testing.assert_array_equal(ours(x), theirs(x))
        assert not ours.weights  # as before: nothing for a checkpoint to hold


def test_a_checkpoint_of_a_model_built_with_keras_normalization_restores(tmp_path, monkeypatch):
    """Runs trained before Standardize replaced keras' Normalization keep resuming and loading."""
    import tensorflow as tf

    from resnet_train.models import resnet

    def keras_normalization(mean, std, dtype, name):
        return keras.layers.Normalization(mean=list(mean), variance=[s * s for s in std], dtype=dtype, name=name)

    with monkeypatch.context() as patch:
        patch.setattr(resnet, "Standardize", keras_normalization)
        old = build(8, 10, mean=(120.0, 115.0, 100.0), std=(60.0, 61.0, 62.0))
    assert isinstance(old.get_layer("normalize"), keras.layers.Normalization)
    for v in old.weights:
        v.assign(np.random.default_rng(len(v.path)).normal(size=v.shape).astype(np.float32))
    path = tf.train.Checkpoint(model=old).save(str(tmp_path / "ckpt"))
    new = build(8, 10, mean=(120.0, 115.0, 100.0), std=(60.0, 61.0, 62.0))
    tf.train.Checkpoint(model=new).restore(path).assert_consumed()
    x = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    np.testing.assert_array_equal(new(x, training=False), old(x, training=False))


def _probe(model, names, x, training=False):
    """The outputs of the named layers for input x."""
    outputs = keras.Model(model.input, [model.get_layer(n).output for n in names])(x, training=training)
    return [np.asarray(o) for o in outputs]


def _centre_tap(layer, channels):
    """Turns a conv into 'copy the input channels at the kernel's centre' (identity on `channels`)."""
    kh, kw, c_in, c_out = layer.kernel.shape
    kernel = np.zeros((kh, kw, c_in, c_out), np.float32)
    for c in range(channels):
        kernel[kh // 2, kw // 2, c, c] = 1.0
    layer.kernel.assign(kernel)


@pytest.mark.parametrize("side", [32, 33])
def test_strided_conv_is_centred_on_the_pixels_the_shortcut_keeps(side):
    # The branch of a strided block must look at the pixels its shortcut carries: option A keeps
    # x[::2, ::2], so a 3x3/2 conv must be centred on input 2i (symmetric padding 1). TF's "same"
    # padding pads (0, 1) on an even-sized map and centres it on 2i + 1: the residual would add
    # features of a pixel next to the shortcut's. (Odd sizes were already symmetric.)
    keras.backend.clear_session()
    model = build(8, 10, (side, side, 3), variant="cifar", shortcut="A")
    _centre_tap(model.get_layer("stage2_block1_conv1"), 16)
    x = np.random.default_rng(0).integers(0, 256, (2, side, side, 3)).astype("float32")
    block_in, conv, shortcut = _probe(model, ["stage1_block1_out", "stage2_block1_conv1", "stage2_block1_pad"], x)
    np.testing.assert_array_equal(conv[..., :16], block_in[:, ::2, ::2, :])
    np.testing.assert_array_equal(shortcut[..., 8:24], block_in[:, ::2, ::2, :])  # channels 8..23: A's zero-padding


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("side, stride", [(32, 2), (33, 2), (7, 3)])
def test_shortcut_a_keeps_every_strided_pixel_and_its_gradient_to_the_bit(side, stride, dtype):
    # Option A subsamples with a 1x1 pool (oneDNN's kernel, faster than a strided slice): its
    # values and gradient must be those of x[:, ::s, ::s, :] with the new channels zero, exactly.
    import tensorflow as tf

    x = tf.cast(np.random.default_rng(0).normal(0, 3, (2, side, side, 6)), dtype)
    weights = tf.cast(np.random.default_rng(1).normal(0, 1, (2, -(-side // stride), -(-side // stride), 10)), dtype)
    shortcut = models.ZeroPadShortcut(10, stride, dtype=dtype)  # compute in the dtype given
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        ours = shortcut(x)
        sliced = tf.pad(x[:, ::stride, ::stride, :], [[0, 0], [0, 0], [0, 0], [2, 2]])
        losses = [tf.reduce_sum(y * weights) for y in (ours, sliced)]
    assert ours.dtype == x.dtype and ours.shape == sliced.shape
    np.testing.assert_array_equal(np.asarray(ours, np.float32), np.asarray(sliced, np.float32))
    grads = [np.asarray(tape.gradient(loss, x), np.float32) for loss in losses]
    np.testing.assert_array_equal(*grads)
    assert np.count_nonzero(grads[0]) == 2 * 6 * (-(-side // stride)) ** 2  # the kept pixels only


@pytest.mark.parametrize("side", [64, 65])
def test_imagenet_stem_and_projection_are_centred_like_the_papers(side):
    # torchvision / fb.resnet.torch: 7x7/2 conv padded 3, 3x3/2 max-pool padded 1, 1x1/2 projection.
    keras.backend.clear_session()
    model = build(18, 10, (side, side, 3), variant="imagenet")
    _centre_tap(model.get_layer("stem_conv"), 3)
    _centre_tap(model.get_layer("stage2_block1_conv1"), 64)
    _centre_tap(model.get_layer("stage2_block1_proj"), 64)
    x = np.random.default_rng(0).integers(0, 256, (2, side, side, 3)).astype("float32")
    normalized, stem, relu, pool, block_in, conv, proj = _probe(
        model,
        [
            "normalize",
            "stem_conv",
            "stem_relu",
            "stem_pool",
            "stage1_block2_out",
            "stage2_block1_conv1",
            "stage2_block1_proj",
        ],
        x,
    )
    np.testing.assert_allclose(stem[..., :3], normalized[:, ::2, ::2, :], atol=1e-6)
    # Max-pool 3x3/2 over the map padded by 1 on every side (-inf padding, as torch's; our zero
    # padding is the same on a post-ReLU input).
    padded = np.pad(relu, [(0, 0), (1, 1), (1, 1), (0, 0)], constant_values=-np.inf)
    n = pool.shape[1]
    expected = np.stack(
        [
            np.stack([padded[:, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].max(axis=(1, 2)) for j in range(n)], 1)
            for i in range(n)
        ],
        1,
    )
    np.testing.assert_array_equal(pool, expected)
    np.testing.assert_array_equal(proj[..., :64], block_in[:, ::2, ::2, :])  # 64 -> 128: the rest are zeros
    np.testing.assert_array_equal(conv, proj)  # the 3x3/2 branch and the 1x1/2 projection: same pixels


@pytest.mark.parametrize(
    "variant,depth,shortcut,last",
    [("cifar", 14, "A", "bn2"), ("cifar", 8, "B", "bn2"), ("imagenet", 18, "B", "bn2"), ("imagenet", 50, "B", "bn3")],
)
def test_zero_init_residual_starts_every_block_as_its_shortcut(variant, depth, shortcut, last):
    keras.backend.clear_session()
    side = 32
    model = build(depth, 10, (side, side, 3), variant=variant, shortcut=shortcut, zero_init_residual=True)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    blocks = sorted(
        {layer.name.rsplit("_", 1)[0] for layer in model.layers if layer.name.endswith("_add")},
        key=lambda b: [int(d) for d in b.replace("stage", "").split("_block")],
    )
    assert {bn.name for bn in bns if not np.any(bn.gamma.numpy())} == {f"{b}_{last}" for b in blocks}
    assert all(np.all(bn.gamma.numpy() == 1) for bn in bns if bn.name not in {f"{b}_{last}" for b in blocks})
    assert not any(np.any(bn.beta.numpy()) for bn in bns)
    # Each block's output is relu(shortcut): its input itself (identity), or option A's / the
    # projection's output -- in inference and in training mode (gamma = beta = 0 whatever the statistics).
    x = np.random.default_rng(0).integers(0, 256, (2, side, side, 3)).astype("float32")
    previous = "stem_pool" if variant == "imagenet" else "stem_relu"
    names = [previous] + [f"{b}_out" for b in blocks]
    for b in blocks:
        for suffix in ("_pad", "_proj_bn"):
            if any(layer.name == b + suffix for layer in model.layers):
                names.append(b + suffix)
    for training in (False, True):
        values = dict(zip(names, _probe(model, names, x, training)))
        for b in blocks:
            shortcut_value = next((values[b + s] for s in ("_pad", "_proj_bn") if b + s in values), values[previous])
            np.testing.assert_array_equal(values[f"{b}_out"], np.maximum(shortcut_value, 0))
            previous = f"{b}_out"
        previous = names[0]
    # Off by default: every gamma starts at 1.
    keras.backend.clear_session()
    default = build(depth, 10, (side, side, 3), variant=variant, shortcut=shortcut)
    assert all(
        np.all(layer.gamma.numpy() == 1)
        for layer in default.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    )


def test_zero_init_residual_refuses_pre_activation():
    # A pre-activation branch ends in a conv: there is no batch norm to start at zero.
    with pytest.raises(ConfigError, match="zero_init_residual.*post-activation"):
        build(20, 10, variant="preact", zero_init_residual=True)


def test_one_factory_turns_a_config_and_the_datas_description_into_the_model():
    """models.from_config: training's and the tools' model from cfg.model and a DatasetInfo; the
    tools override what is training-only (zero-init of the residual branches' last BN)."""
    from helpers import compose

    from resnet_train.data import synthetic

    info = synthetic.load(image_shape=(16, 16, 3), num_classes=7, train_size=8, test_size=8).info
    cfg = compose("depth=14", "model.zero_init_residual=true")
    model = models.from_config(cfg.model, info)
    assert model.name == "cifar_resnet14" and model.output_shape == (None, 7)
    assert count_params(model) == count_params(build(14, 7, (16, 16, 3)))
    last_bn = model.get_layer(f"{models.names.block(1, 1)}_bn2")
    assert not np.any(last_bn.gamma.numpy())  # zero-init from the config
    inference = models.from_config(cfg.model, info, zero_init_residual=False)
    assert np.all(inference.get_layer(f"{models.names.block(1, 1)}_bn2").gamma.numpy() == 1.0)


def test_threshold_spread_measures_the_figures_the_tests_bound(capsys):
    """scripts/threshold_spread.py, which the tolerances' margins come from, measures the same
    comparison as test_fused_batch_norm_matches_keras_batch_norm (seed 0 is that test's input)."""
    import json

    import threshold_spread

    assert threshold_spread.main(["--only", "fused_batch_norm", "--seeds", "0"]) == 0
    report = json.loads(capsys.readouterr().out)
    figures = report["figures"]["fused_batch_norm"]
    assert report["seeds"] == [0] and report["cpu"]
    assert 0 <= figures["output_abs"][0] < 1e-5 and figures["output_abs_range"] == figures["output_abs"] * 2
    assert all(0 <= figures[f"grad_{name}_rel_to_max"][0] < 1.5e-5 for name in ("x", "gamma", "beta"))
