"""Optimizers (LARS and AdamW against their formulas), which variables receive weight decay in each
mode, global-norm clipping across replicas. (The learning-rate schedules: test_schedules.py.)"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import compose, train_small_model

from resnet_train import optim
from resnet_train.errors import ConfigError
from resnet_train.models import build
from resnet_train.runtime import devices as runtime
from resnet_train.training.trainer import Trainer


def optimizer_decays(optimizer, variable) -> bool:
    """Whether the optimizer itself decays `variable` (decoupled or LARS decay; coupled decay is
    the trainer's loss term instead), as Keras decides it."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return bool(inner.weight_decay) and inner._use_weight_decay(variable)


def test_weight_decay_goes_to_kernels_not_bn_or_biases():
    keras.backend.clear_session()
    model = build(8, 10, variant="cifar")
    decayed = {v.path for v in model.trainable_variables if optim.decayed(v)}
    spared = {v.path for v in model.trainable_variables if not optim.decayed(v)}
    assert all(p.endswith("kernel") for p in decayed) and decayed
    assert {p.rsplit("/", 1)[1] for p in spared} == {"gamma", "beta", "bias"}
    assert all(optim.decayed(v, decay_bn=True) for v in model.trainable_variables)


# ---- optimizers and the weight-decay policy ---------------------------------------------------
@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_every_optimizer_config_composes_builds_and_steps(name):
    cfg = compose(f"optimizer={name}", "optimizer.clip_norm=1.0").optimizer
    kernel = keras.Variable(np.ones((2, 2), "float32"), name="kernel")
    bias = keras.Variable(np.ones((2,), "float32"), name="bias")
    opt = optim.build_optimizer(cfg, 0.01, variables=[kernel, bias], ema_decay=0.99)
    opt.apply_gradients([(tf.ones((2, 2)), kernel), (tf.ones((2,)), bias)])
    assert np.all(kernel.numpy() < 1) and np.all(bias.numpy() < 1)
    assert optim.clip_norm(cfg) == 1.0


def _decay_targets(name, decay_bn=False, **mode):
    """(coupled L2 in the loss, {variable path: decayed by the optimizer}) for a tiny ResNet."""
    keras.backend.clear_session()
    model = build(8, 10, variant="cifar")
    cfg = {"name": name, "weight_decay": 1e-4, "decay_bn": decay_bn, **mode}
    opt = optim.build_optimizer(cfg, 0.1, variables=model.trainable_variables)
    trainer = Trainer(
        model, opt, tf.distribute.get_strategy(), 8, weight_decay=optim.coupled_weight_decay(cfg), decay_bn=decay_bn
    )
    in_loss = {v.path for v, m in zip(model.trainable_variables, trainer.decay_mask) if m and trainer.weight_decay}
    by_optimizer = {v.path for v in model.trainable_variables if optimizer_decays(opt, v)}
    return in_loss, by_optimizer, {v.path for v in model.trainable_variables}


def test_coupled_decay_is_a_loss_term_on_kernels_only():
    in_loss, by_optimizer, every = _decay_targets("sgd")
    assert by_optimizer == set()
    assert in_loss and all(p.endswith("kernel") for p in in_loss)
    assert {p.rsplit("/", 1)[1] for p in every - in_loss} == {"gamma", "beta", "bias"}


@pytest.mark.parametrize("name", ["adamw", "lamb", "lars"])
def test_decoupled_and_lars_decay_is_the_optimizers_on_kernels_only(name):
    in_loss, by_optimizer, every = _decay_targets(name)
    assert in_loss == set()  # the trainer does not add the L2 term as well
    assert by_optimizer and all(p.endswith("kernel") for p in by_optimizer)
    assert {p.rsplit("/", 1)[1] for p in every - by_optimizer} == {"gamma", "beta", "bias"}
    assert _decay_targets(name, decay_bn=True)[1] == every


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_sgd_and_adam_decay_decoupled_when_asked(name):
    """weight_decay_mode=decoupled (README): the optimizer decays the kernels, the loss has no L2."""
    in_loss, by_optimizer, every = _decay_targets(name, weight_decay_mode="decoupled")
    assert in_loss == set()
    assert by_optimizer and all(p.endswith("kernel") for p in by_optimizer)
    assert {p.rsplit("/", 1)[1] for p in every - by_optimizer} == {"gamma", "beta", "bias"}


@pytest.mark.parametrize("nesterov", [True, False])
def test_sgd_momentum_nesterov_and_decoupled_decay_follow_torch(nesterov):
    """Three steps against torch.optim.SGD (momentum, nesterov), with decoupled decay applied as
    Loshchilov & Hutter's SGDW does: w <- w (1 - lr wd) before each step."""
    import torch

    lr, momentum, wd = 0.1, 0.9, 0.05
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(3, 2)).astype("float32")
    grads = [rng.normal(size=(3, 2)).astype("float32") for _ in range(3)]
    kernel = keras.Variable(w0.copy(), name="kernel")
    cfg = {"name": "sgd", "momentum": momentum, "nesterov": nesterov, "weight_decay": wd}
    ours = optim.build_optimizer({**cfg, "weight_decay_mode": "decoupled"}, lr, variables=[kernel])
    reference = torch.nn.Parameter(torch.tensor(w0.copy()))
    theirs = torch.optim.SGD([reference], lr=lr, momentum=momentum, nesterov=nesterov)
    for g in grads:
        ours.apply_gradients([(tf.constant(g), kernel)])
        with torch.no_grad():
            reference.mul_(1 - lr * wd)
        reference.grad = torch.tensor(g)
        theirs.step()
    np.testing.assert_allclose(kernel.numpy(), reference.detach().numpy(), rtol=1e-5, atol=1e-6)
    # The check can fail: the other momentum rule ends elsewhere.
    other = keras.Variable(w0.copy(), name="kernel")
    flipped = optim.build_optimizer(
        {**cfg, "nesterov": not nesterov, "weight_decay_mode": "decoupled"}, lr, variables=[other]
    )
    for g in grads:
        flipped.apply_gradients([(tf.constant(g), other)])
    assert not np.allclose(other.numpy(), reference.detach().numpy(), rtol=1e-3)


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"name": "rmsprop"}, "optimizer.name must be one of sgd, adam, adamw, lamb, lars"),
        ({"name": "adamw", "weight_decay_mode": "coupled"}, "weight_decay_mode for adamw must be decoupled"),
        ({"name": "lars", "weight_decay_mode": "decoupled"}, "weight_decay_mode for lars must be trust_ratio"),
        ({"name": "sgd", "momentum": 1.5}, "optimizer.momentum"),
        ({"name": "adam", "beta_2": 1.0}, "optimizer.beta_2"),
        ({"name": "lars", "eta": 0}, "optimizer.eta"),
    ],
)
def test_bad_optimizer_settings_are_config_errors(cfg, message):
    with pytest.raises(ConfigError, match=message):
        optim.build_optimizer(cfg, 0.1, variables=[])


