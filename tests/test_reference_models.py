"""Our models against references we did not write: torchvision's resnet18 / resnet50, and small
PyTorch transcriptions of the CIFAR ResNet (He et al. 2016a, sec. 4.2) and of the pre-activation
ResNet (He et al. 2016b). Our weights are copied into the reference; both must give the same
logits in inference mode (moving statistics) and in training mode (batch statistics).

Inputs are even-sized (32 / 64 pixels; one odd case), where TF's padding="same" on a strided conv
pads (0, 1) instead of the references' symmetric (1, 1): the agreement checked here is what the
explicit symmetric padding in models/layers.py and models/resnet.py buys.

Normalisation: our model normalises inside (models.layers.Standardize, which equals keras'
Normalization with `mean`/`std**2`); the references take the normalised image. We keep the model's
real normalisation and feed the reference (x - mean) / std computed here, so the comparison covers
the model exactly as it is trained and exported (setting mean=0 / std=1 instead would leave the
normalisation untested).
"""

from __future__ import annotations

import importlib.util
import re
import sys
import types

import keras
import numpy as np
import pytest

# A test dependency (pyproject's test extras): the proof must run, never be skipped.
import torch  # noqa: E402

from resnet_train.models import build

nn = torch.nn
F = torch.nn.functional

MEAN = np.array([125.3, 123.0, 113.9], np.float32)
STD = np.array([63.0, 62.1, 66.7], np.float32)
# |ours - reference| <= tolerance x max |reference logit|. Inference mode agrees to ~1e-6. In
# training mode float32 rounding is amplified by every batch norm dividing by a batch standard
# deviation: through ResNet-50's 53 of them torch itself lands 3-7e-5 from its own float64 result
# (ours likewise), so 1e-4 would sit inside that noise. TF's asymmetric "same" padding on these
# even sizes put the logits 5-80% (of their scale) away.
RELATIVE = {False: 1e-4, True: 3e-4}  # by `training`


def torchvision_resnet():
    """torchvision.models.resnet, importable without torchvision's compiled ops.

    `import torchvision` registers its C++ operators (nms, roi_align, ...) and fails when that
    library was built against another torch than the installed one (here a CUDA torchvision
    next to torch +cpu: "operator torchvision::nms does not exist"). The ResNet definitions use
    none of those operators, so if the normal import fails we put a bare package object carrying
    torchvision's search path in sys.modules and import only torchvision.models.resnet."""
    try:
        import torchvision.models.resnet as resnet

        return resnet
    except Exception:  # noqa: BLE001 -- RuntimeError from the operator registration, ImportError, OSError
        pass
    spec = importlib.util.find_spec("torchvision")
    assert spec is not None and spec.submodule_search_locations, (
        "torchvision is a test dependency: pip install -e '.[test]'"
    )
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]  # what the failed import left half-initialised
    package = types.ModuleType("torchvision")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["torchvision"] = package
    import torchvision.models.resnet as resnet

    return resnet


# ---- copying our weights into a torch module ------------------------------------------------


def torchvision_name(name: str) -> str:
    """Our layer name -> torchvision's module name (stage2_block1_proj_bn -> layer2.0.downsample.1)."""
    fixed = {"stem_conv": "conv1", "stem_bn": "bn1", "logits": "fc"}
    if name in fixed:
        return fixed[name]
    stage, block, part = re.fullmatch(r"stage(\d+)_block(\d+)_(\w+)", name).groups()
    part = {"proj": "downsample.0", "proj_bn": "downsample.1"}.get(part, part)
    return f"layer{stage}.{int(block) - 1}.{part}"


def reference_name(name: str) -> str:
    """Our layer name -> the module name in this file's references (blocks.stage1_block1.conv1)."""
    m = re.fullmatch(r"(stage\d+_block\d+)_(\w+)", name)
    return f"blocks.{m.group(1)}.{m.group(2)}" if m else name


