"""The six networks of Keskar et al. (ICLR 2017), Table 1, as uncompiled Keras models.

Every model maps a batch of inputs to float32 LOGITS (the loss is softmax cross-entropy from
logits), so the same model serves training, evaluation and the sharpness metric. Shapes:

- F1, F2 take flat vectors ``[batch, features]`` (784 for MNIST, 360 for TIMIT frames);
- C1-C4 take images ``[batch, height, width, channels]`` (32x32x3 for CIFAR).

Batch normalisation comes in two modes (``BN_MODES``):

- ``"moving"``: standard Keras BN, batch statistics in training and moving averages at
  inference;
- ``"batch"``: the authors' Keras 1 ``mode=2``: batch statistics in training AND at inference,
  so ``model(x, training=False)`` depends on the other examples of the batch, and inference
  never reads or updates the moving statistics. Evaluation batch size is then part of the
  result.

BN layers are synchronised across tf.distribute replicas by default, so a global batch split
over N replicas normalises with the statistics of the whole global batch, exactly as on one
device. Keras' synchronised statistics are E[x^2] - E[x]^2 in float32, which loses digits
when |mean| >> std; the layers here take that path only when there is more than one replica,
and the two-pass moments (mean, then mean squared deviation) on one replica.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import tensorflow as tf
from keras import layers, ops

MODEL_NAMES = ("F1", "F2", "C1", "C2", "C3", "C4")
BN_MODES = ("moving", "batch")

# Keras-default BN hyper-parameters (PAPER.md: "All BN: Keras defaults").
_BN_EPSILON = 1e-3
_BN_MOMENTUM = 0.99


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Paper facts about one network: its dataset, input shape, classes and size.

    ``paper_params`` counts trainable weights (kernels, biases, BN gamma and beta) as in
    Table 1 of the paper; BN moving statistics are not trainable and not counted.
    """

    name: str
    dataset: str
    input_shape: tuple[int, ...]
    num_classes: int
    flat_input: bool
    paper_params: int
    description: str


_SPECS = {
    "F1": ModelSpec("F1", "mnist", (784,), 10, True, 1_462_794,
                    "5 x [Dense 512, BN, ReLU] -> Dense 10"),
    "F2": ModelSpec("F2", "timit", (360,), 1973, True, 2_780_085,
                    "7 x [Dense 512, BN, ReLU] -> Dense 1973"),
    "C1": ModelSpec("C1", "cifar10", (32, 32, 3), 10, False, 1_757_834,
                    "shallow conv net (AlexNet-like), 2 conv + 3 dense layers"),
    "C2": ModelSpec("C2", "cifar10", (32, 32, 3), 10, False, 14_991_946,
                    "VGG-16 style conv net with BN and dropout"),
    "C3": ModelSpec("C3", "cifar100", (32, 32, 3), 100, False, 1_775_204,
                    "as C1 with 100 classes"),
    "C4": ModelSpec("C4", "cifar100", (32, 32, 3), 100, False, 15_038_116,
                    "as C2 with 100 classes"),
}


def spec(name: str) -> ModelSpec:
    """Returns the paper facts of network ``name``; raises ValueError for unknown names."""
    _check_name(name)
    return _SPECS[name]


def _check_name(name: str) -> None:
    if name not in _SPECS:
        raise ValueError(
            f"unknown model {name!r}: choose one of {', '.join(MODEL_NAMES)}"
        )


def _replicas_in_sync() -> int:
    """Replicas computing the current step (1 outside a tf.distribute replica context)."""
    context = tf.distribute.get_replica_context()
    return context.num_replicas_in_sync if context is not None else 1


@keras.saving.register_keras_serializable(package="lbgap_tf")
class ReplicaAwareBatchNormalization(layers.BatchNormalization):
    """Keras BatchNormalization whose ``synchronized=True`` takes effect only with several
    replicas.

    Keras' synchronised moments all-reduce sum(x) and sum(x^2) and take E[x^2] - E[x]^2 even
    on one device, where float32 cancellation makes the variance measurably wrong at large
    mean/std ratios (a relative error of about ulp(E[x^2]) / var). On one replica this layer
    computes two-pass moments instead (the mean, then the mean squared deviation from it;
    ``_two_pass_moments``); with several it synchronises as Keras does, so the statistics are
    the global batch's on any replica count.
    """

    def _moments(self, inputs, mask):
        if self.synchronized and mask is None and _replicas_in_sync() == 1:
            return _two_pass_moments(inputs, self._reduction_axes)
        return super()._moments(inputs, mask)


