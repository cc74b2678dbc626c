"""LARS (You, Gitman & Ginsburg 2017, "Large Batch Training of Convolutional Networks"), which
Keras 3 does not have.

Algorithm 1 of the paper, per layer (variable) w with gradient g, weight decay beta, trust
coefficient eta, momentum m and global learning rate gamma:

    local_lr = eta * ||w|| / (||g|| + beta * ||w||)
    v = m * v + gamma * local_lr * (g + beta * w)
    w = w - v

Variables excluded from weight decay (BN gamma/beta and biases unless optimizer.decay_bn, set
with `exclude_from_weight_decay` as for Keras' optimizers) are also excluded from the layer-wise
adaptation, as is usual (e.g. the MLPerf ResNet reference): they take plain momentum SGD. The
exclusions hold whatever the decay: with weight_decay=0 the excluded variables still take plain
momentum SGD (optim.build_optimizer sets them for LARS always).
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="resnet_train")
class LARS(keras.optimizers.Optimizer):
    def __init__(
        self,
        learning_rate=0.1,
        momentum: float = 0.9,
        eta: float = 0.001,
        weight_decay: float = 0.0,
        epsilon: float = 1e-9,
        name="lars",
        **kwargs,
    ):
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, name=name, **kwargs)
        self.momentum, self.eta, self.epsilon = float(momentum), float(eta), float(epsilon)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.velocities = self.add_optimizer_variables(variables, "velocity")

    def _apply_weight_decay(self, variables):
        """The decay is inside the trust ratio (update_step), not Keras' decoupled step."""

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        grad = ops.cast(gradient, variable.dtype)
        if self._use_weight_decay(variable):
            decay = ops.cast(self.weight_decay or 0.0, variable.dtype)
            w_norm = ops.sqrt(ops.sum(ops.square(variable)))
            g_norm = ops.sqrt(ops.sum(ops.square(grad)))
            # A zero norm (fresh zero-initialised layer, zero gradient) falls back to ratio 1.
            local_lr = ops.where(
                ops.logical_and(w_norm > 0, g_norm > 0),
                self.eta * w_norm / (g_norm + decay * w_norm + self.epsilon),
                ops.ones_like(w_norm),
            )
            grad = local_lr * (grad + decay * variable)
        velocity = self.velocities[self._get_variable_index(variable)]
        self.assign(velocity, ops.add(ops.multiply(velocity, self.momentum), ops.multiply(grad, lr)))
        self.assign_sub(variable, velocity)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "eta": self.eta, "epsilon": self.epsilon}
