"""The optimizers of a run: ADAM (through TensorFlow's fused kernel), SGD with momentum and
Adagrad, wrapped for dynamic loss scaling under mixed_float16."""

from __future__ import annotations

import keras
import tensorflow as tf

from lbgap_tf.train import schedules
from lbgap_tf.train.config import TrainConfig


class FusedAdam(keras.optimizers.Adam):
    """``keras.optimizers.Adam`` whose per-variable update is TensorFlow's fused
    ``ResourceApplyAdam`` kernel: the same arithmetic as Keras' update (alpha = lr *
    sqrt(1 - beta_2^t) / (1 - beta_1^t); m += (g - m)(1 - beta_1); v += (g^2 - v)(1 - beta_2);
    w -= alpha m / (sqrt(v) + epsilon)) in one pass over memory instead of about ten, which
    matters for small batches, where the update costs as much as the forward pass. Same
    variables and checkpoints as Keras' Adam; works per replica under tf.distribute."""

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        index = self._get_variable_index(variable)
        tf.raw_ops.ResourceApplyAdam(
            var=_handle(variable), m=_handle(self._momentums[index]),
            v=_handle(self._velocities[index]),
            beta1_power=tf.pow(tf.cast(self.beta_1, dtype), step),
            beta2_power=tf.pow(tf.cast(self.beta_2, dtype), step),
            lr=tf.cast(learning_rate, dtype), beta1=tf.cast(self.beta_1, dtype),
            beta2=tf.cast(self.beta_2, dtype), epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype))


def _handle(variable):
    """The resource handle of a Keras or TensorFlow variable (under tf.distribute, of the
    component on the device being updated)."""
    if isinstance(variable, keras.Variable):
        variable = variable.value
    return variable.handle


def make_optimizer(config: TrainConfig, num_train: int) -> keras.optimizers.Optimizer:
    """A fresh optimizer for the resolved ``config`` (build it inside the strategy's scope);
    its rate follows the config's LR scaling and warm-up (``schedules.learning_rate``) over a
    training set of ``num_train`` examples."""
    rate = schedules.learning_rate(config, num_train)
    if config.optimizer == "adam":
        optimizer = FusedAdam(rate, beta_1=0.9, beta_2=0.999, epsilon=config.adam_epsilon)
    elif config.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(rate, momentum=config.momentum)
    else:
        optimizer = keras.optimizers.Adagrad(rate)
    if config.precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
