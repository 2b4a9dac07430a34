"""Deterministic evaluation of a Keras classifier over fixed data, under a tf.distribute strategy.

Two evaluators share one data path: the examples are held in memory, one copy per replica
device, and visited in their given order in GLOBAL batches of a fixed evaluation batch size (the
last batch may be partial); every global batch is cut into contiguous per-replica slices, as
equal as possible, inside one `tf.function` loop. The model is called as
`model(x, training=False)` (dropout off; BN as the model's BN mode says). Every replica returns
SUMS over its slice; the sums are reduced with `ReduceOp.SUM` and divided by the number of
examples once at the end, so partial batches and uneven replica splits are exact.

- `evaluate` / `Evaluator`: mean softmax cross-entropy (nats, from logits) and accuracy.
- `LossAndGradient`: value and gradient of that mean loss with respect to all trainable weights,
  flattened in `model.trainable_variables` order; it can evaluate at any flat weight vector and
  is traceable, so a solver can call it from inside its own `tf.function`.

Neither changes a model variable: they never run the model in training mode, and
`LossAndGradient` restores the trainable weights bit for bit after every evaluation.
Build the model under `strategy.scope()` when evaluating under a multi-replica strategy.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import tensorflow as tf


class EvaluationError(ValueError):
    """Bad input to an evaluator (empty data, mismatched lengths, bad batch size, ...)."""


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """Mean cross-entropy `loss` (nats), `accuracy` in [0, 1], over `num_examples` examples."""

    loss: float
    accuracy: float
    num_examples: int


def _checked_data(features, labels, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features)
    labels = np.asarray(labels)
    if features.ndim < 1 or features.shape[0] == 0:
        raise EvaluationError("evaluation data is empty: pass at least one example")
    if labels.ndim != 1:
        raise EvaluationError(
            f"labels must be a vector of class ids, got shape {labels.shape}: pass sparse "
            "integer labels, not one-hot")
    if labels.shape[0] != features.shape[0]:
        raise EvaluationError(
            f"features have {features.shape[0]} examples but labels {labels.shape[0]}: pass "
            "one label per example")
    if not np.issubdtype(labels.dtype, np.integer):
        raise EvaluationError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.min() < 0:
        raise EvaluationError(f"labels must be >= 0, got {labels.min()}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size <= 0:
        raise EvaluationError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not np.issubdtype(features.dtype, np.floating):
        features = features.astype(np.float32)
    return features, labels.astype(np.int32)


class _Batches:
    """The evaluation data on every replica device, and each replica's slice of a global batch.

    Global batch b holds examples [b * batch_size, min((b + 1) * batch_size, N)); replica r of R
    takes the r-th of R contiguous, nearly equal parts of it (sizes differ by at most one, the
    first ones larger; a part is empty when the batch has fewer than R examples).
    """

    def __init__(self, features: np.ndarray, labels: np.ndarray, batch_size: int,
                 strategy: tf.distribute.Strategy):
        self.strategy = strategy
        self.num_examples = int(features.shape[0])
        self.batch_size = int(batch_size)
        self.num_batches = -(-self.num_examples // self.batch_size)
        host_x, host_y = tf.constant(features), tf.constant(labels)
        self.features = strategy.experimental_distribute_values_from_function(
            lambda _: tf.identity(host_x))
        self.labels = strategy.experimental_distribute_values_from_function(
            lambda _: tf.identity(host_y))

    def replica_slice(self, features, labels, batch):
        """(x, y) of this replica's part of global batch `batch`; call in replica context."""
        replicas = self.strategy.num_replicas_in_sync
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        start = batch * self.batch_size
        size = tf.minimum(self.batch_size, self.num_examples - start)
        base, extra = size // replicas, size % replicas
        offset = start + replica * base + tf.minimum(replica, extra)
        count = base + tf.cast(replica < extra, tf.int32)
        return features[offset:offset + count], labels[offset:offset + count]


def compile_method(method, **options):
    """`tf.function(method, **options)` for a bound method, with retracing statistics of its own.

    TensorFlow keys its "excessive retracing" statistics by the code object of the Python
    function it compiles, which a method (or a closure made in one place) shares with every
    instance. The evaluators, objectives and solvers each compile their method once per
    instance and trace it once, yet after five instances had traced TensorFlow warned that
    "5 out of the last 5 calls ... triggered tf.function retracing". A ``functools.partial``
    has no code object, so TensorFlow keys the statistics by the partial itself, i.e. per
    instance: a function that really retraces is still reported.
    """
    call = functools.partial(method)
    call.__name__ = method.__name__  # The tf.function's name in traces and profiles.
    return tf.function(call, **options)