@pytest.mark.parametrize(
    "value, message", [(-1.0, "a positive number"), (0, "a positive number"), ("big", "a number"), (True, "a number")]
)
def test_bad_clip_norm_is_a_config_error(value, message):
    with pytest.raises(ConfigError, match=f"optimizer.clip_norm must be {message}"):
        optim.clip_norm({"name": "sgd", "clip_norm": value})


def test_adamw_decays_decoupled_as_the_formula():
    lr, wd, b1, b2, eps = 0.01, 0.1, 0.9, 0.999, 1e-7
    kernel = keras.Variable(np.array([[1.0, -2.0], [0.5, 3.0]], "float32"))
    bias = keras.Variable(np.array([1.0, -1.0], "float32"))
    opt = optim.build_optimizer(
        {"name": "adamw", "weight_decay": wd, "beta_1": b1, "beta_2": b2, "epsilon": eps}, lr, variables=[kernel, bias]
    )
    g = np.array([[0.3, -0.1], [0.0, 2.0]], "float32")
    w0, b0 = kernel.numpy(), bias.numpy()
    opt.apply_gradients([(tf.constant(g), kernel), (tf.constant(g[0]), bias)])

    def adam_step(grad):  # first step, bias-corrected (Keras folds the correction into the lr)
        m, v = (1 - b1) * grad, (1 - b2) * grad**2
        return lr * np.sqrt(1 - b2) / (1 - b1) * m / (np.sqrt(v) + eps)

    np.testing.assert_allclose(kernel.numpy(), w0 - lr * wd * w0 - adam_step(g), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(bias.numpy(), b0 - adam_step(g[0]), rtol=1e-5, atol=1e-7)  # no decay


def test_lars_two_steps_follow_the_papers_update_rule():
    """You et al. 2017, Algorithm 1, computed by hand: kernels get the trust ratio with the decay
    inside it, biases plain momentum SGD."""
    lr, momentum, eta, wd = 0.5, 0.9, 0.01, 0.05
    kernel = keras.Variable(np.array([[1.0, -2.0], [0.5, 3.0]], "float32"))
    bias = keras.Variable(np.array([1.0, -1.0], "float32"))
    opt = optim.build_optimizer(
        {"name": "lars", "momentum": momentum, "eta": eta, "weight_decay": wd}, lr, variables=[kernel, bias]
    )
    grads = [np.array([[0.3, -0.1], [0.0, 2.0]], "float32"), np.array([[-1.0, 0.2], [0.4, 0.1]], "float32")]
    w, b = kernel.numpy().astype("float64"), bias.numpy().astype("float64")
    vw, vb = np.zeros_like(w), np.zeros_like(b)
    for g in grads:
        opt.apply_gradients([(tf.constant(g), kernel), (tf.constant(g[0]), bias)])
        local_lr = eta * np.linalg.norm(w) / (np.linalg.norm(g) + wd * np.linalg.norm(w))
        vw = momentum * vw + lr * local_lr * (g + wd * w)
        w = w - vw
        vb = momentum * vb + lr * g[0]
        b = b - vb
        np.testing.assert_allclose(kernel.numpy(), w, rtol=1e-5)
        np.testing.assert_allclose(bias.numpy(), b, rtol=1e-5)


def test_lars_without_weight_decay_still_spares_bn_and_biases_from_the_trust_ratio():
    """weight_decay=0: kernels still get the layer-wise trust ratio (without decay), BN gamma/beta
    and biases plain momentum SGD, as with decay."""
    lr, momentum, eta = 0.5, 0.9, 0.01
    cfg = compose(
        "optimizer=lars", "optimizer.weight_decay=0", f"optimizer.eta={eta}", f"optimizer.momentum={momentum}"
    ).optimizer
    bn, dense = keras.layers.BatchNormalization(), keras.layers.Dense(2)
    bn.build((None, 2))
    dense.build((None, 2))
    variables = [bn.gamma, bn.beta, dense.kernel, dense.bias]
    rng = np.random.default_rng(0)
    for v in variables:
        v.assign(rng.normal(size=v.shape).astype("float32"))
    opt = optim.build_optimizer(cfg, lr, variables=variables)
    assert not any(optimizer_decays(opt, v) for v in variables)
    values = [v.numpy().astype("float64") for v in variables]
    velocities = [np.zeros_like(w) for w in values]
    for _ in range(2):
        grads = [rng.normal(size=v.shape).astype("float32") for v in variables]
        opt.apply_gradients([(tf.constant(g), v) for g, v in zip(grads, variables)])
        for i, (g, w) in enumerate(zip(grads, values)):
            ratio = eta * np.linalg.norm(w) / np.linalg.norm(g) if variables[i] is dense.kernel else 1.0
            velocities[i] = momentum * velocities[i] + lr * ratio * g
            values[i] = w - velocities[i]
        for v, w in zip(variables, values):
            np.testing.assert_allclose(v.numpy(), w, rtol=1e-5, err_msg=v.path)


def test_lamb_decreases_a_least_squares_loss():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 4)).astype("float32"), rng.normal(size=(32, 1)).astype("float32")
    w = keras.Variable(rng.normal(size=(4, 1)).astype("float32"))
    opt = optim.build_optimizer({"name": "lamb", "weight_decay": 0.01}, 0.05, variables=[w])

    def loss():
        return tf.reduce_mean(tf.square(x @ w.value - y))

    before = float(loss())
    for _ in range(30):
        with tf.GradientTape() as tape:
            value = loss()
        opt.apply_gradients([(tape.gradient(value, w.value), w)])
    assert float(loss()) < 0.7 * before