def _two_pass_moments(inputs, axes):
    """Mean and (biased) variance of ``inputs`` over ``axes`` by two passes, differentiable
    twice.

    ``tf.nn.moments`` (and so ``keras.ops.moments``) stops the gradient at the mean inside the
    variance: first derivatives are unaffected (the variance is stationary in the mean), but
    second derivatives lose the mean's term, so Hessian-vector products through one-device BN
    with batch statistics would be wrong. Half-precision inputs are reduced in float32, as
    ``keras.ops.moments`` does.
    """
    dtype = inputs.dtype
    if dtype in (tf.float16, tf.bfloat16):
        inputs = tf.cast(inputs, tf.float32)
    mean = tf.reduce_mean(inputs, axis=axes, keepdims=True)
    variance = tf.reduce_mean(tf.square(inputs - mean), axis=axes)
    return tf.cast(tf.squeeze(mean, axis=axes), dtype), tf.cast(variance, dtype)


@keras.saving.register_keras_serializable(package="lbgap_tf")
class BatchStatisticsNormalization(ReplicaAwareBatchNormalization):
    """BatchNormalization that uses the current batch's statistics at inference too.

    Reproduces Keras 1 ``BatchNormalization(mode=2)``, which the paper's authors used. In
    training (``training=True``) it is standard Keras BN, moving statistics updated as usual
    (they are kept so that a model can be switched to ``"moving"`` mode later). At inference
    it normalises each batch with that batch's own mean and variance (synchronised across
    replicas when ``synchronized=True``) and never touches the moving statistics.
    """

    def call(self, inputs, training=None, mask=None):
        if training:
            return super().call(inputs, training=True, mask=mask)
        inputs = ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        mean, variance = self._moments(inputs, mask)
        outputs = ops.batch_normalization(
            x=inputs,
            mean=mean,
            variance=variance,
            axis=self.axis,
            offset=ops.cast(self.beta, inputs.dtype) if self.center else None,
            scale=ops.cast(self.gamma, inputs.dtype) if self.scale else None,
            epsilon=self.epsilon,
        )
        return ops.cast(outputs, self.compute_dtype)


@keras.saving.register_keras_serializable(package="lbgap_tf")
class GhostBatchNormalization(layers.BatchNormalization):
    """BatchNormalization whose training statistics are those of each GHOST batch.

    Ghost batch normalization (Hoffer et al. 2017): in training, the batch (on each replica,
    its own slice; never synchronised across replicas) is cut into consecutive chunks of
    ``ghost_batch`` examples, and every chunk is normalised with its own mean and (biased)
    variance, as if it had been a small batch of its own. The moving statistics move toward
    the average of the chunks' means and variances over the GLOBAL batch (all-reduced across
    replicas; the momentum update of Keras BN, once per step). At inference it is standard
    Keras BN (moving statistics). Same weights as ``BatchNormalization``, so x0 files and
    checkpoints are interchangeable with plain BN.
    A ghost batch of the whole (per-replica) batch is plain, unsynchronised BN.
    """

    def __init__(self, ghost_batch: int, **kwargs):
        kwargs["synchronized"] = False
        super().__init__(**kwargs)
        self.ghost_batch = int(ghost_batch)

    def get_config(self):
        config = super().get_config()
        config["ghost_batch"] = self.ghost_batch
        config.pop("synchronized", None)
        return config

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable) or mask is not None:
            return super().call(inputs, training=training, mask=mask)
        inputs = ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        rank = len(inputs.shape)
        axis = self.axis % rank
        # [batch, ...] -> [ghosts, ghost_batch, ...]; moments per ghost over its examples and
        # every axis but the channel axis (shifted by one by the new leading axis).
        ghosts = ops.reshape(inputs, (-1, self.ghost_batch, *inputs.shape[1:]))
        axes = [1] + [a + 1 for a in range(1, rank) if a != axis]
        mean = ops.mean(ghosts, axis=axes, keepdims=True)
        variance = ops.mean(ops.square(ghosts - mean), axis=axes, keepdims=True)
        outputs = (ghosts - mean) * ops.rsqrt(variance + self.epsilon)
        if self.scale:
            outputs = outputs * ops.cast(self.gamma, inputs.dtype)
        if self.center:
            outputs = outputs + ops.cast(self.beta, inputs.dtype)
        outputs = ops.reshape(outputs, ops.shape(inputs))
        step_mean = ops.reshape(ops.mean(mean, axis=0), (-1,))
        step_variance = ops.reshape(ops.mean(variance, axis=0), (-1,))
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            # Keras keeps one unaggregated copy of the moving statistics per replica and saves
            # the first: every replica moves its copy by the mean over ALL ghosts of the
            # global batch, so the copies stay equal and the saved model is every replica's.
            step_mean, step_variance = context.all_reduce(
                tf.distribute.ReduceOp.MEAN, [step_mean, step_variance])
        self.moving_mean.assign(
            ops.cast(self.moving_mean, inputs.dtype) * self.momentum
            + step_mean * (1.0 - self.momentum))
        self.moving_variance.assign(
            ops.cast(self.moving_variance, inputs.dtype) * self.momentum
            + step_variance * (1.0 - self.momentum))
        return ops.cast(outputs, self.compute_dtype)


