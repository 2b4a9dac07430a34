"""Small-batch (SB) and large-batch (LB) training of one network, as in Keskar et al. 2017.

One training loop serves every tf.distribute strategy (default, one device, mirrored,
multi-worker, TPU): a ``tf.function`` runs up to ``steps_per_call`` steps per call, each
step calling ``strategy.run`` with the GLOBAL batch's example indices. Every replica takes
its own contiguous slice of the global batch, computes the per-example cross-entropy and
``tf.nn.compute_average_loss(..., global_batch_size=GLOBAL)``; the optimizer sums the
replicas' gradients, so the update is the gradient of the mean loss over the whole global
batch, and N replicas follow the trajectory of one device (up to float reassociation).
BatchNorm is synchronised across replicas by default (LB's BN sees the whole global batch);
per-replica BN statistics (a ghost-batch experiment) are selectable and recorded. Dropout
(C1-C4) is the exception: every replica draws its masks from the same seed state, so C-net
trajectories depend on the replica count.

Data: the whole training set stays in memory as one tensor per replica device; every epoch
visits it in the order of a permutation drawn from ``(seed, epoch)`` alone, cut into
``N // batch`` full global batches (the remainder of the permutation is skipped that epoch;
the paper's batches 256/6000 on 60000 examples lose 96/0 examples per epoch). A resumed run
therefore sees exactly the batches an uninterrupted one would.

A run lives in a directory: ``config.json`` (the resolved config), ``x0.npz`` (the initial
weights), ``history.csv`` (one row per epoch), ``checkpoints/`` (model, optimizer and epoch
after every epoch) and, when finished, ``model.keras``. Calling ``train`` again on the same
directory resumes after the last checkpointed epoch and, in deterministic mode (seeds plus
``tf.config.experimental.enable_op_determinism``, a process-wide TensorFlow setting), ends
with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from lbgap_tf import data, distribute, evaluation, models, results

OPTIMIZERS = ("adam", "sgd", "adagrad")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
REGIMES = ("SB", "LB")
SB_BATCH_SIZE = 256  # The paper's small batch.
PAPER_LB_FRACTION = 0.1  # The paper's large batch: 10% of the training set.

HISTORY_FILE = "history.csv"
X0_FILE = "x0.npz"
CONFIG_FILE = "config.json"
MODEL_FILE = "model.keras"
CHECKPOINT_DIR = "checkpoints"


class TrainError(ValueError):
    """A training run cannot start or continue; the message names the problem and the fix."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines one training run (and nothing about where files go).

    Attributes:
      model: network name, one of ``models.MODEL_NAMES``.
      dataset: one of ``data.DATASET_NAMES``; None means the model's paper dataset.
      regime: "SB" or "LB", the label of the run and the default batch size rule.
      batch_size: GLOBAL batch size, summed over all replicas and workers; None means 256 for
        SB and ``round(lb_fraction * training-set size)`` for LB.
      lb_fraction: LB's batch as a fraction of the training set (the paper's 10%).
      epochs: epochs to train, or the cap when plateau stopping is on.
      plateau_patience: 0 trains exactly ``epochs``; k > 0 stops once the epoch's training loss
        has failed k consecutive epochs to improve on the best loss so far by more than
        ``plateau_tol`` (relative), the paper's "until the loss ceased to improve".
      plateau_tol: relative improvement that counts as progress under plateau stopping.
      optimizer: "adam" (Keras defaults beta_1 0.9, beta_2 0.999, as the paper), "sgd" (with
        ``momentum``) or "adagrad". A fresh optimizer state starts every run.
      learning_rate: the optimizer's learning rate (1e-3, the Keras ADAM default).
      momentum: SGD momentum (ignored by the other optimizers).
      bn_mode: "moving" (standard Keras BN) or "batch" (the authors' batch statistics at
        inference too; evaluation batch size then changes the result).
      bn_sync: synchronise BN statistics across replicas (the global batch's statistics).
      precision: Keras dtype policy: "float32", "mixed_bfloat16" or "mixed_float16" (the
        latter with dynamic loss scaling).
      jit_compile: XLA-compile the training steps (single-replica strategies only).
      seed: seeds the initial weights (unless ``x0_path``), data order and dropout.
      deterministic: enable TensorFlow op determinism (process-wide) for bit-reproducible
        runs and resumes.
      eval_every_epoch: evaluate on the full training and test sets after every epoch.
      eval_batch_size: GLOBAL batch size of full-set evaluation (the authors used 5000).
      steps_per_call: training steps per ``tf.function`` call (fewer Python round trips;
        progress is reported between calls).
      x0_path: initial weights (an ``x0.npz`` written by ``save_x0``, e.g. another run's);
        None draws them from ``seed``.
      synthetic: the synthetic task's spec when ``dataset == "synthetic"`` (None: the data
        module's default).
    """

    model: str = "F1"
    dataset: str | None = None
    regime: str = "SB"
    batch_size: int | None = None
    lb_fraction: float = PAPER_LB_FRACTION
    epochs: int = 20
    plateau_patience: int = 0
    plateau_tol: float = 1e-3
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    momentum: float = 0.9
    bn_mode: str = "moving"
    bn_sync: bool = True
    precision: str = "float32"
    jit_compile: bool = False
    seed: int = 0
    deterministic: bool = True
    eval_every_epoch: bool = False
    eval_batch_size: int = 5000
    steps_per_call: int = 100
    x0_path: str | None = None
    synthetic: data.SyntheticSpec | None = None

    def __post_init__(self):
        _choice("model", self.model, models.MODEL_NAMES)
        if self.dataset is not None:
            _choice("dataset", self.dataset, data.DATASET_NAMES)
        _choice("regime", self.regime, REGIMES)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("bn_mode", self.bn_mode, models.BN_MODES)
        _choice("precision", self.precision, PRECISIONS)
        if self.batch_size is not None:
            _positive_int("batch_size", self.batch_size)
        _positive_int("epochs", self.epochs)
        _positive_int("eval_batch_size", self.eval_batch_size)
        _positive_int("steps_per_call", self.steps_per_call)
        if isinstance(self.plateau_patience, bool) or not isinstance(self.plateau_patience, int) \
                or self.plateau_patience < 0:
            raise TrainError(
                f"plateau_patience must be an integer >= 0 (0: fixed epochs), got "
                f"{self.plateau_patience!r}")
        if not 0 < self.lb_fraction <= 1:
            raise TrainError(
                f"lb_fraction must be in (0, 1], got {self.lb_fraction}: the paper's LB is 0.1")
        if not self.learning_rate > 0:
            raise TrainError(f"learning_rate must be positive, got {self.learning_rate}")
        if not self.plateau_tol >= 0:
            raise TrainError(f"plateau_tol must be >= 0, got {self.plateau_tol}")
        if not 0 <= self.momentum < 1:
            raise TrainError(f"momentum must be in [0, 1), got {self.momentum}")

    @property
    def stop_rule(self) -> str:
        """The stopping rule as recorded in rows, e.g. "epochs=20" or
        "plateau(tol=0.001,patience=5,cap=100)"."""
        if self.plateau_patience == 0:
            return f"epochs={self.epochs}"
        return (f"plateau(tol={self.plateau_tol:g},patience={self.plateau_patience},"
                f"cap={self.epochs})")


def _choice(name, value, allowed):
    if value not in allowed:
        raise TrainError(f"unknown {name} {value!r}: choose one of {', '.join(allowed)}")


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise TrainError(f"{name} must be a positive integer, got {value!r}")


def resolve(config: TrainConfig, num_train: int, replicas: int) -> TrainConfig:
    """``config`` with ``dataset`` and the GLOBAL ``batch_size`` filled in and checked.

    Raises:
      TrainError: the batch is larger than the training set, or not divisible by the
        number of replicas (every replica must take an equal slice of each global batch).
    """
    dataset = config.dataset or models.spec(config.model).dataset
    batch_size = config.batch_size
    if batch_size is None:
        if config.regime == "SB":
            batch_size = SB_BATCH_SIZE
        else:
            batch_size = max(1, round(config.lb_fraction * num_train))
    if batch_size > num_train:
        raise TrainError(
            f"global batch size {batch_size} is larger than the training set ({num_train} "
            f"examples of {dataset}): pass a --batch_size of at most {num_train}")
    if batch_size % replicas:
        raise TrainError(
            f"global batch size {batch_size} is not divisible by the {replicas} replicas: "
            f"pass a --batch_size that is a multiple of {replicas}, or change the replica count")
    return dataclasses.replace(config, dataset=dataset, batch_size=batch_size)


def load_data(config: TrainConfig, *, data_dir: str | None = None,
              tfds_data_dir: str | None = None) -> tuple[data.SplitData, data.SplitData]:
    """The (train, test) splits for ``config``, flattened for the fully connected nets."""
    dataset = config.dataset or models.spec(config.model).dataset
    flatten = models.spec(config.model).flat_input
    splits = tuple(
        data.load_split(dataset, split, data_dir=data_dir, tfds_data_dir=tfds_data_dir,
                        flatten=flatten, synthetic=config.synthetic)
        for split in ("train", "test"))
    return splits


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """The example order of ``epoch`` (1-based): a function of (seed, epoch) only, int32 [N]."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples).astype(np.int32)


# --- initial weights x0 ---------------------------------------------------------------------

def save_x0(model: keras.Model, path: str) -> None:
    """Writes every weight of ``model`` (BN moving statistics included), in ``model.weights``
    order, to the numpy archive ``path``; written to a temporary file and renamed."""
    arrays = {f"w{index:04d}": np.asarray(w) for index, w in enumerate(model.get_weights())}
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=directory, suffix=".npz", delete=False) as handle:
        np.savez(handle, model=np.array(model.name), **arrays)
    os.chmod(handle.name, 0o644)
    os.replace(handle.name, path)


def load_x0(path: str) -> list[np.ndarray]:
    """The weight arrays of an ``x0.npz`` written by ``save_x0``.

    Raises:
      TrainError: the file is missing, unreadable or not an x0 archive.
    """
    fix = "pass the x0.npz of an earlier run (runs/<run_id>/x0.npz) or drop --x0"
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = sorted(key for key in archive.files if key.startswith("w"))
            if not keys:
                raise TrainError(f"{path} holds no weights: {fix}")
            return [archive[key] for key in keys]
    except FileNotFoundError as error:
        raise TrainError(f"initial weights file {path} does not exist: {fix}") from error
    except (OSError, ValueError, EOFError) as error:
        if isinstance(error, TrainError):
            raise
        raise TrainError(f"cannot read initial weights {path} ({error}): {fix}") from error


def _set_weights(model: keras.Model, arrays: Sequence[np.ndarray], source: str) -> None:
    weights = model.weights
    shapes = [tuple(w.shape) for w in weights]
    given = [tuple(a.shape) for a in arrays]
    if shapes != given:
        raise TrainError(
            f"initial weights {source} do not fit {model.name} with input shape "
            f"{model.input_shape[1:]} ({len(given)} arrays of shapes {given[:2]}..., the model "
            f"has {len(shapes)} weights of shapes {shapes[:2]}...): use an x0 saved for the "
            "same model and dataset")
    for weight, array in zip(weights, arrays, strict=True):
        weight.assign(array.astype(weight.dtype))


def make_x0(config: TrainConfig, info: data.DatasetInfo) -> list[np.ndarray]:
    """Initial weights drawn from ``config.seed`` (Keras default initialisers), as arrays.

    Built outside any strategy, so every strategy and replica count starts from the same x0.
    """
    keras.utils.set_random_seed(config.seed)
    return _build_model(config, info).get_weights()


def _weights_digest(arrays: Sequence[np.ndarray]) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


# --- building blocks -----------------------------------------------------------------------

@contextlib.contextmanager
def _dtype_policy(precision: str):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _build_model(config: TrainConfig, info: data.DatasetInfo) -> keras.Model:
    with _dtype_policy(config.precision):
        return models.build(config.model, input_shape=info.input_shape,
                            num_classes=info.num_classes, bn_mode=config.bn_mode,
                            bn_synchronized=config.bn_sync)


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


def make_optimizer(config: TrainConfig) -> keras.optimizers.Optimizer:
    """A fresh optimizer for ``config`` (build it inside the strategy's scope)."""
    if config.optimizer == "adam":
        optimizer = FusedAdam(config.learning_rate, beta_1=0.9, beta_2=0.999)
    elif config.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(config.learning_rate, momentum=config.momentum)
    else:
        optimizer = keras.optimizers.Adagrad(config.learning_rate)
    if config.precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def stop_reason(losses: Sequence[float], config: TrainConfig) -> str | None:
    """Why training stops after the epochs whose training losses are ``losses``, or None.

    "plateau": ``plateau_patience`` consecutive epochs without a relative improvement of
    more than ``plateau_tol`` over the best loss so far (the best moves only on such an
    improvement, as in ``keras.callbacks.EarlyStopping``); "epochs": the fixed count (or the
    cap, under plateau stopping) is reached.
    """
    if config.plateau_patience and losses:
        best, flat = losses[0], 0
        for loss in losses[1:]:
            if best - loss > config.plateau_tol * abs(best):
                best, flat = loss, 0
            else:
                flat += 1
        if flat >= config.plateau_patience:
            return "plateau"
    if len(losses) >= config.epochs:
        return "epochs"
    return None


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's files (always, except on non-chief workers)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    cluster = resolver.cluster_spec().as_dict()
    if "chief" in cluster:
        return resolver.task_type == "chief"
    return resolver.task_type == "worker" and resolver.task_id == 0


class _Steps:
    """The compiled multi-step training function of one run."""

    def __init__(self, model, optimizer, strategy, features, labels, global_batch, jit):
        self._model = model
        self._optimizer = optimizer
        self._strategy = strategy
        self._global_batch = global_batch
        self._local_batch = global_batch // strategy.num_replicas_in_sync
        host_x = tf.constant(features)
        host_y = tf.constant(labels, dtype=tf.int32)
        # One copy of the data per replica device; each replica gathers its own examples.
        self._x = strategy.experimental_distribute_values_from_function(
            lambda _: tf.identity(host_x))
        self._y = strategy.experimental_distribute_values_from_function(
            lambda _: tf.identity(host_y))
        self._function = tf.function(self._steps, jit_compile=jit)

    def _replica_step(self, x_all, y_all, global_indices):
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        indices = global_indices[replica * self._local_batch:(replica + 1) * self._local_batch]
        x = tf.gather(x_all, indices)
        y = tf.gather(y_all, indices)
        variables = self._model.trainable_variables
        with tf.GradientTape() as tape:
            logits = tf.cast(self._model(x, training=True), tf.float32)
            per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=self._global_batch)
            scaled = self._optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled, variables)
        self._optimizer.apply_gradients(zip(gradients, variables, strict=True))
        predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
        return loss, tf.reduce_sum(tf.cast(tf.equal(predictions, y), tf.int32))

    def _steps(self, x_all, y_all, permutation, first_step, num_steps):
        strategy = self._strategy
        losses = tf.TensorArray(tf.float32, size=num_steps)
        correct = tf.TensorArray(tf.int32, size=num_steps)
        for i in tf.range(num_steps):
            begin = (first_step + i) * self._global_batch
            indices = permutation[begin:begin + self._global_batch]
            loss, right = strategy.run(self._replica_step, args=(x_all, y_all, indices))
            losses = losses.write(i, strategy.reduce("SUM", loss, axis=None))
            correct = correct.write(i, strategy.reduce("SUM", right, axis=None))
        return losses.stack(), correct.stack()

    def __call__(self, permutation, first_step: int, num_steps: int):
        """Runs steps ``first_step .. first_step + num_steps - 1`` of the epoch ordered by
        ``permutation``; returns the global-batch mean losses and correct counts per step."""
        losses, correct = self._function(self._x, self._y, permutation,
                                         tf.constant(first_step, tf.int32),
                                         tf.constant(num_steps, tf.int32))
        return losses.numpy(), correct.numpy()


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """The outcome of a finished run.

    ``train``/``test`` are full-set evaluations of the final weights (``model(x,
    training=False)``, batch ``config.eval_batch_size``). ``wall_time_s`` sums the epochs'
    training and per-epoch evaluation time over every session of a resumed run;
    ``examples_per_s`` is training examples over training-step time (startup excluded);
    ``startup_s`` is this session's build and compilation time.
    """

    config: TrainConfig
    run_dir: str
    strategy: dict
    num_train: int
    num_test: int
    history: list[dict]
    epochs_run: int
    stop_reason: str
    train: evaluation.EvalResult
    test: evaluation.EvalResult
    wall_time_s: float
    examples_per_s: float
    startup_s: float
    x0: str
    model: keras.Model = dataclasses.field(repr=False, compare=False)