def randomise_batch_norm(model, seed=0):
    """Non-trivial BN parameters and moving statistics, so inference mode tests all four."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, c).astype(np.float32))
            layer.beta.assign(rng.normal(0, 0.2, c).astype(np.float32))
            layer.moving_mean.assign(rng.normal(0, 0.2, c).astype(np.float32))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, c).astype(np.float32))
        elif isinstance(layer, keras.layers.Dense):
            layer.bias.assign(rng.normal(0, 0.1, layer.bias.shape).astype(np.float32))


def copy_weights(model, module, rename):
    """Copies every weighted layer of `model` into `module` (NCHW / OIHW) and checks that every
    parameter of `module` received a value: the two networks have the same weighted layers."""
    targets = dict(module.named_modules())
    filled = set()

    def put(tensor, value):
        assert tuple(tensor.shape) == value.shape, (tensor.shape, value.shape)
        with torch.no_grad():
            tensor.copy_(torch.from_numpy(np.ascontiguousarray(value)))

    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            target = targets[rename(layer.name)]
            put(target.weight, layer.kernel.numpy().transpose(3, 2, 0, 1))  # HWIO -> OIHW
            assert target.bias is None and not layer.use_bias
        elif isinstance(layer, keras.layers.BatchNormalization):
            target = targets[rename(layer.name)]
            assert target.eps == pytest.approx(layer.epsilon)
            put(target.weight, layer.gamma.numpy())
            put(target.bias, layer.beta.numpy())
            put(target.running_mean, layer.moving_mean.numpy())
            put(target.running_var, layer.moving_variance.numpy())
        elif isinstance(layer, keras.layers.Dense):
            target = targets[rename(layer.name)]
            put(target.weight, layer.kernel.numpy().T)
            put(target.bias, layer.bias.numpy())
        else:
            assert not layer.trainable_weights, f"{layer.name}: weights this test does not copy"
            continue
        filled.add(rename(layer.name))
    with_parameters = {name for name, m in module.named_modules() if list(m.parameters(recurse=False))}
    assert with_parameters == filled, f"missing: {with_parameters - filled}, extra: {filled - with_parameters}"


def images(n, side, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (n, side, side, 3)).astype(np.float32)


def assert_same_logits(model, module, x, training):
    ours = np.asarray(model(x, training=training))
    module.train(training)
    with torch.no_grad():
        theirs = module(torch.from_numpy(((x - MEAN) / STD).transpose(0, 3, 1, 2).copy())).numpy()
    scale = np.abs(theirs).max()
    error = np.abs(ours - theirs).max()
    assert error <= RELATIVE[training] * scale, (
        f"training={training}: max |diff| {error:.3g} vs max |logit| {scale:.3g}"
    )


def check_against(model, module, rename, side, batch=4):
    """Same logits with moving statistics, then with batch statistics (torch's train-mode BN and
    TF's fused kernel both normalise with the biased batch variance). Inference first: a
    training-mode call moves both nets' moving statistics."""
    randomise_batch_norm(model)
    copy_weights(model, module, rename)
    x = images(batch, side)
    assert_same_logits(model, module, x, training=False)
    assert_same_logits(model, module, x, training=True)


# ---- torchvision: the ImageNet ResNets -----------------------------------------------------


@pytest.mark.parametrize("depth,side", [(18, 64), (18, 65), (50, 64)])
def test_imagenet_resnets_equal_torchvision(depth, side):
    # 65: an odd size, where TF's "same" was already symmetric; 64: even, where it was not.
    resnet = torchvision_resnet()
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)  # the same weights every run
    model = build(depth, 10, (side, side, 3), variant="imagenet", mean=MEAN, std=STD)
    reference = getattr(resnet, f"resnet{depth}")(num_classes=10)
    check_against(model, reference, torchvision_name, side, batch=2 if depth == 50 else 4)


@pytest.mark.parametrize("depth", [18, 50])
def test_zero_init_residual_zeroes_what_torchvision_zeroes(depth):
    resnet = torchvision_resnet()
    keras.backend.clear_session()
    ours = build(depth, 10, (32, 32, 3), variant="imagenet", zero_init_residual=True)
    theirs = getattr(resnet, f"resnet{depth}")(num_classes=10, zero_init_residual=True)
    zero_ours = {
        torchvision_name(layer.name)
        for layer in ours.layers
        if isinstance(layer, keras.layers.BatchNormalization) and not np.any(layer.gamma.numpy())
    }
    zero_theirs = {
        name for name, m in theirs.named_modules() if isinstance(m, nn.BatchNorm2d) and not torch.any(m.weight).item()
    }
    assert zero_ours == zero_theirs
    assert len(zero_ours) == {18: 8, 50: 16}[depth]  # one per block


# ---- the CIFAR ResNets, transcribed from the papers ------------------------------------------