def _example_losses(model, x, y):
    logits = tf.cast(model(x, training=False), tf.float32)
    return logits, tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)


class Evaluator:
    """Evaluates `model` repeatedly on one fixed data set.

    The distributed dataset and the compiled evaluation function are built once, so calling
    the evaluator after every epoch costs one pass over the data and no retracing.

    Args:
      model: a Keras model mapping features to float LOGITS [batch, num_classes].
      features: array [N, ...], fed in the given order.
      labels: integer class ids [N].
      batch_size: GLOBAL evaluation batch (split over the replicas). It matters for models whose
        BN normalises with batch statistics at evaluation time.
      strategy: the tf.distribute strategy to evaluate under; None means the current one
        (`tf.distribute.get_strategy()`, the default strategy outside any scope).
    """

    def __init__(self, model, features, labels, *, batch_size: int, strategy=None):
        features, labels = _checked_data(features, labels, batch_size)
        self._model = model
        self._strategy = strategy or tf.distribute.get_strategy()
        self.num_examples = int(features.shape[0])
        self.batch_size = int(batch_size)
        self._batches = _Batches(features, labels, self.batch_size, self._strategy)
        self._run = compile_method(self._sums)

    def _replica_sums(self, features, labels, batch):
        x, y = self._batches.replica_slice(features, labels, batch)
        logits, losses = _example_losses(self._model, x, y)
        correct = tf.cast(tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), y), tf.int32)
        return tf.reduce_sum(losses), tf.reduce_sum(correct)

    def _sums(self):
        strategy, data = self._strategy, self._batches
        loss_sum = tf.zeros([], tf.float64)
        correct = tf.zeros([], tf.int64)
        for batch in tf.range(data.num_batches):
            loss, right = strategy.run(self._replica_sums,
                                       args=(data.features, data.labels, batch))
            loss_sum += tf.cast(strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None),
                                tf.float64)
            correct += tf.cast(strategy.reduce(tf.distribute.ReduceOp.SUM, right, axis=None),
                               tf.int64)
        return loss_sum, correct

    def __call__(self) -> EvalResult:
        loss_sum, correct = self._run()
        n = self.num_examples
        return EvalResult(loss=float(loss_sum) / n, accuracy=int(correct) / n, num_examples=n)


def evaluate(model, features, labels, *, batch_size: int, strategy=None) -> EvalResult:
    """Mean softmax cross-entropy and accuracy of `model` over all examples, each once.

    One-shot form of `Evaluator` (see there for the arguments); use `Evaluator` to evaluate the
    same data repeatedly without rebuilding the dataset and retracing.
    """
    return Evaluator(model, features, labels, batch_size=batch_size, strategy=strategy)()