# history.csv: one row per epoch. train_loss/train_accuracy average the epoch's steps (the
# running figures of the weights as they moved); full_train_*/test_* are full-set
# evaluations after the epoch (only with eval_every_epoch); times in seconds.
HISTORY_COLUMNS = (
    "epoch", "train_loss", "train_accuracy", "full_train_loss", "full_train_accuracy",
    "test_loss", "test_accuracy", "steps", "examples", "epoch_time_s", "epoch_cpu_s",
    "eval_time_s", "examples_per_s", "finished_at",
)


def _check_same_run(run_dir: str, config: TrainConfig) -> None:
    """Refuses a run directory that holds a run of another configuration."""
    path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as handle:
        stored = json.load(handle).get("config")
    wanted = json.loads(json.dumps(config_dict(config), default=str))
    if stored != wanted:
        changed = sorted(key for key in wanted if stored is None or stored.get(key) != wanted[key])
        raise TrainError(
            f"{run_dir} holds a run of another configuration (differs in {changed}): give "
            "this run its own directory")


def _restore_history(path: str, epoch: int) -> list[dict]:
    """The history rows of epochs 1..epoch (rows past the checkpoint are dropped)."""
    rows = [_typed(row) for row in results.read_rows(path) if int(row["epoch"]) <= epoch]
    if [int(row["epoch"]) for row in rows] != list(range(1, epoch + 1)):
        raise TrainError(
            f"{path} does not hold epochs 1..{epoch} of the checkpointed run: delete the run "
            f"directory {os.path.dirname(path)} to train this run from scratch")
    if len(rows) != len(results.read_rows(path)):
        os.remove(path)
        for row in rows:
            results.append_row(path, row)
    return rows


