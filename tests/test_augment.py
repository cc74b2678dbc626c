"""Each augmentation does what it says: shapes, value ranges, flips flip, mixed labels sum to 1,
the same seed gives the same result, and evaluation applies none of it."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from resnet_train.data import image_ops, pipeline, synthetic
from resnet_train.data.augment import (
    autoaugment,
    cutmix,
    cutout,
    inception_crop,
    make_augment,
    make_batch_augment,
    mixup,
    pad_and_crop,
    randaugment,
)
from resnet_train.errors import ConfigError

RNG = np.random.default_rng(0)
IMAGE = tf.constant(RNG.integers(0, 256, (24, 24, 3)).astype(np.uint8))
# Reddish: its grey (0.299 R + 0.587 G + 0.114 B) is far from its channels' plain mean, where the
# uniform IMAGE's is not.
TINTED = np.random.default_rng(1).integers([150, 0, 50], [256, 100, 150], (24, 24, 3)).astype(np.uint8)


def seed(i):
    return tf.constant([7, i], tf.int64)


def test_flip_really_flips_and_sometimes_not():
    flip = make_augment({"crop": "none", "horizontal_flip": True})
    outs = [flip(IMAGE, seed(i)).numpy() for i in range(20)]
    mirrored = sum(np.array_equal(o, IMAGE.numpy()[:, ::-1]) for o in outs)
    unchanged = sum(np.array_equal(o, IMAGE.numpy()) for o in outs)
    assert mirrored + unchanged == 20 and mirrored > 3 and unchanged > 3


def test_pad_and_crop_is_a_shifted_window_of_the_zero_padded_image():
    padded = np.pad(IMAGE.numpy(), [(4, 4), (4, 4), (0, 0)])
    for i in range(5):
        out = pad_and_crop(IMAGE, 4, seed(i)).numpy()
        assert out.shape == (24, 24, 3)
        assert any(np.array_equal(out, padded[dy : dy + 24, dx : dx + 24]) for dy in range(9) for dx in range(9))


def test_inception_crop_resizes_back_and_varies():
    outs = [inception_crop(IMAGE, seed(i)).numpy() for i in range(4)]
    assert all(o.shape == (24, 24, 3) and o.dtype == np.uint8 for o in outs)
    assert not all(np.array_equal(outs[0], o) for o in outs[1:])
    big = inception_crop(tf.zeros((300, 200, 3), tf.uint8), seed(0), out_size=(224, 224))
    assert big.shape == (224, 224, 3)


def test_cutout_fills_one_square_with_the_mean():
    out = cutout(IMAGE, 6, [10.0, 20.0, 30.0], seed(3)).numpy()
    changed = np.any(out != IMAGE.numpy(), axis=-1)
    filled = np.all(out == [10, 20, 30], axis=-1)
    assert changed.sum() <= 36 and filled.sum() >= 9  # a 6x6 square, possibly clipped by the border
    rows, cols = np.nonzero(filled)
    assert rows.max() - rows.min() < 6 and cols.max() - cols.min() < 6
    assert np.array_equal(out[~filled], IMAGE.numpy()[~filled])


@pytest.mark.parametrize("name", sorted(image_ops.OPS))
def test_every_op_keeps_shape_and_dtype(name):
    out = image_ops.OPS[name](IMAGE, tf.constant(0.7), seed(1))
    assert out.shape == (24, 24, 3) and out.dtype == tf.uint8


@pytest.mark.parametrize(
    "name", ["Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY", "Solarize", "Posterize", "Identity"]
)
def test_zero_strength_changes_nothing(name):
    out = image_ops.OPS[name](IMAGE, tf.constant(0.0), seed(2)).numpy()
    np.testing.assert_allclose(out.astype(int), IMAGE.numpy().astype(int), atol=1)


@pytest.mark.parametrize("name", ["Brightness", "Color", "Contrast", "Sharpness"])
def test_enhance_ops_are_unsigned_with_the_papers_factor(name):
    """factor = 0.1 + 1.8 * strength (AutoAugment's table, TF's enhance_level_to_arg): strength 0.5
    is factor 1 (no change), 0 is 0.1 (nearly the degenerate image); no random sign."""
    op = image_ops.OPS[name]
    same = op(IMAGE, tf.constant(0.5), seed(2)).numpy()
    np.testing.assert_allclose(same.astype(int), IMAGE.numpy().astype(int), atol=1)
    for strength in (0.0, 0.3, 0.9):
        outs = [op(IMAGE, tf.constant(strength), seed(i)).numpy() for i in range(6)]
        assert all(np.array_equal(outs[0], o) for o in outs[1:])  # the seed plays no part
        assert not np.array_equal(outs[0], IMAGE.numpy())


def pil_style_blend(degenerate, image, factor):
    """PIL's ImageEnhance: degenerate + factor * (image - degenerate), clipped to uint8 (rounded)."""
    x = image.astype(np.float64)
    return np.clip(np.round(degenerate + factor * (x - degenerate)), 0, 255)