def option_a(x, c_out, stride):
    """He et al. 2016a, option A: subsample by the stride, zero-pad the new channels. The paper
    does not say where the zero channels go; like ours they are split evenly around the old ones
    (fb.resnet.torch appends them: a channel permutation, the same family of networks)."""
    x = x[:, :, ::stride, ::stride]
    extra = c_out - x.shape[1]
    return F.pad(x, (0, 0, 0, 0, extra // 2, extra - extra // 2))


def conv3x3(c_in, c_out, stride=1):
    return nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)  # symmetric padding 1, as in Torch/Caffe


class BasicBlock(nn.Module):
    """He et al. 2016a: conv-BN-ReLU-conv-BN, + shortcut, ReLU."""

    def __init__(self, c_in, c_out, stride, shortcut):
        super().__init__()
        self.conv1, self.bn1 = conv3x3(c_in, c_out, stride), nn.BatchNorm2d(c_out)
        self.conv2, self.bn2 = conv3x3(c_out, c_out), nn.BatchNorm2d(c_out)
        self.c_out, self.stride, self.option = c_out, stride, shortcut
        self.reshaped = stride != 1 or c_in != c_out
        if self.reshaped and shortcut == "B":
            self.proj, self.proj_bn = nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        if not self.reshaped:
            s = x
        elif self.option == "A":
            s = option_a(x, self.c_out, self.stride)
        else:
            s = self.proj_bn(self.proj(x))
        return F.relu(y + s)


class PreactBasic(nn.Module):
    """He et al. 2016b: BN-ReLU-conv-BN-ReLU-conv, + shortcut, no ReLU after the addition.

    Shortcut inputs mirror models/layers.py: an identity shortcut carries x itself, option A
    subsamples x, only a projection (B) sees the pre-activated input. The Identity Mappings code
    (fb.resnet.torch preresnet.lua, 'both_preact') differs: the first block of every stage applies
    BN-ReLU before the split, so its shortcut -- identity in stage 1, A or B in stages 2-3 --
    carries relu(bn1(x)); the paper's text says the same of the first unit after conv1.
    """

    def __init__(self, c_in, c_out, stride, shortcut):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(c_in), conv3x3(c_in, c_out, stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(c_out), conv3x3(c_out, c_out)
        self.c_out, self.stride, self.option = c_out, stride, shortcut
        self.reshaped = stride != 1 or c_in != c_out
        if self.reshaped and shortcut == "B":
            self.proj = nn.Conv2d(c_in, c_out, 1, stride, bias=False)  # no BN: the input is pre-activated

    def forward(self, x):
        pre = F.relu(self.bn1(x))
        y = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        if not self.reshaped:
            s = x
        elif self.option == "A":
            s = option_a(x, self.c_out, self.stride)
        else:
            s = self.proj(pre)
        return y + s


class PreactBottleneck(nn.Module):
    """He et al. 2016b: BN-ReLU-conv1x1-BN-ReLU-conv3x3-BN-ReLU-conv1x1 (width x 4), projection
    shortcut on the pre-activated input when the shape changes. The stride sits on the 3x3 conv as
    in models/layers.py (the paper's resnet-1k-layers code strides the first 1x1 conv instead)."""

    def __init__(self, c_in, width, stride):
        super().__init__()
        out = 4 * width
        self.bn1, self.conv1 = nn.BatchNorm2d(c_in), nn.Conv2d(c_in, width, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(width), conv3x3(width, width, stride)
        self.bn3, self.conv3 = nn.BatchNorm2d(width), nn.Conv2d(width, out, 1, bias=False)
        self.reshaped = stride != 1 or c_in != out
        if self.reshaped:
            self.proj = nn.Conv2d(c_in, out, 1, stride, bias=False)

    def forward(self, x):
        pre = F.relu(self.bn1(x))
        y = self.conv1(pre)
        y = self.conv2(F.relu(self.bn2(y)))
        y = self.conv3(F.relu(self.bn3(y)))
        return y + (self.proj(pre) if self.reshaped else x)


class CifarResNet(nn.Module):
    """3x3 conv 16 [BN-ReLU unless pre-activation] -> 3 stages (16/32/64 wide, n blocks, the first
    block of stages 2 and 3 strides by 2) -> [final BN-ReLU if pre-activation] -> global average
    pool -> linear."""

    def __init__(self, n, num_classes, preact=False, bottleneck=False, shortcut="A"):
        super().__init__()
        self.preact = preact
        self.stem_conv = conv3x3(3, 16)
        if not preact:
            self.stem_bn = nn.BatchNorm2d(16)
        self.blocks = nn.Sequential()
        c = 16
        for stage, width in enumerate((16, 32, 64)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                if bottleneck:
                    block, c = PreactBottleneck(c, width, stride), 4 * width
                else:
                    block, c = (PreactBasic if preact else BasicBlock)(c, width, stride, shortcut), width
                self.blocks.add_module(f"stage{stage + 1}_block{i + 1}", block)
        if preact:
            self.final_bn = nn.BatchNorm2d(c)
        self.logits = nn.Linear(c, num_classes)

    def forward(self, x):
        x = self.stem_conv(x)
        if not self.preact:
            x = F.relu(self.stem_bn(x))
        x = self.blocks(x)
        if self.preact:
            x = F.relu(self.final_bn(x))
        return self.logits(x.mean((2, 3)))


@pytest.mark.parametrize(
    "variant,depth,block,shortcut",
    [
        ("cifar", 8, "basic", "A"),
        ("cifar", 8, "basic", "B"),
        ("preact", 8, "basic", "A"),
        ("preact", 8, "basic", "B"),
        ("preact", 20, "bottleneck", "B"),
    ],
)
def test_cifar_resnets_equal_the_papers_transcribed_in_torch(variant, depth, block, shortcut):
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)  # the same weights every run
    model = build(depth, 10, (32, 32, 3), variant=variant, block=block, shortcut=shortcut, mean=MEAN, std=STD)
    n = (depth - 2) // (9 if block == "bottleneck" else 6)
    reference = CifarResNet(n, 10, preact=variant == "preact", bottleneck=block == "bottleneck", shortcut=shortcut)
    check_against(model, reference, reference_name, 32)
