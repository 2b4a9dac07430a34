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
"""

from __future__ import annotations

import tensorflow as tf


class TrainSteps:
    """The compiled multi-step training function of one run."""

    def __init__(self, model, optimizer, strategy, features, labels, jit, augment=None):
        self._model = model
        self._optimizer = optimizer
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
        variables = self._model.trainable_variables
        with tf.GradientTape() as tape:
            logits = tf.cast(self._model(x, training=True), tf.float32)
            per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
            loss = tf.reduce_sum(per_example) / global_batch
            scaled = self._optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled, variables)
        self._optimizer.apply_gradients(zip(gradients, variables, strict=True))
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