def _clipped_step(strategy, clip_norm):
    """lr x the applied gradient of one SGD step (lr 1, no momentum) through the Trainer."""

    def sgd():
        return keras.optimizers.SGD(1.0)

    before = train_small_model(strategy, 0, optimizer=sgd)[0]
    after = train_small_model(strategy, 1, optimizer=sgd, clip_norm=clip_norm)[0]
    return [b - a for b, a in zip(before, after)]


def test_clipping_by_global_norm_is_over_the_gradient_summed_across_replicas():
    one = _clipped_step(runtime.make_strategy("one_device"), clip_norm=None)
    full_norm = np.sqrt(sum(np.sum(u**2) for u in one))
    clip = float(full_norm) / 4
    one_clipped = _clipped_step(runtime.make_strategy("one_device"), clip)
    two_clipped = _clipped_step(runtime.make_strategy("mirrored", cpu_replicas=2), clip)
    assert np.sqrt(sum(np.sum(u**2) for u in one_clipped)) == pytest.approx(clip, rel=1e-4)
    for a, b, full in zip(one_clipped, two_clipped, one):
        np.testing.assert_allclose(a, full / 4, rtol=1e-4, atol=1e-7)  # the same direction, a quarter the norm
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-7)


def test_clipping_under_float16_loss_scaling_clips_the_unscaled_gradient():
    strategy = runtime.make_strategy("one_device")
    plain = _clipped_step(strategy, clip_norm=0.01)
    before = train_small_model(strategy, 0)[0]
    scaled = train_small_model(
        strategy, 1, clip_norm=0.01, optimizer=lambda: keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(1.0))
    )[0]
    for p, b, s in zip(plain, before, scaled):
        np.testing.assert_allclose(b - s, p, rtol=1e-4, atol=1e-7)