def _typed(row: dict) -> dict:
    """A history row read back from CSV with its numbers as numbers (None when empty)."""
    typed = {}
    for key, value in row.items():
        if key == "finished_at":
            typed[key] = value
        elif value == "":
            typed[key] = None
        elif key in ("epoch", "steps", "examples"):
            typed[key] = int(value)
        else:
            typed[key] = float(value)
    return typed


@contextlib.contextmanager
def _run_lock(run_dir: str, chief: bool):
    if not chief:
        yield
        return
    fd = os.open(os.path.join(run_dir, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            raise TrainError(
                f"run directory {run_dir} is in use by another process: wait for that run to "
                "finish, or use another --output_dir") from error
        yield
    finally:
        os.close(fd)


def _format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    if hours:
        return f"{hours}h{rest // 60:02d}m{rest % 60:02d}s"
    return f"{rest // 60}m{rest % 60:02d}s"


def train(
    config: TrainConfig,
    train_data: data.SplitData,
    test_data: data.SplitData,
    *,
    run_dir: str,
    strategy: tf.distribute.Strategy | None = None,
    quiet: bool = False,
    on_epoch_end: Callable[[int, dict], None] | None = None,
) -> TrainResult:
    """Trains (or resumes) the run ``config`` in ``run_dir`` and evaluates the result.

    Args:
      config: the run; resolved here against the training set and replica count.
      train_data, test_data: the splits (``load_data``); features already shaped for the
        model (flat for F-nets).
      run_dir: the run's directory (created if needed); a directory holding checkpoints
        of the same run resumes after its last completed epoch.
      strategy: the tf.distribute strategy; None means the current one. Under multi-worker
        strategies only the chief writes the run's files; other workers keep private
        checkpoints in ``checkpoints/worker<i>``.
      quiet: no progress logging (warnings only).
      on_epoch_end: called as ``on_epoch_end(epoch, history_row)`` after each epoch's
        checkpoint is written.

    Raises:
      TrainError: bad batch size, unreadable or mismatched x0, run directory busy, ...
    """
    strategy = strategy or tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    num_train = train_data.info.num_examples
    config = resolve(config, num_train, replicas)
    if config.jit_compile and replicas > 1:
        raise TrainError(
            f"jit_compile supports single-replica strategies, this one has {replicas} "
            "replicas: drop --jit_compile or use one replica")
    info = train_data.info
    if config.x0_path is not None:
        x0_arrays = load_x0(config.x0_path)
        x0_source = f"{config.x0_path} (sha256 {_weights_digest(x0_arrays)})"
    else:
        x0_arrays = None
        x0_source = f"seed {config.seed}"

    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    chief = is_chief(strategy)
    os.makedirs(run_dir, exist_ok=True)
    with _run_lock(run_dir, chief):
        return _train_locked(config, train_data, test_data, run_dir, strategy, chief, quiet,
                             on_epoch_end, info, x0_arrays, x0_source)


def _train_locked(config, train_data, test_data, run_dir, strategy, chief, quiet,
                  on_epoch_end, info, x0_arrays, x0_source):
    log = (lambda *args: None) if quiet else logging.info
    started = time.perf_counter()
    description = distribute.describe(strategy)
    if x0_arrays is None:
        x0_arrays = make_x0(config, info)
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        model = _build_model(config, info)
        optimizer = make_optimizer(config)
        optimizer.build(model.trainable_variables)
    _set_weights(model, x0_arrays, x0_source)
    epoch_counter = tf.Variable(0, dtype=tf.int64, trainable=False)
    # model.variables adds what model.weights lacks: the dropout RNG (seed generator) states,
    # so a resumed run draws the dropout masks of an uninterrupted one. The data order needs
    # no state: it is a function of (seed, epoch).
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch_counter,
                                     variables=list(model.variables))
    # Non-chief workers keep their own checkpoints and history (needed to resume) apart.
    checkpoint_dir = os.path.join(run_dir, CHECKPOINT_DIR)
    history_path = os.path.join(run_dir, HISTORY_FILE)
    if not chief:
        checkpoint_dir = os.path.join(checkpoint_dir, f"worker{strategy.cluster_resolver.task_id}")
        history_path = os.path.join(checkpoint_dir, HISTORY_FILE)
    manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir, max_to_keep=1)

    if chief:
        _check_same_run(run_dir, config)
        _write_json(os.path.join(run_dir, CONFIG_FILE),
                    {"config": config_dict(config), "strategy": description, "x0": x0_source})
        if not os.path.exists(os.path.join(run_dir, X0_FILE)):
            save_x0(model, os.path.join(run_dir, X0_FILE))
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        log("resuming %s after epoch %d", run_dir, int(epoch_counter.numpy()))
    elif os.path.exists(history_path):
        os.remove(history_path)  # Epochs recorded without a checkpoint are retrained.
    done = int(epoch_counter.numpy())
    history = _restore_history(history_path, done) if done else []

    global_batch = config.batch_size
    steps_per_epoch = train_data.info.num_examples // global_batch
    steps = _Steps(model, optimizer, strategy, train_data.features, train_data.labels,
                   global_batch, config.jit_compile)
    evaluators = None
    if config.eval_every_epoch:
        evaluators = _evaluators(model, train_data, test_data, config, strategy)
    empty_order = tf.constant(epoch_permutation(config.seed, 1, train_data.info.num_examples))
    steps(empty_order, 0, 0)  # Trace and compile before any timing.
    startup_s = time.perf_counter() - started
    log("%s %s: global batch %d on %d replica(s) (%s), %d steps/epoch, %s; startup %.1f s",
        config.model, config.regime, global_batch, description["replicas"],
        description["device_kind"], steps_per_epoch, config.stop_rule, startup_s)

    reason = stop_reason([row["train_loss"] for row in history], config)
    while reason is None:
        epoch = done + 1
        row = _run_epoch(steps, config, epoch, steps_per_epoch, train_data, log)
        if evaluators is not None:
            began = time.perf_counter()
            full_train, test = evaluators[0](), evaluators[1]()
            row.update(full_train_loss=full_train.loss, full_train_accuracy=full_train.accuracy,
                       test_loss=test.loss, test_accuracy=test.accuracy,
                       eval_time_s=time.perf_counter() - began)
        history.append(row)
        results.append_row(history_path, row)
        epoch_counter.assign(epoch)
        manager.save(checkpoint_number=epoch)
        done = epoch
        reason = stop_reason([r["train_loss"] for r in history], config)
        _log_epoch(log, row, history, config)
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)

    if evaluators is None:
        evaluators = _evaluators(model, train_data, test_data, config, strategy)
    final_train, final_test = evaluators[0](), evaluators[1]()
    if chief:
        model.save(os.path.join(run_dir, MODEL_FILE))
    train_time = sum(row["epoch_time_s"] for row in history)
    examples = sum(row["examples"] for row in history)
    wall = sum(row["epoch_time_s"] + (row["eval_time_s"] or 0) for row in history)
    log("%s %s finished after %d epochs (%s): train loss %.4f acc %.2f%%, test loss %.4f "
        "acc %.2f%%", config.model, config.regime, done, reason, final_train.loss,
        100 * final_train.accuracy, final_test.loss, 100 * final_test.accuracy)
    return TrainResult(
        config=config, run_dir=run_dir, strategy=description,
        num_train=train_data.info.num_examples, num_test=test_data.info.num_examples,
        history=history, epochs_run=done, stop_reason=reason, train=final_train,
        test=final_test, wall_time_s=wall, examples_per_s=examples / train_time,
        startup_s=startup_s, x0=x0_source, model=model)


