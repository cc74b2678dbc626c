"""The one preprocessing of an image file for the model: encoded bytes -> uint8 (H, W, 3).

Every path from an image file to the model goes through `preprocess`, so a model sees the same
pixels wherever an image comes from:

- the folder source, for its training and held-out images (data/folder.py, decoded once);
- evaluation of streamed (encoded) data such as ImageNet (pipeline.eval_preprocess);
- streamed training without the inception crop (augment.make_augment: crop=pad|none);
- resnet-predict and resnet-explain (runs.load_images);
- the exported SavedModel's `serving_encoded` signature (export.serving_functions): pure TF ops.

The geometry is decided by the model's input size (`geometry`), with the threshold that also
switches `augment.crop=auto` to the inception crop and `model.variant=auto` to the ImageNet stem:

- below LARGE_IMAGE (128) px, "resize": the whole image is resized to the input size (aspect
  not kept). Small-image runs (digits, CIFAR, small folders) train on whole images with
  pad-and-crop, so they are evaluated on whole images; a centre crop would cut away content
  every training image showed (and CIFAR-sized data is already at size: nothing changes).
- from 128 px on, "center_crop": the short side resized to size / 0.875 (256 for 224), then the
  central size x size crop, as ImageNet evaluation does (aspect kept). Those runs train with the
  inception crop (aspect 3/4..4/3 of the true picture), which a squash would distort further.
  The folder source stores its training images with this same function, so its inception crops
  are taken inside the centre crop: with augment=none a training image is, byte for byte, what
  prediction and serving give the model.

By size, not by model.variant: the geometry belongs to the data and to the training crop
(augment.crop=auto), which switch at the same size; a CIFAR-stem model at 224 px still trains on
inception crops.

Resizing is antialiased bilinear (`tf.image.resize(antialias=True)`): the in-graph equivalent of
Pillow's BILINEAR resize (measured on photos shrunk 1.7-30x: within 1 grey level of Pillow, 4
against the reducing_gap=3 the folder source used before; plain bilinear differs by up to 120
levels from aliasing). Decoding is `tf.io.decode_image`: JPEG, PNG, BMP, GIF (the first frame);
grey and RGBA files become RGB (alpha dropped). TF's and Pillow's JPEG decoders differ by about
1 level (chroma upsampling), one more reason to decode with TF everywhere.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import tensorflow as tf

LARGE_IMAGE = 128  # from this side length on: centre-crop geometry, inception crop, ImageNet stem
CROP_FRACTION = 0.875  # centre crop = 87.5% of the resized short side (224 of 256)


def geometry(image_shape) -> str:
    """'resize' (small images: the whole image) or 'center_crop' (from LARGE_IMAGE px on)."""
    return "center_crop" if min(int(image_shape[0]), int(image_shape[1])) >= LARGE_IMAGE else "resize"


def decode(encoded):
    """JPEG / PNG / BMP / GIF bytes -> uint8 RGB (H, W, 3); animations give their first frame."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def resize_uint8(image, size, antialias: bool = True):
    """uint8 image -> uint8 image of `size` (h, w), bilinear, rounded."""
    resized = tf.image.resize(image, size, method="bilinear", antialias=antialias)
    return tf.cast(tf.round(tf.clip_by_value(resized, 0, 255)), tf.uint8)


def center_crop(image, out_size, crop_fraction: float = CROP_FRACTION):
    """Resizes so the image covers out_size / crop_fraction (short side 256 for 224, aspect
    kept), then takes the central out_size crop."""
    out_h, out_w = int(out_size[0]), int(out_size[1])
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = tf.maximum(out_h / crop_fraction / shape[0], out_w / crop_fraction / shape[1])
    new = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), [out_h, out_w])
    resized = resize_uint8(image, new)
    top, left = (new[0] - out_h) // 2, (new[1] - out_w) // 2
    crop = resized[top : top + out_h, left : left + out_w]
    crop.set_shape([out_h, out_w, 3])
    return crop


def fit(image, image_shape):
    """A decoded uint8 RGB image -> the model's input (image_shape), by `geometry`."""
    out_size = (int(image_shape[0]), int(image_shape[1]))
    if geometry(image_shape) == "center_crop":
        return center_crop(image, out_size)
    out = resize_uint8(image, out_size)
    out.set_shape([*out_size, 3])
    return out


def preprocess(encoded, image_shape):
    """Encoded image bytes (a scalar string tensor) -> uint8 (H, W, 3) of `image_shape`.
    Pure TF ops: usable in tf.data, tf.function and exported signatures."""
    return fit(decode(encoded), image_shape)


@functools.lru_cache(maxsize=None)
def _compiled(image_shape: tuple):
    return tf.function(lambda encoded: preprocess(encoded, image_shape), input_signature=[tf.TensorSpec([], tf.string)])


def preprocess_file(path, image_shape) -> np.ndarray | None:
    """`preprocess` of one file, eagerly (thread-safe: the graph is traced once per shape);
    None when the file cannot be read or is not a readable image."""
    try:
        data = Path(path).read_bytes()
        return _compiled(tuple(int(s) for s in image_shape))(tf.constant(data)).numpy()
    except (OSError, ValueError, tf.errors.OpError):
        return None
