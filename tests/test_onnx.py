"""ONNX export of every model family (tf2onnx, onnxruntime), apart from a trained run: the
resnet-export CLI and its opsets are tested in test_tools.py."""

import keras
import numpy as np
import pytest
import tensorflow as tf

FLOAT32_EXPORT_BOUND = 1e-5  # as test_tools' for an unquantised export


@pytest.mark.parametrize(
    "variant, depth, block, side",
    [
        ("cifar", 8, "basic", 32),
        ("preact", 20, "basic", 32),
        ("preact", 11, "bottleneck", 32),
        ("imagenet", 18, "basic", 64),
    ],
)
def test_onnx_export_of_every_family_gives_the_models_probabilities(variant, depth, block, side, tmp_path):
    """Max-pool padding, projection shortcuts, bottlenecks and pre-activation through tf2onnx and
    onnxruntime, with moving statistics far from their initial values (folded or not, they count)."""
    from types import SimpleNamespace

    from resnet_train.models import build
    from resnet_train.tools.export import export_onnx, load_predictor

    rng = np.random.default_rng(depth)
    model = build(
        depth, 7, (side, side, 3), variant=variant, block=block, mean=(100.0, 110.0, 120.0), std=(50.0, 55.0, 60.0)
    )
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(0, 0.5, layer.moving_mean.shape))
            layer.moving_variance.assign(rng.uniform(0.5, 2, layer.moving_variance.shape))
    info = SimpleNamespace(image_shape=(side, side, 3), class_names=[str(i) for i in range(7)])
    path = export_onnx(model, info, tmp_path / "model.onnx")
    images = rng.integers(0, 256, (6, side, side, 3)).astype(np.uint8)
    expected = tf.nn.softmax(model(images, training=False)).numpy()
    np.testing.assert_allclose(load_predictor(path, "onnx")(images), expected, rtol=0, atol=FLOAT32_EXPORT_BOUND)
