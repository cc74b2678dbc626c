"""Per-image operations of AutoAugment and RandAugment, on uint8 (H, W, C) tensors.

Our own rather than keras.layers.RandAugment: that layer draws one op choice for the whole batch,
computes every op on the whole batch and selects with `where`, and draws from a layer-held
SeedGenerator. Here each image gets its own ops, only the chosen op runs (tf.switch_case), and all
randomness comes from a stateless seed, so a resumed run augments exactly as the uninterrupted one.

Every op takes (image, strength, seed) with strength in [0, 1] (1: the papers' maximum): rotate
30 deg, shear 0.3, translate 45% of the side (150 px of 331) -- these with a random sign, 0: no
change --, solarize threshold 256..0, posterize 8..4 bits. The enhance ops (Color, Contrast,
Brightness, Sharpness) are unsigned, as in the AutoAugment paper's table and the authors' TF code
(tensorflow/tpu efficientnet/autoaugment.py `enhance_level_to_arg`, used by AutoAugment and
RandAugment alike): factor = 0.1 + 1.8 * strength, i.e. 0.1 + 1.8 * magnitude / 10, so 0.5
changes nothing, below it the image fades towards the degenerate one (grey, black, flat, blurred),
above it moves away from it. (torchvision's signed 1 +/- 0.9 * strength is another reading.)
"""

from __future__ import annotations

import math

import tensorflow as tf

FILL = 128  # grey, for pixels that geometric ops move in from outside the image


def _sign(seed):
    return tf.where(tf.random.stateless_uniform([], seed) < 0.5, -1.0, 1.0)


def _to_uint8(x):
    return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)


def _blend(degenerate, image, factor):
    """factor 0: the degenerate image, 1: the image, >1: extrapolated away from the degenerate."""
    image = tf.cast(image, tf.float32)
    return _to_uint8(degenerate + factor * (image - degenerate))


def _transform(image, matrix):
    """Projective transform mapping output to input coordinates (8 numbers)."""
    shape = tf.shape(image)
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None],
        transforms=tf.reshape(tf.cast(matrix, tf.float32), [1, 8]),
        output_shape=shape[:2],
        fill_value=float(FILL),
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )
    return out[0]


# ---- ops: (image, strength, seed) -> image -------------------------------------------------
def identity(image, strength, seed):
    return image


def rotate(image, strength, seed):
    angle = _sign(seed) * strength * 30.0 * math.pi / 180.0
    h = tf.cast(tf.shape(image)[0], tf.float32) - 1.0
    w = tf.cast(tf.shape(image)[1], tf.float32) - 1.0
    cos, sin = tf.cos(angle), tf.sin(angle)
    x_off = (w - (cos * w - sin * h)) / 2.0
    y_off = (h - (sin * w + cos * h)) / 2.0
    return _transform(image, [cos, -sin, x_off, sin, cos, y_off, 0.0, 0.0])


def shear_x(image, strength, seed):
    return _transform(image, [1.0, _sign(seed) * strength * 0.3, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])


def shear_y(image, strength, seed):
    return _transform(image, [1.0, 0.0, 0.0, _sign(seed) * strength * 0.3, 1.0, 0.0, 0.0, 0.0])


def translate_x(image, strength, seed):
    pixels = _sign(seed) * strength * 0.45 * tf.cast(tf.shape(image)[1], tf.float32)
    return _transform(image, [1.0, 0.0, pixels, 0.0, 1.0, 0.0, 0.0, 0.0])


def translate_y(image, strength, seed):
    pixels = _sign(seed) * strength * 0.45 * tf.cast(tf.shape(image)[0], tf.float32)
    return _transform(image, [1.0, 0.0, 0.0, 0.0, 1.0, pixels, 0.0, 0.0])


def enhance_factor(strength):
    """PIL ImageEnhance factor of the enhance ops: 0.1 + 1.8 * strength (the paper's 0.1..1.9)."""
    return 0.1 + 1.8 * strength


def brightness(image, strength, seed):
    return _blend(tf.zeros_like(image, tf.float32), image, enhance_factor(strength))


def color(image, strength, seed):
    grey = tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(image))
    return _blend(tf.cast(grey, tf.float32), image, enhance_factor(strength))


def contrast(image, strength, seed):
    mean = tf.reduce_mean(tf.cast(tf.image.rgb_to_grayscale(image), tf.float32))
    return _blend(tf.fill(tf.shape(image), mean), image, enhance_factor(strength))


def sharpness(image, strength, seed):
    x = tf.cast(image, tf.float32)[None]
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, tf.shape(image)[-1], 1])
    smooth = tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "VALID")[0]
    # PIL keeps the one-pixel border unsmoothed.
    smooth = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
    border = tf.pad(tf.zeros_like(smooth[1:-1, 1:-1]), [[1, 1], [1, 1], [0, 0]], constant_values=1.0)
    degenerate = border * x[0] + (1.0 - border) * smooth
    return _blend(degenerate, image, enhance_factor(strength))


def solarize(image, strength, seed):
    threshold = tf.cast(256.0 - 256.0 * strength, tf.int32)
    x = tf.cast(image, tf.int32)
    return tf.cast(tf.where(x < threshold, x, 255 - x), tf.uint8)


def posterize(image, strength, seed):
    shift = tf.cast(tf.round(4.0 * strength), tf.uint8)  # keep 8..4 bits
    return tf.bitwise.left_shift(tf.bitwise.right_shift(image, shift), shift)


def invert(image, strength, seed):
    return 255 - image


def autocontrast(image, strength, seed):
    x = tf.cast(image, tf.float32)
    lo = tf.reduce_min(x, axis=[0, 1])
    hi = tf.reduce_max(x, axis=[0, 1])
    scale = tf.where(hi > lo, 255.0 / tf.maximum(hi - lo, 1e-3), 1.0)
    offset = tf.where(hi > lo, lo, 0.0)
    return _to_uint8((x - offset) * scale)


def equalize(image, strength, seed):
    """Per-channel histogram equalisation, as PIL's ImageOps.equalize."""

    def channel(c):
        c = tf.cast(c, tf.int32)
        hist = tf.math.bincount(tf.reshape(c, [-1]), minlength=256, maxlength=256)
        last = tf.gather(hist, tf.reduce_max(tf.where(hist > 0)))
        step = (tf.reduce_sum(hist) - last) // 255
        lut = tf.concat([[0], (tf.cumsum(hist) + step // 2) // tf.maximum(step, 1)], 0)[:-1]
        lut = tf.clip_by_value(lut, 0, 255)
        return tf.where(step > 0, tf.gather(lut, c), c)

    channels = tf.unstack(image, num=3, axis=-1)
    return tf.cast(tf.stack([channel(c) for c in channels], axis=-1), tf.uint8)


OPS = {
    "Identity": identity,
    "AutoContrast": autocontrast,
    "Equalize": equalize,
    "Rotate": rotate,
    "Solarize": solarize,
    "Color": color,
    "Posterize": posterize,
    "Contrast": contrast,
    "Brightness": brightness,
    "Sharpness": sharpness,
    "ShearX": shear_x,
    "ShearY": shear_y,
    "TranslateX": translate_x,
    "TranslateY": translate_y,
    "Invert": invert,
}

# RandAugment's 14 ops (Cubuk et al. 2020).
RANDAUGMENT_OPS = [n for n in OPS if n != "Invert"]
