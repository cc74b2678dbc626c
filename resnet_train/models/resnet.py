"""The three ResNet families as Keras functional models.

Input: images as the pipeline yields them (uint8 or float, 0..255). The model normalises them
itself, so an exported model takes raw images. Output: float32 logits, even under a mixed
precision policy (the softmax and the loss must not run in float16).
"""

from __future__ import annotations

import keras
from keras import layers

from resnet_train.models import names
from resnet_train.models.depths import Layout
from resnet_train.models.drop_path import block_rates
from resnet_train.models.layers import Builder, Standardize


def _inputs_and_stem_input(image_shape, mean, std):
    inputs = keras.Input(shape=tuple(image_shape), name="images")
    # Normalise in float32 whatever the policy (bfloat16 has 8 bits of mantissa); the first conv
    # casts to the compute dtype.
    x = layers.Rescaling(1.0, dtype="float32", name="to_float")(inputs)
    x = Standardize(mean, std, dtype="float32", name=names.NORMALIZE)(x)
    return inputs, x


def _stages(x, widths, lay: Layout, block, b: Builder):
    """Stacks the stages: block(x, width, stride, name); the first block of stages 2+ strides by 2."""
    every = [names.block(stage + 1, i + 1) for stage, blocks in enumerate(lay.stages) for i in range(blocks)]
    b.drop_rates = dict(zip(every, block_rates(b.drop_path, len(every))))
    for stage, (width, blocks) in enumerate(zip(widths, lay.stages)):
        for i in range(blocks):
            x = block(x, width, 2 if stage > 0 and i == 0 else 1, names.block(stage + 1, i + 1))
    return x


def _head(x, num_classes):
    x = layers.GlobalAveragePooling2D(name=names.POOL)(x)
    # float32 logits: numerically safe softmax / cross-entropy under mixed precision.
    return layers.Dense(num_classes, dtype="float32", name=names.HEAD)(x)


def cifar_resnet(lay: Layout, num_classes, image_shape, mean, std, shortcut, b: Builder, name):
    """He et al. 2016a, section 4.2: 3x3 conv 16 -> 3 stages of n basic blocks (16/32/64)."""
    inputs, x = _inputs_and_stem_input(image_shape, mean, std)
    x = b.relu(b.bn(b.conv(x, 16, 3, name="stem_conv"), name="stem_bn"), name="stem_relu")
    x = _stages(x, (16, 32, 64), lay, lambda x, w, s, n: b.basic(x, w, s, shortcut, n), b)
    return keras.Model(inputs, _head(x, num_classes), name=name)


def preact_resnet(lay: Layout, num_classes, image_shape, mean, std, shortcut, b: Builder, name):
    """He et al. 2016b (Identity Mappings): BN-ReLU-conv blocks, a final BN-ReLU before pooling."""
    inputs, x = _inputs_and_stem_input(image_shape, mean, std)
    x = b.conv(x, 16, 3, name="stem_conv")
    block = b.preact_bottleneck if lay.block == "bottleneck" else b.preact_basic
    x = _stages(x, (16, 32, 64), lay, lambda x, w, s, n: block(x, w, s, shortcut, n), b)
    x = b.relu(b.bn(x, name="final_bn"), name="final_relu")
    return keras.Model(inputs, _head(x, num_classes), name=name)


def imagenet_resnet(lay: Layout, num_classes, image_shape, mean, std, shortcut, b: Builder, name):
    """He et al. 2016a, Table 1: 7x7/2 conv 64, 3x3/2 max-pool, 4 stages (64/128/256/512)."""
    inputs, x = _inputs_and_stem_input(image_shape, mean, std)
    if b.resnet_d:  # He et al. 2019's deep stem: three 3x3 convs (32, 32, 64), the first at stride 2
        for i, (width, stride) in enumerate(((32, 2), (32, 1), (64, 1)), start=1):
            x = b.relu(
                b.bn(b.conv(x, width, 3, stride, name=f"stem_conv{i}"), name=f"stem_bn{i}"), name=f"stem_relu{i}"
            )
    else:
        x = b.relu(b.bn(b.conv(x, 64, 7, 2, name="stem_conv"), name="stem_bn"), name="stem_relu")
    x = b.max_pool(x, name="stem_pool")  # padded 1 on each side, as torchvision and the papers' nets
    block = b.bottleneck if lay.block == "bottleneck" else b.basic
    x = _stages(x, (64, 128, 256, 512), lay, lambda x, w, s, n: block(x, w, s, shortcut, n), b)
    return keras.Model(inputs, _head(x, num_classes), name=name)


FAMILIES = {"cifar": cifar_resnet, "preact": preact_resnet, "imagenet": imagenet_resnet}