def test_clipping_keeps_a_non_finite_step_skipped_under_loss_scaling():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Dense(8, activation="relu")(inputs)))
    optimizer = optim.build_optimizer({"name": "sgd", "momentum": 0.9}, 0.1, loss_scaling=True)
    optimizer.build(model.trainable_variables)
    trainer = Trainer(model, optimizer, tf.distribute.get_strategy(), 2, num_classes=3, clip_norm=1.0)
    before, scale = [v.numpy().copy() for v in model.trainable_variables], float(optimizer.dynamic_scale.numpy())
    bad = np.ones((2, 4), np.float32)
    bad[0, 0] = np.inf
    trainer.train_steps(iter([(bad, np.array([0, 1]))]), 1)
    for old, new in zip(before, model.trainable_variables):
        np.testing.assert_array_equal(old, new.numpy())
    assert float(optimizer.dynamic_scale.numpy()) == scale / 2


@pytest.mark.parametrize("name", ["adamw", "lars"])
def test_decay_exclusions_hold_under_a_mirrored_strategy(name):
    """With zero gradients only the decay moves a weight: the kernel shrinks, the bias does not,
    also when the update runs per replica on mirrored variables."""
    strategy = runtime.make_strategy("mirrored", cpu_replicas=2)
    with strategy.scope():
        kernel = keras.Variable(np.ones((2, 2), "float32"))
        bias = keras.Variable(np.ones((2,), "float32"))
        opt = optim.build_optimizer({"name": name, "weight_decay": 0.1}, 0.5, variables=[kernel, bias])
        opt.build([kernel, bias])

    @tf.function
    def step():
        strategy.run(lambda: opt.apply_gradients([(tf.zeros((2, 2)), kernel), (tf.zeros((2,)), bias)]))

    step()
    np.testing.assert_allclose(kernel.numpy(), np.full((2, 2), 1 - 0.5 * 0.1), rtol=1e-6)
    np.testing.assert_array_equal(bias.numpy(), np.ones(2))
