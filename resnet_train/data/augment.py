"""Training augmentation, built from the `augment` config group.

Per image (in tf.data, before batching): crop (pad-and-crop or inception crop), horizontal flip,
AutoAugment or RandAugment, cutout. Per batch (after batching): mixup or cutmix, which turn the
labels into soft (one-hot mixed) labels. Label smoothing is applied in the loss (trainer).

All randomness is stateless: an image's is a function of (seed, epoch, index), a batch's of
(seed, epoch, batch index). A resumed run therefore sees exactly the augmentations the
uninterrupted run would have seen, and there is no RNG state to checkpoint. Evaluation applies
none of this.
"""

from __future__ import annotations

import tensorflow as tf

from resnet_train.config import store
from resnet_train.data import image_ops
from resnet_train.data.autoaugment_policies import POLICIES
from resnet_train.data.preprocess import LARGE_IMAGE, decode, preprocess, resize_uint8
from resnet_train.errors import ConfigError


def example_seed(seed: int, epoch: int, index, stream: int = 0) -> tf.Tensor:
    """A [2] int64 stateless seed for one example (stream 0) or one batch (stream 1) of one epoch
    (`epoch` a Python int or an int64 tensor: the same seed)."""
    first = (seed * 1_000_003 + tf.cast(epoch, tf.int64)) * 2 + stream
    return tf.stack([first, tf.cast(index, tf.int64)])


def _split(seed, n):
    return tf.unstack(tf.random.experimental.stateless_split(seed, n))


# ---- crops ----------------------------------------------------------------------------------
def pad_and_crop(image, padding: int, seed):
    """He et al. 2016: pad `padding` zero pixels on each side, take a random crop of the original size."""
    shape = tf.shape(image)
    padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
    return tf.image.stateless_random_crop(padded, shape, seed=seed)