def luma(image):
    """ITU-R 601 grey (PIL's convert("L")), one channel."""
    return image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


@pytest.mark.parametrize("magnitude", [0, 3, 7, 9])
def test_color_and_contrast_follow_their_formula(magnitude):
    x = IMAGE.numpy()
    factor = 0.1 + 1.8 * magnitude / 10  # AutoAugment's level / RandAugment's M, of 10
    strength = tf.constant(magnitude / 10)
    grey = np.round(luma(x))[..., None]
    got = image_ops.color(IMAGE, strength, seed(0)).numpy()
    np.testing.assert_allclose(got, pil_style_blend(grey, x, factor), atol=1)
    theirs = np.asarray(ImageEnhance.Color(Image.fromarray(x)).enhance(factor))  # PIL truncates
    np.testing.assert_allclose(got, theirs, atol=2)
    got = image_ops.contrast(IMAGE, strength, seed(0)).numpy()
    np.testing.assert_allclose(got, pil_style_blend(np.round(luma(x)).mean(), x, factor), atol=1)
    got = image_ops.brightness(IMAGE, strength, seed(0)).numpy()
    np.testing.assert_allclose(got, pil_style_blend(0.0, x, factor), atol=1)


def test_pixel_ops_do_what_their_names_say():
    x = IMAGE.numpy()
    np.testing.assert_array_equal(image_ops.invert(IMAGE, 0.0, seed(0)).numpy(), 255 - x)
    np.testing.assert_array_equal(image_ops.solarize(IMAGE, 1.0, seed(0)).numpy(), 255 - x)
    assert np.all(image_ops.posterize(IMAGE, tf.constant(1.0), seed(0)).numpy() % 16 == 0)  # 4 bits kept
    dull = tf.constant((x // 4 + 100).astype(np.uint8))
    stretched = image_ops.autocontrast(dull, 0.0, seed(0)).numpy()
    assert stretched.min() == 0 and stretched.max() == 255
    faded = image_ops.color(IMAGE, tf.constant(0.0), tf.constant([0, 3], tf.int64)).numpy()
    assert faded.dtype == np.uint8  # factor 0.1: 90% of the way to grey
    spread = faded.astype(int).max(-1) - faded.astype(int).min(-1)
    original = x.astype(int).max(-1) - x.astype(int).min(-1)
    assert np.all(spread <= np.ceil(0.1 * original) + 1) and original.mean() > 50
    grey = luma(x)[..., None]  # each pixel 90% of the way to its own grey
    assert np.all(np.abs(faded - grey) <= 0.1 * np.abs(x - grey) + 1.5)


@pytest.mark.parametrize(
    "name, enhancer",
    [
        ("Brightness", ImageEnhance.Brightness),
        ("Color", ImageEnhance.Color),
        ("Contrast", ImageEnhance.Contrast),
        ("Sharpness", ImageEnhance.Sharpness),
    ],
)
@pytest.mark.parametrize("magnitude", [0, 3, 9])
def test_enhance_ops_are_pils_image_enhance(name, enhancer, magnitude):
    """The four enhance ops against PIL's ImageEnhance with the paper's factor 0.1 + 1.8 * M / 10
    (degenerate images: black, grey, the mean grey, PIL's SMOOTH filter with the border kept).
    PIL blends with 8-bit degenerate images and truncates; we blend float ones and round: the
    rounding of the result (< 1) plus that of the degenerate image (< 1, times |1 - factor| <= 0.9)
    keeps every pixel within 2 of PIL's."""
    factor = 0.1 + 1.8 * magnitude / 10
    for x in (IMAGE.numpy(), TINTED):
        ours = image_ops.OPS[name](tf.constant(x), tf.constant(magnitude / 10), seed(0)).numpy().astype(int)
        theirs = np.asarray(enhancer(Image.fromarray(x)).enhance(factor)).astype(int)
        assert np.abs(ours - theirs).max() <= 2, np.abs(ours - theirs).max()
        assert np.abs(theirs - x.astype(int)).max() > 3 * 2  # the op moves pixels well beyond that margin


@pytest.mark.parametrize("strength", [0.0, 0.3, 0.7, 1.0])
def test_pixel_ops_are_pils_image_ops(strength):
    """Solarize (threshold 256 -> 0), Posterize (8 -> 4 bits), Invert and AutoContrast against
    PIL's ImageOps (AutoContrast: PIL truncates its lookup table, we round: within 1)."""
    x = IMAGE.numpy()
    pil = Image.fromarray(x)
    s = tf.constant(strength)
    np.testing.assert_array_equal(
        image_ops.solarize(IMAGE, s, seed(0)).numpy(), np.asarray(ImageOps.solarize(pil, int(256 - 256 * strength)))
    )
    np.testing.assert_array_equal(
        image_ops.posterize(IMAGE, s, seed(0)).numpy(), np.asarray(ImageOps.posterize(pil, 8 - round(4 * strength)))
    )
    np.testing.assert_array_equal(image_ops.invert(IMAGE, s, seed(0)).numpy(), np.asarray(ImageOps.invert(pil)))
    dull = (x // 4 + 100).astype(np.uint8)  # 100..163: stretched to 0..255 per channel
    ours = image_ops.autocontrast(tf.constant(dull), s, seed(0)).numpy().astype(int)
    theirs = np.asarray(ImageOps.autocontrast(Image.fromarray(dull))).astype(int)
    assert np.abs(ours - theirs).max() <= 1 and np.abs(theirs - dull).max() > 50


def bilinear(image, to_input):
    """The image resampled: output pixel (x, y) takes the bilinear sample at to_input(x, y) (pixel
    centres at integers), with the grey FILL for what lies outside the image."""
    h, w, _ = image.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    xi, yi = to_input(xs, ys)
    x0, y0 = np.floor(xi), np.floor(yi)
    fx, fy = (xi - x0)[..., None], (yi - y0)[..., None]

    def at(y, x):
        inside = ((y >= 0) & (y < h) & (x >= 0) & (x < w))[..., None]
        return np.where(
            inside, image[np.clip(y, 0, h - 1).astype(int), np.clip(x, 0, w - 1).astype(int)], image_ops.FILL
        ).astype(np.float64)

    return (
        (1 - fy) * (1 - fx) * at(y0, x0)
        + (1 - fy) * fx * at(y0, x0 + 1)
        + fy * (1 - fx) * at(y0 + 1, x0)
        + fy * fx * at(y0 + 1, x0 + 1)
    )


def rotation(degrees, h, w):
    """About the image's centre."""
    cy, cx, t = (h - 1) / 2, (w - 1) / 2, np.radians(degrees)
    return lambda x, y: (
        cx + np.cos(t) * (x - cx) - np.sin(t) * (y - cy),
        cy + np.sin(t) * (x - cx) + np.cos(t) * (y - cy),
    )


GEOMETRY = {  # op: (sign, strength, h, w) -> where an output pixel comes from, at the papers' maxima
    "Rotate": lambda sign, s, h, w: rotation(sign * 30 * s, h, w),
    "ShearX": lambda sign, s, h, w: lambda x, y: (x + sign * 0.3 * s * y, y),
    "ShearY": lambda sign, s, h, w: lambda x, y: (x, y + sign * 0.3 * s * x),
    "TranslateX": lambda sign, s, h, w: lambda x, y: (x + sign * 0.45 * s * w, y),
    "TranslateY": lambda sign, s, h, w: lambda x, y: (x, y + sign * 0.45 * s * h),
}


@pytest.mark.parametrize("name", sorted(GEOMETRY))
def test_geometric_ops_move_pixels_as_defined(name):
    """Rotate 30 deg about the centre, shear 0.3, translate 45% of the side, each times the strength
    with a random sign, bilinear, grey fill: every pixel is the resampling computed here, cast to
    uint8 as TF's kernel does (truncated: 0 to 1 below it, give or take float32's rounding of the
    coordinates, < 1e-3), for one sign and far from it for the other; both signs occur."""
    x = IMAGE.numpy()
    h, w, _ = x.shape
    signs = set()
    for i in range(8):
        strength = (0.4, 1.0)[i % 2]
        ours = image_ops.OPS[name](IMAGE, tf.constant(strength), seed(i)).numpy().astype(float)
        below = {sign: bilinear(x, GEOMETRY[name](sign, strength, h, w)) - ours for sign in (1, -1)}
        fits = [sign for sign, d in below.items() if d.min() >= -1e-3 and d.max() <= 1 + 1e-3]
        assert len(fits) == 1, (i, {sign: (d.min(), d.max()) for sign, d in below.items()})
        assert np.abs(below[-fits[0]]).max() > 20
        signs.add(fits[0])
    assert signs == {1, -1}


def test_autoaugment_levels_are_tenths(monkeypatch):
    """A policy step (Color, p=1, level 7) is factor 0.1 + 1.8 * 7 / 10 = 1.36, as in the authors' code."""
    from resnet_train.data import augment

    monkeypatch.setitem(augment.POLICIES, "one", [[("Color", 1.0, 7)]])
    out = autoaugment(IMAGE, "one", seed(4)).numpy()
    x = IMAGE.numpy()
    np.testing.assert_allclose(out, pil_style_blend(np.round(luma(x))[..., None], x, 1.36), atol=1)


def test_equalize_matches_pil():
    ours = image_ops.equalize(IMAGE, 0.0, seed(0)).numpy()
    theirs = np.asarray(ImageOps.equalize(Image.fromarray(IMAGE.numpy())))
    np.testing.assert_array_equal(ours, theirs)


def test_rotate_keeps_the_centre_and_moves_the_rest():
    square = np.zeros((25, 25, 3), np.uint8)
    square[12, 12] = 255
    square[12, 20] = 200
    out = image_ops.rotate(tf.constant(square), tf.constant(1.0), seed(0)).numpy()  # 30 degrees
    assert out[12, 12, 0] > 200 and out[12, 20, 0] < 100


def test_randaugment_and_autoaugment_are_deterministic_per_seed_and_varied():
    for policy in (
        lambda s: randaugment(IMAGE, 2, 9, s),
        lambda s: autoaugment(IMAGE, "cifar", s),
        lambda s: autoaugment(IMAGE, "imagenet", s),
    ):
        a = [policy(seed(i)).numpy() for i in range(8)]
        b = [policy(seed(i)).numpy() for i in range(8)]
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
        assert len({o.tobytes() for o in a}) >= 4  # different images get different ops


def test_mixup_labels_sum_to_one_and_images_are_blends():
    images = tf.constant(RNG.integers(0, 256, (8, 6, 6, 3)).astype(np.uint8))
    labels = tf.one_hot(np.arange(8), 8)  # one class per image: the labels name each partner
    mixed, soft = mixup(images, labels, 1.0, seed(5))
    soft, x = soft.numpy(), images.numpy().astype(np.float32)
    np.testing.assert_allclose(soft.sum(-1), 1.0, rtol=1e-6)
    assert mixed.dtype == tf.uint8 and mixed.shape == images.shape
    # Every image keeps lam of itself (1 if it is its own partner): lam * 1 + (1 - lam) * 0 is
    # lam exactly, the float32 lambda the batch drew.
    lam = soft[np.arange(8), np.arange(8)].min()
    assert lam.dtype == np.float32 and 0.1 < lam < 0.9, lam  # a real blend with this seed
    partners = [int(np.argmax(np.where(np.arange(8) == i, 0, row))) if row[i] < 1 else i for i, row in enumerate(soft)]
    assert sorted(partners) == list(range(8)) and partners != list(range(8))  # a permutation
    # lam * a + (1 - lam) * b in float32, as the code computes it, rounded half to even (tf.round,
    # np.round) back to uint8: the same numbers, every pixel.
    expected = np.round(lam * x + (np.float32(1) - lam) * x[partners])
    assert expected.dtype == np.float32 and expected.min() >= 0 and expected.max() <= 255
    np.testing.assert_array_equal(mixed.numpy(), expected.astype(np.uint8))
    for i, j in enumerate(partners):
        np.testing.assert_allclose(soft[i, j] if j != i else 1.0, (1 - lam) if j != i else 1.0, rtol=1e-5)


def test_cutmix_label_weights_are_the_pasted_area():
    images = tf.constant(RNG.integers(0, 256, (8, 16, 16, 3)).astype(np.uint8))
    labels = tf.one_hot(np.arange(8), 8)
    for i in range(5):
        mixed, soft = cutmix(images, labels, 1.0, seed(i))
        np.testing.assert_allclose(soft.numpy().sum(-1), 1.0, rtol=1e-6)
        own = np.all(mixed.numpy() == images.numpy(), axis=-1).mean(axis=(1, 2))
        kept = soft.numpy()[np.arange(8), np.arange(8)]
        moved = kept < 1.0
        np.testing.assert_allclose(own[moved], kept[moved], atol=0.02)


def test_batch_augment_gives_soft_labels_and_eval_applies_nothing():
    splits = synthetic.load(image_shape=(8, 8, 3), num_classes=4, train_size=32, test_size=12)
    cfg = {
        "crop": "pad",
        "padding": 2,
        "horizontal_flip": True,
        "cutout": 3,
        "mixup_alpha": 1.0,
        "cutmix_alpha": 1.0,
        "autoaugment": "cifar",
    }
    train = pipeline.train_batches(
        splits.train,
        32,
        8,
        seed=0,
        epoch=0,
        augment=make_augment(cfg, (8, 8, 3)),
        batch_augment=make_batch_augment(cfg, 4),
    )
    images, labels = next(iter(train))
    assert images.dtype == tf.uint8 and labels.dtype == tf.float32 and labels.shape == (8, 4)
    np.testing.assert_allclose(labels.numpy().sum(-1), 1.0, rtol=1e-6)
    raw = np.stack([x for x, _ in splits.test.as_numpy_iterator()])
    evaluated = np.concatenate([x.numpy() for x, _, _ in pipeline.eval_batches(splits.test, 5)])
    np.testing.assert_array_equal(evaluated, raw)


@pytest.mark.parametrize(
    "cfg",
    [
        {"crop": "zoom"},
        {"autoaugment": "svhn"},
        {"cutout": -1},
        {"autoaugment": "cifar", "randaugment": {"num_ops": 2}},
    ],
)
def test_bad_augment_configs_are_config_errors(cfg):
    with pytest.raises(ConfigError):
        make_augment(cfg)


def test_label_smoothing_in_the_loss():
    import keras

    from resnet_train.models import build
    from resnet_train.training.trainer import Trainer

    keras.backend.clear_session()
    model = build(8, 4, (8, 8, 3), variant="cifar")
    trainer = Trainer(
        model, keras.optimizers.SGD(0.1), tf.distribute.get_strategy(), 2, num_classes=4, label_smoothing=0.1
    )
    logits = tf.constant([[2.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    got = trainer.loss(tf.constant([0, 1], tf.int64), logits).numpy()
    target = np.full((2, 4), 0.025) + 0.9 * np.eye(4)[[0, 1]]
    expected = -(target * tf.nn.log_softmax(logits).numpy()).sum(-1)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_gallery_script_writes_a_png(tmp_path, monkeypatch, cli):
    out = tmp_path / "gallery.png"
    monkeypatch.chdir(tmp_path)
    done = cli(
        "augment=randaugment",
        "augment.mixup_alpha=0.5",
        "images=3",
        "versions=2",
        f"out={out}",
        entry="resnet-show-augment",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = np.asarray(Image.open(out))
    assert image.shape[0] > 300 and image.shape[1] > 300
    assert not list(tmp_path.glob("outputs"))  # no run directory for a gallery
