"""Building blocks shared by the three ResNet families (functional Keras, channels-last)."""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from resnet_train.models.drop_path import DropPath


@keras.saving.register_keras_serializable(package="resnet_train")
class ZeroPadShortcut(layers.Layer):
    """Shortcut option A of He et al. 2016: subsample by `stride`, zero-pad the new channels.

    Parameter-free, which is what makes the CIFAR ResNets' counts match the paper.
    A registered layer rather than a Lambda so that saved models load in Keras' safe mode.
    """

    def __init__(self, filters: int, stride: int, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.stride = stride

    def call(self, x):
        if self.stride > 1:
            # x[:, ::s, ::s, :] as a 1x1 average pool with stride s: the same values and gradient to
            # the bit (an average of one value), on every size, but oneDNN's pooling kernel instead
            # of the generic strided slice. The slice and its gradient were 7% of a bfloat16
            # ResNet-20 step on a Zen 4 (scripts/profile_step.py); the pool is ~6x faster there.
            x = ops.average_pool(x, 1, self.stride, "valid")
        extra = self.filters - x.shape[-1]
        if extra > 0:
            x = ops.pad(x, [[0, 0], [0, 0], [0, 0], [extra // 2, extra - extra // 2]])
        return x

    def compute_output_shape(self, input_shape):
        n, h, w, _ = input_shape
        s = self.stride
        return (n, None if h is None else -(-h // s), None if w is None else -(-w // s), self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "stride": self.stride}


@keras.saving.register_keras_serializable(package="resnet_train")
class Standardize(layers.Layer):
    """(x - mean) / std per channel, the dataset's statistics held as constants of the graph.

    Computes what keras' Normalization(mean=, variance=std**2) computes, to the bit (its
    divisor is max(sqrt(variance), epsilon)); Keras' layer holds the statistics as eager tensors
    that a traced function captures, which ONNX converters turn into extra model inputs.
    Built from numbers in call(), the statistics are graph constants in every export. Holds no
    variables, like the layer it replaces, so checkpoints written before it still restore."""

    def __init__(self, mean, std, **kwargs):
        super().__init__(**kwargs)
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]

    def call(self, x):
        variance = np.asarray([s * s for s in self.std], np.float32)  # Normalization's rounding
        divisor = np.maximum(np.sqrt(variance), np.float32(keras.config.epsilon()))
        return (x - np.asarray(self.mean, np.float32)) / divisor

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std}


@keras.saving.register_keras_serializable(package="resnet_train")
class FusedBatchNorm(layers.BatchNormalization):
    """keras BatchNormalization computed by TensorFlow's fused kernel (FusedBatchNormV3).

    Keras 3 builds batch norm from generic ops (mean, squared difference, mul, sub, tile): a
    tf.profiler trace of ResNet-20 training on the CPU puts those at ~37% of the step, more than
    the forward convolutions. The fused kernel does the same maths in one pass. Same variables and
    names as the Keras layer, so checkpoints are interchangeable; synchronised BN and non-4-D
    inputs fall back to Keras' own path. (The fused kernel's running variance uses the unbiased
    batch variance, n/(n-1) times Keras' : a negligible difference at n >= batch x 64 pixels.)
    """

    def call(self, inputs, training=None, mask=None):
        import tensorflow as tf

        if self.synchronized or len(inputs.shape) != 4 or self.axis not in (-1, 3) or mask is not None:
            return super().call(inputs, training=training, mask=mask)
        scale = tf.convert_to_tensor(self.gamma) if self.scale else tf.ones(inputs.shape[-1], tf.float32)
        offset = tf.convert_to_tensor(self.beta) if self.center else tf.zeros(inputs.shape[-1], tf.float32)
        mean = tf.convert_to_tensor(self.moving_mean)
        variance = tf.convert_to_tensor(self.moving_variance)
        if training and self.trainable:
            y, new_mean, new_variance = tf.compat.v1.nn.fused_batch_norm(
                inputs,
                scale,
                offset,
                mean=mean,
                variance=variance,
                epsilon=self.epsilon,
                is_training=True,
                exponential_avg_factor=1.0 - self.momentum,
            )
            self.moving_mean.assign(new_mean)
            self.moving_variance.assign(new_variance)
            return y
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(
            inputs, scale, offset, mean=mean, variance=variance, epsilon=self.epsilon, is_training=False
        )
        return y


class Builder:
    """Makes conv / BN layers with the model's common settings (init, BN momentum, names)."""

    def __init__(
        self,
        init_mode: str = "fan_out",
        bn_momentum: float = 0.9,
        bn_epsilon: float = 1e-5,
        sync_bn: bool = False,
        fused_bn: bool = True,
        zero_init_residual: bool = False,
        padding: str = "symmetric",
        stride_in_1x1: bool = False,
        resnet_d: bool = False,
        drop_path: float = 0.0,
    ):
        # He et al. 2019 (Bag of Tricks), ResNet-D: a strided projection shortcut averages 2x2 first
        # and projects at stride 1, so it sees every input pixel (the deep stem is resnet.py's).
        self.resnet_d = resnet_d
        self.drop_path = drop_path  # stochastic depth: the last block's rate (drop_path.block_rates)
        self.drop_rates: dict[str, float] = {}  # each block's rate, by block name, in block order
        self.stride_in_1x1 = stride_in_1x1  # bottlenecks: ResNet v1's place of the stride
        # He et al. 2015 initialisation: N(0, 2/fan). fan_out is what torchvision and the
        # fb.resnet.torch code behind the papers use; fan_in is the other documented choice.
        self.init_mode = init_mode
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.sync_bn = sync_bn  # batch statistics over all replicas' examples, not each replica's
        self.fused_bn = fused_bn  # TF's fused kernel (FusedBatchNorm) rather than Keras' generic ops
        # Goyal et al. 2017 (sec. 5.1): gamma = 0 in the BN that ends each residual branch, so every
        # block starts as its shortcut. Post-activation blocks only: a pre-activation branch ends in
        # a conv, not a BN (models.build refuses the combination).
        self.zero_init_residual = zero_init_residual
        # "symmetric": the papers' geometry. "same": TF's padding, for runs made before 0.2 (their
        # checkpoints hold no padding layers and were trained with that geometry).
        self.padding = padding

    def conv(self, x, filters, kernel, stride=1, name=None):
        padding = "same"
        if stride > 1 and kernel > 1 and self.padding == "symmetric":
            # Symmetric padding, k // 2 on every side, as in the papers' Torch/Caffe nets, torchvision
            # and TF Model Garden (its explicit "fixed padding"). TF's "same" pads (0, 1) for a 3x3/2
            # conv on an even-sized map: the output would be centred on input 2i + 1 while the
            # shortcut (x[::2, ::2] or the 1x1/2 projection) samples 2i. Output sizes are unchanged
            # (ceil(n / 2) for even and odd n). Stride-1 convs keep "same", symmetric for odd kernels;
            # a 1x1/2 conv needs no padding. The padding layer has no weights; its name is the conv's
            # + "_pad" (ZeroPadShortcut's is "<block>_pad": no collision).
            assert kernel % 2 == 1, "symmetric padding needs an odd kernel"
            x = layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad" if name else None)(x)
            padding = "valid"
        return layers.Conv2D(
            filters,
            kernel,
            strides=stride,
            padding=padding,
            use_bias=False,  # every conv is followed (or preceded) by batch norm
            kernel_initializer=keras.initializers.VarianceScaling(
                2.0, mode=self.init_mode, distribution="untruncated_normal"
            ),
            name=name,
        )(x)

    def bn(self, x, name=None, last_in_branch=False):
        """`last_in_branch`: the BN that ends a residual branch; its gamma starts at 0 under
        zero_init_residual (Goyal et al. 2017), at 1 otherwise."""
        norm = FusedBatchNorm if self.fused_bn and not self.sync_bn else layers.BatchNormalization
        gamma = "zeros" if last_in_branch and self.zero_init_residual else "ones"
        return norm(
            momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
            synchronized=self.sync_bn,
            gamma_initializer=gamma,
            name=name,
        )(x)

    def relu(self, x, name=None):
        return layers.ReLU(name=name)(x)

    def max_pool(self, x, name):
        """3x3/2 max-pool of the ImageNet stem, padded like the convs. Zero padding is exact here:
        the pool's input is post-ReLU (>= 0) and every 3x3 window keeps at least one real value, so
        a padded zero never exceeds the window's maximum -- the same result as padding with -inf."""
        if self.padding == "same":
            return layers.MaxPooling2D(3, 2, padding="same", name=name)(x)
        x = layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
        return layers.MaxPooling2D(3, 2, padding="valid", name=name)(x)

    def shortcut(self, x, filters, stride, option, name, with_bn=True):
        """Identity when shapes match, else option A (zero-pad) or B (1x1 projection [+ BN])."""
        if stride == 1 and x.shape[-1] == filters:
            return x
        if option == "A":
            return ZeroPadShortcut(filters, stride, name=f"{name}_pad")(x)
        if self.resnet_d and stride > 1:
            # ceil: an odd map keeps its last row and column, averaged over the real pixels only
            # (timm's ceil_mode=True, count_include_pad=False; keras-hub's "same" pool).
            x = layers.AveragePooling2D(2, stride, padding="same", name=f"{name}_proj_pool")(x)
            stride = 1
        y = self.conv(x, filters, 1, stride, name=f"{name}_proj")
        return self.bn(y, name=f"{name}_proj_bn") if with_bn else y

    def drop(self, y, name):
        """The end of block `name`'s residual branch under stochastic depth (model.drop_path)."""
        rate = self.drop_rates.get(name, 0.0)
        if not rate:
            return y
        seed = list(self.drop_rates).index(name)  # the block's index: blocks draw apart
        return DropPath(rate, seed=seed, name=f"{name}_drop")(y)

    # Post-activation blocks (He et al. 2016a) --------------------------------------------
    def basic(self, x, filters, stride, shortcut, name):
        y = self.conv(x, filters, 3, stride, name=f"{name}_conv1")
        y = self.relu(self.bn(y, name=f"{name}_bn1"), name=f"{name}_relu1")
        y = self.conv(y, filters, 3, 1, name=f"{name}_conv2")
        y = self.bn(y, name=f"{name}_bn2", last_in_branch=True)
        s = self.shortcut(x, filters, stride, shortcut, name)
        return self.relu(layers.Add(name=f"{name}_add")([self.drop(y, name), s]), name=f"{name}_out")

    def bottleneck(self, x, width, stride, shortcut, name, expansion=4):
        # ResNet v1.5: the stride sits on the 3x3 conv, as in torchvision and TF Model Garden
        # (v1, model.stride_in_1x1: on the first 1x1 conv, as keras.applications' ResNet50).
        first, second = (stride, 1) if self.stride_in_1x1 else (1, stride)
        y = self.conv(x, width, 1, first, name=f"{name}_conv1")
        y = self.relu(self.bn(y, name=f"{name}_bn1"), name=f"{name}_relu1")
        y = self.conv(y, width, 3, second, name=f"{name}_conv2")
        y = self.relu(self.bn(y, name=f"{name}_bn2"), name=f"{name}_relu2")
        y = self.conv(y, width * expansion, 1, 1, name=f"{name}_conv3")
        y = self.bn(y, name=f"{name}_bn3", last_in_branch=True)
        s = self.shortcut(x, width * expansion, stride, shortcut, name)
        return self.relu(layers.Add(name=f"{name}_add")([self.drop(y, name), s]), name=f"{name}_out")

    # Pre-activation blocks (He et al. 2016b) ---------------------------------------------
    def preact_basic(self, x, filters, stride, shortcut, name):
        pre = self.relu(self.bn(x, name=f"{name}_bn1"), name=f"{name}_relu1")
        # A projection sees the pre-activated input; an identity shortcut carries x untouched.
        reshaped = not (stride == 1 and x.shape[-1] == filters)
        s = self.shortcut(pre if reshaped and shortcut == "B" else x, filters, stride, shortcut, name, with_bn=False)
        y = self.conv(pre, filters, 3, stride, name=f"{name}_conv1")
        y = self.relu(self.bn(y, name=f"{name}_bn2"), name=f"{name}_relu2")
        y = self.conv(y, filters, 3, 1, name=f"{name}_conv2")
        return layers.Add(name=f"{name}_add")([self.drop(y, name), s])

    def preact_bottleneck(self, x, width, stride, shortcut, name, expansion=4):
        pre = self.relu(self.bn(x, name=f"{name}_bn1"), name=f"{name}_relu1")
        out = width * expansion
        reshaped = not (stride == 1 and x.shape[-1] == out)
        s = self.shortcut(pre if reshaped else x, out, stride, "B", name, with_bn=False)
        y = self.conv(pre, width, 1, 1, name=f"{name}_conv1")
        y = self.relu(self.bn(y, name=f"{name}_bn2"), name=f"{name}_relu2")
        y = self.conv(y, width, 3, stride, name=f"{name}_conv2")
        y = self.relu(self.bn(y, name=f"{name}_bn3"), name=f"{name}_relu3")
        y = self.conv(y, out, 1, 1, name=f"{name}_conv3")
        return layers.Add(name=f"{name}_add")([self.drop(y, name), s])
