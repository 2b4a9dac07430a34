"""The compiled training steps of a run, one implementation for every tf.distribute strategy.

A ``tf.function`` runs up to ``steps_per_call`` steps per call, each step calling
``strategy.run`` with the GLOBAL batch's example indices. Every replica takes its own
contiguous slice of the global batch, computes the per-example cross-entropy and divides its
sum by the GLOBAL batch size: what ``tf.nn.compute_average_loss(..., global_batch_size=GLOBAL)``
computes, without that function's run-time Assert on the batch size, which XLA
(``jit_compile``) ignores with a logged warning every time it compiles the steps. The
optimizer sums the replicas' gradients, so the update is the gradient of the mean loss over
the whole global batch, and N replicas follow the trajectory of one device (up to float
reassociation).
BatchNorm is synchronised across replicas by default (LB's BN sees the whole global batch);
per-replica BN statistics (a ghost-batch experiment) are selectable and recorded. Dropout
(C1-C4) is the exception: every replica draws its masks from the same seed state, so C-net
trajectories depend on the replica count.

The training set stays on the replica devices as one tensor per device; each step gathers its
examples from it by index. The global batch is an argument of each call (batch growth changes
it between epochs); each batch size gets its own compiled function. With an ``augment`` model
(``schedules.make_augmenter``) each replica's examples are augmented before the forward pass.

What one step does with its examples is a STEP RULE, ``rule(objective, x, y) -> (loss,
logits)``, chosen from the config (``lbgap_tf.train.remedies.step_rule``): ``plain_step`` takes
one gradient and one optimizer update; the remedies (conservative, adversarial, SAM) compose
the same ``Objective`` pieces differently. Every rule returns the CLEAN loss and logits of the
current weights on the batch, so history losses and accuracies mean the same for every rule.
"""

from __future__ import annotations

import keras
import tensorflow as tf


class Objective:
    """One replica's view of the training objective inside a step, the pieces step rules use.

    The loss is this replica's share of the mean softmax cross-entropy over the GLOBAL batch
    (its examples' sum divided by the global batch size), so the replicas' gradients SUM to the
    gradient of the global mean; ``apply`` hands gradients to the optimizer, which sums them
    over the replicas. Gradients are of the loss-scaled loss (mixed_float16), as ``apply``
    expects.
    """

    def __init__(self, model, optimizer, global_batch):
        self.model = model
        self.variables = model.trainable_variables
        self._optimizer = optimizer
        self._global_batch = global_batch

    def loss(self, x, y):
        """(loss, float32 logits) of ``x`` in training mode (BN batch statistics, dropout)."""
        logits = tf.cast(self.model(x, training=True), tf.float32)
        per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
        return tf.reduce_sum(per_example) / self._global_batch, logits

    def scale(self, loss):
        """``loss`` times the optimizer's loss scale (1 unless mixed_float16)."""
        return self._optimizer.scale_loss(loss)

    def gradients(self, x, y, penalty=None):
        """(loss, logits, gradients of the scaled loss plus ``penalty()``) at the current
        weights; ``penalty`` (a callable, evaluated under the tape) adds a term to
        differentiate, not to report."""
        with tf.GradientTape() as tape:
            loss, logits = self.loss(x, y)
            total = loss if penalty is None else loss + penalty()
            scaled = self.scale(total)
        return loss, logits, tape.gradient(scaled, self.variables)

    def read_state(self):
        """The current values of the model's non-trainable variables (BN moving statistics,
        dropout RNG states)."""
        return [tf.identity(v.value) for v in self.model.non_trainable_variables]

    def gradients_at(self, weights, state, x, y):
        """(loss, logits, gradients) as ``gradients`` but with the trainable variables at
        ``weights`` and the non-trainable ones at ``state`` (``read_state``), changing NO
        variable: the pass's BN statistics updates and RNG draws are discarded."""
        mapping = [*zip(self.variables, weights, strict=True),
                   *zip(self.model.non_trainable_variables, state, strict=True)]
        with tf.GradientTape() as tape:
            tape.watch(weights)
            with keras.StatelessScope(state_mapping=mapping):
                loss, logits = self.loss(x, y)
            scaled = self.scale(loss)
        return loss, logits, tape.gradient(scaled, weights)

    def apply(self, gradients):
        """One optimizer update of the trainable variables with ``gradients``."""
        self._optimizer.apply_gradients(zip(gradients, self.variables, strict=True))


def plain_step(objective, x, y):
    """The plain step: the gradient of the batch loss, one optimizer update."""
    loss, logits, gradients = objective.gradients(x, y)
    objective.apply(gradients)
    return loss, logits


class TrainSteps:
    """The compiled multi-step training function of one run."""

    def __init__(self, model, optimizer, strategy, features, labels, jit, augment=None,
                 rule=plain_step):
        self._model = model
        self._optimizer = optimizer
        self._rule = rule
        self._strategy = strategy
        self._jit = jit
        self._augment = augment
        host_x = tf.constant(features)
        host_y = tf.constant(labels, dtype=tf.int32)
        # One copy of the data per replica device; each replica gathers its own examples.
        self._x = strategy.experimental_distribute_values_from_function(
            lambda _: tf.identity(host_x))
        self._y = strategy.experimental_distribute_values_from_function(
            lambda _: tf.identity(host_y))
        self._functions = {}  # global batch -> compiled steps

    def _replica_step(self, x_all, y_all, global_indices, global_batch):
        local_batch = global_batch // self._strategy.num_replicas_in_sync
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        indices = global_indices[replica * local_batch:(replica + 1) * local_batch]
        x = tf.gather(x_all, indices)
        y = tf.gather(y_all, indices)
        if self._augment is not None:
            x = self._augment(x, training=True)
        objective = Objective(self._model, self._optimizer, global_batch)
        loss, logits = self._rule(objective, x, y)
        predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
        return loss, tf.reduce_sum(tf.cast(tf.equal(predictions, y), tf.int32))

    def _steps(self, x_all, y_all, permutation, first_step, num_steps, global_batch):
        strategy = self._strategy
        losses = tf.TensorArray(tf.float32, size=num_steps)
        correct = tf.TensorArray(tf.int32, size=num_steps)
        for i in tf.range(num_steps):
            begin = (first_step + i) * global_batch
            indices = permutation[begin:begin + global_batch]
            loss, right = strategy.run(self._replica_step,
                                       args=(x_all, y_all, indices, global_batch))
            losses = losses.write(i, strategy.reduce("SUM", loss, axis=None))
            correct = correct.write(i, strategy.reduce("SUM", right, axis=None))
        return losses.stack(), correct.stack()

    def __call__(self, permutation, first_step: int, num_steps: int, global_batch: int):
        """Runs steps ``first_step .. first_step + num_steps - 1`` of batch ``global_batch``
        of the epoch ordered by ``permutation``; returns the global-batch mean losses and
        correct counts per step."""
        if global_batch not in self._functions:
            self._functions[global_batch] = tf.function(
                lambda *args: self._steps(*args, global_batch=global_batch),
                jit_compile=self._jit)
        losses, correct = self._functions[global_batch](
            self._x, self._y, permutation, tf.constant(first_step, tf.int32),
            tf.constant(num_steps, tf.int32))
        return losses.numpy(), correct.numpy()