@keras.saving.register_keras_serializable(package="lbgap_tf")
class GhostBatchStatisticsNormalization(GhostBatchNormalization, BatchStatisticsNormalization):
    """Ghost batch normalization in training, the current batch's statistics at inference
    (``bn_mode="batch"``, the authors' Keras 1 ``mode=2``)."""

    def call(self, inputs, training=None, mask=None):
        if training:
            return GhostBatchNormalization.call(self, inputs, training=True, mask=mask)
        return BatchStatisticsNormalization.call(self, inputs, training=False, mask=mask)


class _Builder:
    """Creates the layers of one model with a shared BN configuration."""

    def __init__(self, bn_mode: str, bn_synchronized: bool, ghost_batch: int | None = None):
        if bn_mode not in BN_MODES:
            raise ValueError(
                f"unknown bn_mode {bn_mode!r}: choose one of {', '.join(BN_MODES)}"
            )
        if ghost_batch is not None and ghost_batch < 1:
            raise ValueError(f"ghost_batch must be a positive integer, got {ghost_batch}")
        self._bn_class = (
            BatchStatisticsNormalization if bn_mode == "batch"
            else ReplicaAwareBatchNormalization
        )
        self._bn_synchronized = bn_synchronized
        self._ghost_batch = ghost_batch

    def bn(self):
        if self._ghost_batch is not None:
            ghost_class = (GhostBatchStatisticsNormalization
                           if self._bn_class is BatchStatisticsNormalization
                           else GhostBatchNormalization)
            return ghost_class(self._ghost_batch, epsilon=_BN_EPSILON, momentum=_BN_MOMENTUM)
        return self._bn_class(
            epsilon=_BN_EPSILON, momentum=_BN_MOMENTUM, synchronized=self._bn_synchronized
        )

    def dense_bn_relu(self, x, units):
        x = layers.Dense(units)(x)
        x = self.bn()(x)
        return layers.ReLU()(x)

    def conv_bn_relu(self, x, filters, kernel_size):
        x = layers.Conv2D(filters, kernel_size, padding="same")(x)
        x = self.bn()(x)
        return layers.ReLU()(x)


def _logits(x, num_classes):
    """Final Dense layer; the output is cast to float32 for mixed-precision policies."""
    x = layers.Dense(num_classes, name="logits")(x)
    return layers.Activation("linear", dtype="float32", name="logits_float32")(x)


def _fully_connected(b: _Builder, inputs, num_classes, hidden_layers):
    x = inputs
    for _ in range(hidden_layers):
        x = b.dense_bn_relu(x, 512)
    return _logits(x, num_classes)


def _shallow_conv(b: _Builder, inputs, num_classes):
    """C1 / C3: two 5x5 conv blocks with overlapping max pooling, then 384-192 dense."""
    x = inputs
    for _ in range(2):
        x = b.conv_bn_relu(x, 64, 5)
        x = layers.MaxPooling2D(pool_size=3, strides=2, padding="same")(x)
    x = layers.Flatten()(x)
    for units in (384, 192):
        x = b.dense_bn_relu(x, units)
        x = layers.Dropout(0.5)(x)
    return _logits(x, num_classes)