def _evaluators(model, train_data, test_data, config, strategy):
    return tuple(
        evaluation.Evaluator(model, split.features, split.labels,
                             batch_size=min(config.eval_batch_size, split.info.num_examples),
                             strategy=strategy)
        for split in (train_data, test_data))


def _run_epoch(steps, config, epoch, steps_per_epoch, train_data, log) -> dict:
    order = tf.constant(epoch_permutation(config.seed, epoch, train_data.info.num_examples))
    losses, correct = [], []
    began = last_report = time.perf_counter()
    cpu_began = time.process_time()
    for first in range(0, steps_per_epoch, config.steps_per_call):
        count = min(config.steps_per_call, steps_per_epoch - first)
        step_losses, step_correct = steps(order, first, count)
        losses.append(step_losses)
        correct.append(step_correct)
        now = time.perf_counter()
        done_steps = first + count
        if now - last_report > 10 and done_steps < steps_per_epoch:
            rate = done_steps * config.batch_size / (now - began)
            eta = (steps_per_epoch - done_steps) * config.batch_size / rate
            log("epoch %d: step %d/%d, loss %.4f, %.0f examples/s, epoch ETA %s", epoch,
                done_steps, steps_per_epoch, float(np.mean(np.concatenate(losses))), rate,
                _format_duration(eta))
            last_report = now
    elapsed = time.perf_counter() - began
    cpu = time.process_time() - cpu_began
    losses = np.concatenate(losses).astype(np.float64)
    examples = steps_per_epoch * config.batch_size
    if not np.all(np.isfinite(losses)):
        logging.warning("epoch %d: non-finite training loss; lower the learning rate", epoch)
    row = dict.fromkeys(HISTORY_COLUMNS)  # Evaluation columns stay empty here.
    row.update(
        epoch=epoch, train_loss=float(np.mean(losses)),
        train_accuracy=float(np.concatenate(correct).sum()) / examples, steps=steps_per_epoch,
        examples=examples, epoch_time_s=elapsed, epoch_cpu_s=cpu,
        examples_per_s=examples / elapsed,
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return row


def _log_epoch(log, row, history, config):
    per_epoch = np.mean([r["epoch_time_s"] + (r["eval_time_s"] or 0) for r in history])
    remaining = max(0, config.epochs - int(row["epoch"]))
    extra = ""
    if row["test_accuracy"] is not None:
        extra = (f", full train loss {row['full_train_loss']:.4f} acc "
                 f"{100 * row['full_train_accuracy']:.2f}%, test loss {row['test_loss']:.4f} "
                 f"acc {100 * row['test_accuracy']:.2f}%")
    cap = " at most" if config.plateau_patience else ""
    log("epoch %d/%d: loss %.4f acc %.2f%%%s, %.0f examples/s, %.1f s; ETA%s %s",
        row["epoch"], config.epochs, row["train_loss"], 100 * row["train_accuracy"], extra,
        row["examples_per_s"], row["epoch_time_s"], cap, _format_duration(remaining * per_epoch))


def config_dict(config: TrainConfig) -> dict:
    """``config`` as a JSON-serialisable dict (the synthetic spec as a nested dict)."""
    return dataclasses.asdict(config)


def _write_json(path: str, value: dict) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    with tempfile.NamedTemporaryFile("w", dir=directory, suffix=".json", delete=False) as out:
        json.dump(value, out, indent=2, sort_keys=True, default=str)
        out.write("\n")
    os.chmod(out.name, 0o644)
    os.replace(out.name, path)


def run_key(config: TrainConfig, strategy_description: dict) -> dict:
    """What identifies a run: the resolved config, the strategy layout and the x0 source
    (the x0 file's content digest when a file is given). Same key, same run directory."""
    key = config_dict(config)
    if config.x0_path is not None:
        key["x0_path"] = _weights_digest(load_x0(config.x0_path))
    key["strategy"] = {k: strategy_description[k] for k in ("strategy", "replicas", "workers")}
    return key


def run_id(config: TrainConfig, strategy_description: dict) -> str:
    """Deterministic run id, e.g. "F1-fashion_mnist-SB-b256-s0-1a2b3c4d5e6f"."""
    prefix = (f"{config.model}-{config.dataset}-{config.regime}-b{config.batch_size}-"
              f"s{config.seed}-")
    return results.new_run_id(run_key(config, strategy_description), prefix=prefix)


RUN_COLUMNS = (
    "run_id", "benchmark", "model", "dataset", "regime", "global_batch_size",
    "per_replica_batch_size", "lb_fraction", "replicas", "workers", "strategy", "device_kind",
    "precision", "jit", "optimizer", "learning_rate", "bn_mode", "bn_sync", "eval_batch_size",
    "seed", "x0", "stop_rule", "epochs_run", "stop_reason", "train_loss", "train_accuracy",
    "test_loss", "test_accuracy", "last_epoch_train_loss", "num_train", "num_test",
    "wall_time_s", "startup_s", "examples_per_s", "tf_version", "keras_version",
    "git_revision", "hostname", "finished_at", "nondefault_flags",
)


def run_record(result: TrainResult, *, run_id: str, benchmark: str = "train",
               nondefault_flags: str = "") -> dict:
    """The CSV row of a finished run (columns ``RUN_COLUMNS``; accuracies in [0, 1])."""
    config = result.config
    provenance = results.provenance()
    row = {
        "run_id": run_id,
        "benchmark": benchmark,
        "model": config.model,
        "dataset": config.dataset,
        "regime": config.regime,
        "global_batch_size": config.batch_size,
        "per_replica_batch_size": config.batch_size // result.strategy["replicas"],
        "lb_fraction": config.lb_fraction if config.regime == "LB" else None,
        "replicas": result.strategy["replicas"],
        "workers": result.strategy["workers"],
        "strategy": result.strategy["strategy"],
        "device_kind": result.strategy["device_kind"],
        "precision": config.precision,
        "jit": config.jit_compile,
        "optimizer": config.optimizer,
        "learning_rate": config.learning_rate,
        "bn_mode": config.bn_mode,
        "bn_sync": config.bn_sync,
        "eval_batch_size": config.eval_batch_size,
        "seed": config.seed,
        "x0": result.x0,
        "stop_rule": config.stop_rule,
        "epochs_run": result.epochs_run,
        "stop_reason": result.stop_reason,
        "train_loss": result.train.loss,
        "train_accuracy": result.train.accuracy,
        "test_loss": result.test.loss,
        "test_accuracy": result.test.accuracy,
        "last_epoch_train_loss": result.history[-1]["train_loss"],
        "num_train": result.num_train,
        "num_test": result.num_test,
        "wall_time_s": round(result.wall_time_s, 3),
        "startup_s": round(result.startup_s, 3),
        "examples_per_s": round(result.examples_per_s, 1),
        "tf_version": provenance["tf_version"],
        "keras_version": provenance["keras_version"],
        "git_revision": provenance["git_revision"],
        "hostname": provenance["hostname"],
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "nondefault_flags": nondefault_flags,
    }
    return row