class LossAndGradient:
    """f(w) = mean softmax cross-entropy over fixed data, and its gradient, at flat weights w.

    w is every trainable weight of the model, flattened in `model.trainable_variables` order
    (`num_weights` entries, the model's variable dtype). Calling the object with a flat vector
    assigns it to the model's variables, makes one pass over the data computing summed losses
    and summed gradients per replica (reduced with SUM, divided by N once), and restores the
    weights that were there before the call, bit for bit. All of this is TensorFlow ops, so the
    call can be traced into a solver's own `tf.function`; called eagerly it runs compiled.

    Arguments as for `Evaluator`.
    """

    def __init__(self, model, features, labels, *, batch_size: int, strategy=None):
        features, labels = _checked_data(features, labels, batch_size)
        self._variables = list(model.trainable_variables)
        if not self._variables:
            raise EvaluationError(
                "the model has no trainable weights: build it (call it once or give it an "
                "Input) and leave some layers trainable")
        self._model = model
        self._strategy = strategy or tf.distribute.get_strategy()
        self._shapes = [tuple(v.shape) for v in self._variables]
        self._sizes = [int(np.prod(s, dtype=np.int64)) for s in self._shapes]
        self.num_weights = int(sum(self._sizes))
        self.dtype = tf.as_dtype(self._variables[0].dtype)
        self.num_examples = int(features.shape[0])
        self.batch_size = int(batch_size)
        self._batches = _Batches(features, labels, self.batch_size, self._strategy)
        self._eager_value_and_gradient = compile_method(self.value_and_gradient)
        self._eager_value = compile_method(self.value)

    def flat_weights(self) -> tf.Tensor:
        """The current trainable weights as one flat vector [num_weights]."""
        return tf.concat([tf.reshape(tf.cast(v.value, self.dtype), [-1])
                          for v in self._variables], axis=0)

    def _assign(self, flat: tf.Tensor) -> None:
        parts = tf.split(tf.cast(flat, self.dtype), self._sizes)
        for variable, part, shape in zip(self._variables, parts, self._shapes, strict=True):
            variable.assign(tf.reshape(part, shape))

    def _replica_sums(self, features, labels, batch, with_gradient: bool):
        x, y = self._batches.replica_slice(features, labels, batch)
        with tf.GradientTape() as tape:
            _, losses = _example_losses(self._model, x, y)
            loss = tf.reduce_sum(losses)
        if not with_gradient:
            return loss
        grads = tape.gradient(loss, self._variables,
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return loss, tf.concat([tf.reshape(tf.cast(g, self.dtype), [-1]) for g in grads], 0)

    def _sums_at_current_weights(self, with_gradient: bool):
        strategy, data = self._strategy, self._batches
        total = tf.zeros([], tf.float64)
        grad = tf.zeros([self.num_weights], self.dtype)
        for batch in tf.range(data.num_batches):
            out = strategy.run(self._replica_sums,
                               args=(data.features, data.labels, batch, with_gradient))
            loss = out[0] if with_gradient else out
            total += tf.cast(strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None),
                             tf.float64)
            if with_gradient:
                grad += strategy.reduce(tf.distribute.ReduceOp.SUM, out[1], axis=None)
        return total, grad

    def value_and_gradient(self, flat: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(f(flat) as float64 scalar, gradient [num_weights] in the model dtype). Traceable."""
        saved = self.flat_weights()
        self._assign(flat)
        total, grad = self._sums_at_current_weights(with_gradient=True)
        with tf.control_dependencies([total, grad]):
            self._assign(saved)
        n = self.num_examples
        return total / n, grad / tf.cast(n, self.dtype)

    @property
    def variables(self) -> list:
        """The model's trainable variables, in the order of the flat weight vector."""
        return list(self._variables)

    def unflatten(self, flat: tf.Tensor) -> list[tf.Tensor]:
        """A flat vector [num_weights] as tensors shaped like `variables`, in their order."""
        parts = tf.split(tf.cast(flat, self.dtype), self._sizes)
        return [tf.reshape(part, shape) for part, shape in zip(parts, self._shapes, strict=True)]

    def flatten(self, tensors) -> tf.Tensor:
        """Tensors shaped like `variables` as one flat vector [num_weights] in the model dtype."""
        return tf.concat([tf.reshape(tf.cast(t, self.dtype), [-1]) for t in tensors], axis=0)

    def summed_loss(self, x, y) -> tf.Tensor:
        """The summed cross-entropy of the model over the examples (x, y), at the current
        weights; the building block of per-replica sums (`mean_over_data`)."""
        return tf.reduce_sum(_example_losses(self._model, x, y)[1])

    def mean_over_data(self, flat: tf.Tensor, replica_sum) -> tf.Tensor:
        """(1/N) * the sum over the fixed data of replica_sum(x, y), at weights `flat`. Traceable.

        `replica_sum(x, y)` runs in replica context on each replica's slice of every global
        batch (the slicing, order and batch size of `value_and_gradient`) and returns a SUM
        over its examples as a vector [num_weights] in the model dtype, e.g. a Hessian-vector
        product of `summed_loss`. The slices' sums are reduced with `ReduceOp.SUM` and divided
        by N once; the weights present before the call are restored afterwards.
        """
        strategy, data = self._strategy, self._batches
        saved = self.flat_weights()
        self._assign(flat)

        def replica_part(features, labels, batch):
            return replica_sum(*data.replica_slice(features, labels, batch))

        total = tf.zeros([self.num_weights], self.dtype)
        for batch in tf.range(data.num_batches):
            part = strategy.run(replica_part, args=(data.features, data.labels, batch))
            total += strategy.reduce(tf.distribute.ReduceOp.SUM, part, axis=None)
        with tf.control_dependencies([total]):
            self._assign(saved)
        return total / tf.cast(self.num_examples, self.dtype)

    def value(self, flat: tf.Tensor) -> tf.Tensor:
        """f(flat) as a float64 scalar, without the backward pass. Traceable."""
        saved = self.flat_weights()
        self._assign(flat)
        total, _ = self._sums_at_current_weights(with_gradient=False)
        with tf.control_dependencies([total]):
            self._assign(saved)
        return total / self.num_examples

    def __call__(self, flat) -> tuple[tf.Tensor, tf.Tensor]:
        """Compiled `value_and_gradient` for eager callers (inside a tf.function, call that)."""
        if tf.inside_function():
            return self.value_and_gradient(flat)
        return self._eager_value_and_gradient(tf.convert_to_tensor(flat, self.dtype))

    def value_only(self, flat) -> tf.Tensor:
        """Compiled `value` for eager callers."""
        if tf.inside_function():
            return self.value(flat)
        return self._eager_value(tf.convert_to_tensor(flat, self.dtype))