_VGG_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def _vgg(b: _Builder, inputs, num_classes):
    """C2 / C4: VGG-16 with BN; dropout 0.3 after the very first conv, 0.4 after every
    other conv that is not the last of its block; 2x2 max pooling after each block."""
    x = inputs
    for block_index, block in enumerate(_VGG_BLOCKS):
        for conv_index, filters in enumerate(block):
            x = b.conv_bn_relu(x, filters, 3)
            if conv_index < len(block) - 1:
                x = layers.Dropout(0.3 if block_index == conv_index == 0 else 0.4)(x)
        x = layers.MaxPooling2D(pool_size=2, strides=2, padding="same")(x)
    x = layers.Flatten()(x)
    x = layers.Dropout(0.5)(x)
    x = b.dense_bn_relu(x, 512)
    x = layers.Dropout(0.5)(x)
    return _logits(x, num_classes)


def build(
    name: str,
    *,
    input_shape: tuple[int, ...] | None = None,
    num_classes: int | None = None,
    bn_mode: str = "moving",
    bn_synchronized: bool = True,
    ghost_batch: int | None = None,
) -> keras.Model:
    """Builds network ``name`` (one of ``MODEL_NAMES``) as an uncompiled Keras model.

    Args:
      name: "F1", "F2", "C1", "C2", "C3" or "C4".
      input_shape: per-example input shape without the batch axis. Defaults to the paper's
        (784,), (360,) or (32, 32, 3). F-nets need a flat shape ``(d,)``; C-nets an image
        shape ``(height, width, channels)``, e.g. (28, 28, 1) to run on MNIST.
      num_classes: number of output logits; defaults to the paper's class count.
      bn_mode: "moving" (standard Keras BN) or "batch" (batch statistics at inference too,
        as the authors' Keras 1 ``mode=2``).
      bn_synchronized: synchronise BN batch statistics across tf.distribute replicas, so the
        statistics are those of the GLOBAL batch whatever the replica count.
      ghost_batch: None for standard BN; k for ghost batch normalization
        (``GhostBatchNormalization``): training statistics per chunk of k examples of each
        replica's batch (never synchronised).

    Returns:
      A ``keras.Model`` named ``name`` mapping ``[batch, *input_shape]`` to float32 logits
      ``[batch, num_classes]``. Weights are initialised with Keras defaults from Keras' global
      seed (``keras.utils.set_random_seed``).
    """
    model_spec = spec(name)
    input_shape = tuple(input_shape) if input_shape is not None else model_spec.input_shape
    num_classes = model_spec.num_classes if num_classes is None else num_classes
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    if model_spec.flat_input and len(input_shape) != 1:
        raise ValueError(
            f"{name} is fully connected and takes flat inputs (d,), got {input_shape}: "
            "flatten the data (data.load_split(..., flatten=True))"
        )
    if not model_spec.flat_input and len(input_shape) != 3:
        raise ValueError(
            f"{name} is convolutional and takes images (height, width, channels), got "
            f"{input_shape}: load the data unflattened"
        )
    if any(dim < 1 for dim in input_shape):
        raise ValueError(f"input_shape must be positive, got {input_shape}")

    builder = _Builder(bn_mode, bn_synchronized, ghost_batch)
    inputs = keras.Input(shape=input_shape, name="inputs")
    if name == "F1":
        outputs = _fully_connected(builder, inputs, num_classes, hidden_layers=5)
    elif name == "F2":
        outputs = _fully_connected(builder, inputs, num_classes, hidden_layers=7)
    elif name in ("C1", "C3"):
        outputs = _shallow_conv(builder, inputs, num_classes)
    else:
        outputs = _vgg(builder, inputs, num_classes)
    return keras.Model(inputs, outputs, name=name)


def bn_mode_of(model: keras.Model) -> str | None:
    """Returns "batch" or "moving" for a model built here, None if it has no BN layer."""
    kinds = {
        "batch" if isinstance(layer, BatchStatisticsNormalization) else "moving"
        for layer in model.layers
        if isinstance(layer, layers.BatchNormalization)
    }
    if not kinds:
        return None
    if len(kinds) > 1:
        raise ValueError(f"model {model.name} mixes BN modes {sorted(kinds)}")
    return kinds.pop()


def count_trainable(model: keras.Model) -> int:
    """Number of trainable scalars (what Table 1 of the paper counts)."""
    return sum(math.prod(w.shape) for w in model.trainable_weights)