def inception_box(shape, seed, area=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """Szegedy et al. 2015 crop window: (offset, size) covering 8-100% of the area, aspect 3/4-4/3."""
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=ratio,
        area_range=area,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    return begin, size


def inception_crop(image, seed, out_size=None):
    """Random resized crop back to the image's own size (or `out_size`)."""
    begin, size = inception_box(tf.shape(image), seed)
    crop = tf.slice(image, begin, size)
    return _resize_uint8(crop, out_size if out_size is not None else tf.shape(image)[:2])


def _resize_uint8(image, size):
    # Plain bilinear, as the inception crop has always been trained (the crops are mostly
    # enlarged); evaluation, prediction and serving resize antialiased.
    return resize_uint8(image, size, antialias=False)


def decode_and_inception_crop(encoded, seed, out_size):
    """The inception crop fused with decoding: for JPEGs only the crop window is decoded."""

    def jpeg():
        begin, size = inception_box(tf.image.extract_jpeg_shape(encoded), seed)
        window = tf.stack([begin[0], begin[1], size[0], size[1]])
        return tf.image.decode_and_crop_jpeg(encoded, window, channels=3)

    def other():
        image = decode(encoded)
        begin, size = inception_box(tf.shape(image), seed)
        return tf.slice(image, begin, size)

    crop = tf.cond(tf.io.is_jpeg(encoded), jpeg, other)
    crop.set_shape([None, None, 3])
    return _resize_uint8(crop, out_size)


# ---- policies -------------------------------------------------------------------------------
def _apply_op(name, image, strength, seed):
    return image_ops.OPS[name](image, tf.constant(strength, tf.float32), seed)


def randaugment(image, num_ops: int, magnitude: float, seed):
    """RandAugment (N, M): N ops drawn uniformly per image, each at magnitude M of 10."""
    names = image_ops.RANDAUGMENT_OPS
    strength = min(max(magnitude / 10.0, 0.0), 1.0)
    for op_seed in _split(seed, num_ops):
        pick_seed, arg_seed = _split(op_seed, 2)
        index = tf.random.stateless_uniform([], pick_seed, 0, len(names), dtype=tf.int32)
        branches = [lambda n=n: _apply_op(n, image, strength, arg_seed) for n in names]
        image = tf.switch_case(index, branches)
        image.set_shape([None, None, 3])
    return image


MAX_LEVEL = 10.0  # AutoAugment's magnitude scale: strength = level / 10, as in the authors' code


def autoaugment(image, policy: str, seed):
    """AutoAugment: one of the policy's 25 sub-policies per image; each step with its probability.
    A step's magnitude (0..9) is scaled as in the code that searched the policies (PARAMETER_MAX,
    tensorflow/tpu's _MAX_LEVEL = 10): strength level / 10, so Color 9 is factor 1.72, Rotate 9
    is 27 degrees; RandAugment's M is on the same scale of 10."""
    subpolicies = POLICIES[policy]
    pick_seed, seed = _split(seed, 2)
    index = tf.random.stateless_uniform([], pick_seed, 0, len(subpolicies), dtype=tf.int32)

    def run(steps):
        out = image
        for (name, prob, level), step_seed in zip(steps, _split(seed, len(steps))):
            coin_seed, arg_seed = _split(step_seed, 2)
            apply = tf.random.stateless_uniform([], coin_seed) < prob
            out = tf.cond(
                apply, lambda o=out, n=name, lv=level, s=arg_seed: _apply_op(n, o, lv / MAX_LEVEL, s), lambda o=out: o
            )
        return out

    image = tf.switch_case(index, [lambda s=s: run(s) for s in subpolicies])
    image.set_shape([None, None, 3])
    return image


def cutout(image, size: int, fill, seed):
    """DeVries & Taylor 2017: a size x size square at a random centre (may overlap the border),
    filled with the dataset mean, i.e. zero after normalisation."""
    shape = tf.shape(image)
    y_seed, x_seed = _split(seed, 2)
    top = tf.random.stateless_uniform([], y_seed, 0, shape[0], dtype=tf.int32) - size // 2
    left = tf.random.stateless_uniform([], x_seed, 0, shape[1], dtype=tf.int32) - size // 2
    ys, xs = tf.range(shape[0])[:, None], tf.range(shape[1])[None, :]
    inside = (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)
    fill = tf.cast(tf.round(tf.constant(fill, tf.float32)), tf.uint8)
    return tf.where(inside[:, :, None], tf.broadcast_to(fill, tf.shape(image)), image)


# ---- batch level ----------------------------------------------------------------------------
def _beta(seed, alpha):
    a_seed, b_seed = _split(seed, 2)
    a = tf.random.stateless_gamma([], a_seed, alpha)
    b = tf.random.stateless_gamma([], b_seed, alpha)
    return a / (a + b)


def mixup(images, labels, alpha: float, seed):
    """Zhang et al. 2018: one lambda ~ Beta(alpha, alpha) per batch, mixed with a permutation."""
    lam_seed, perm_seed = _split(seed, 2)
    lam = _beta(lam_seed, alpha)
    perm = tf.argsort(tf.random.stateless_uniform([tf.shape(images)[0]], perm_seed))
    x = tf.cast(images, tf.float32)
    # Rounded back to uint8: the error (< 0.5/255) is below the images' own quantisation.
    mixed = lam * x + (1.0 - lam) * tf.gather(x, perm)
    return tf.cast(tf.round(mixed), tf.uint8), lam * labels + (1.0 - lam) * tf.gather(labels, perm)


def cutmix(images, labels, alpha: float, seed):
    """Yun et al. 2019: paste a box of a permuted batch; labels mixed by the box's true area."""
    lam_seed, perm_seed, box_seed = _split(seed, 3)
    lam = _beta(lam_seed, alpha)
    perm = tf.argsort(tf.random.stateless_uniform([tf.shape(images)[0]], perm_seed))
    h, w = tf.shape(images)[1], tf.shape(images)[2]
    cut = tf.sqrt(1.0 - lam)
    ch = tf.cast(tf.cast(h, tf.float32) * cut, tf.int32)
    cw = tf.cast(tf.cast(w, tf.float32) * cut, tf.int32)
    y_seed, x_seed = _split(box_seed, 2)
    cy = tf.random.stateless_uniform([], y_seed, 0, h, dtype=tf.int32)
    cx = tf.random.stateless_uniform([], x_seed, 0, w, dtype=tf.int32)
    y0, y1 = tf.clip_by_value(cy - ch // 2, 0, h), tf.clip_by_value(cy + ch // 2, 0, h)
    x0, x1 = tf.clip_by_value(cx - cw // 2, 0, w), tf.clip_by_value(cx + cw // 2, 0, w)
    ys, xs = tf.range(h)[:, None], tf.range(w)[None, :]
    box = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)
    mixed = tf.where(box[None, :, :, None], tf.gather(images, perm), images)
    kept = 1.0 - tf.cast((y1 - y0) * (x1 - x0), tf.float32) / tf.cast(h * w, tf.float32)
    return mixed, kept * labels + (1.0 - kept) * tf.gather(labels, perm)


# ---- factories ------------------------------------------------------------------------------
def make_augment(cfg, image_shape=(32, 32, 3), mean=(127.5, 127.5, 127.5), encoded: bool = False):
    """fn(image, seed) -> image for one training example, or None when nothing is configured.

    With `encoded`, examples are image bytes: the crop stage decodes them (fused with the inception
    crop) to `image_shape`, so a function is always returned."""
    cfg = store.augment_config(cfg)
    crop, padding, flip, cut = cfg.crop, cfg.padding, cfg.horizontal_flip, cfg.cutout
    rand, policy = cfg.randaugment, cfg.autoaugment
    if crop == "auto":
        crop = "inception" if min(image_shape[:2]) >= LARGE_IMAGE else "pad"
    if crop not in ("pad", "inception", "none"):
        raise ConfigError(f"augment.crop must be auto, pad, inception or none (got {crop!r})")
    if crop == "pad" and padding <= 0:
        crop = "none"
    if policy == "auto":
        policy = "imagenet" if min(image_shape[:2]) >= LARGE_IMAGE else "cifar"
    if policy is not None and policy not in POLICIES:
        raise ConfigError(f"augment.autoaugment must be null, auto, cifar or imagenet (got {policy!r})")
    if rand is not None and policy is not None:
        raise ConfigError("augment.randaugment and augment.autoaugment are alternatives: set one of them")
    if cut < 0:
        raise ConfigError(f"augment.cutout must be >= 0 pixels (got {cut})")
    if image_shape[-1] != 3 and (rand is not None or policy is not None):
        raise ConfigError("AutoAugment / RandAugment need RGB images")
    if crop == "none" and not flip and rand is None and policy is None and not cut and not encoded:
        return None
    fill = [float(m) for m in mean]
    out_size = tuple(int(s) for s in image_shape[:2])

    def augment(image, seed):
        crop_seed, flip_seed, policy_seed, cut_seed = _split(seed, 4)
        if encoded and crop == "inception":
            image = decode_and_inception_crop(image, crop_seed, out_size)
        elif encoded:  # what evaluation and prediction see (preprocess.py), then crop/flip/...
            image = preprocess(image, image_shape)
        if crop == "pad":
            image = pad_and_crop(image, padding, crop_seed)
        elif crop == "inception" and not encoded:
            image = inception_crop(image, crop_seed)
        if flip:
            image = tf.image.stateless_random_flip_left_right(image, flip_seed)
        if policy is not None:
            image = autoaugment(image, policy, policy_seed)
        elif rand is not None:
            image = randaugment(image, rand.num_ops, rand.magnitude, policy_seed)
        if cut:
            image = cutout(image, cut, fill, cut_seed)
        return image

    return augment


def make_batch_augment(cfg, num_classes: int):
    """fn(images, labels, seed) -> (images, soft labels) per batch, or None. With both mixup and
    cutmix set, each batch gets one of the two (chosen with equal odds), as in timm. Labels are
    class indices (made one-hot) or float multi-hot vectors (mixed as they are)."""
    cfg = store.augment_config(cfg)
    mix, cut = cfg.mixup_alpha, cfg.cutmix_alpha
    if mix < 0 or cut < 0:
        raise ConfigError("augment.mixup_alpha and augment.cutmix_alpha must be >= 0")
    if not mix and not cut:
        return None

    def batch_augment(images, labels, seed):
        choose_seed, seed = _split(seed, 2)
        # Multi-hot labels (data.task=multilabel) are mixed as they are.
        soft = tf.cast(labels, tf.float32) if labels.dtype.is_floating else tf.one_hot(labels, num_classes)
        if mix and cut:
            use_mixup = tf.random.stateless_uniform([], choose_seed) < 0.5
            return tf.cond(use_mixup, lambda: mixup(images, soft, mix, seed), lambda: cutmix(images, soft, cut, seed))
        return mixup(images, soft, mix, seed) if mix else cutmix(images, soft, cut, seed)

    return batch_augment
