"""The configuration of one training run: ``TrainConfig``, its checks and resolution, and the
stopping rule.

A ``TrainConfig`` says everything that defines a run (nothing about where files go); its
checks raise ``TrainError``, one line naming the problem and the fix. ``resolve`` fills in the
dataset and the GLOBAL batch size against the training set and replica count; ``stop_reason``
applies the fixed-epochs or plateau rule to the losses of the epochs run so far.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from lbgap_tf import data, models

OPTIMIZERS = ("adam", "sgd", "adagrad")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
REGIMES = ("SB", "LB")
DIVERGED = "diverged"  # The stop reason of a run whose training loss became NaN or inf.
SB_BATCH_SIZE = 256  # The paper's small batch.
PAPER_LB_FRACTION = 0.1  # The paper's large batch: 10% of the training set.
# The remedies that change the training step (``lbgap_tf.train.remedies``) and the config
# fields each one reads; the fields of the remedies not chosen stay out of ``config_dict``.
STEP_REMEDY_FIELDS = {
    "none": (),
    "conservative": ("conservative_lambda", "conservative_iterations"),
    "adversarial": ("adversarial_eps",),
    "sam": ("sam_rho",),
    "asam": ("sam_rho", "asam_eta"),
}
STEP_REMEDIES = tuple(STEP_REMEDY_FIELDS)


# Fields that change how a run is computed or what it keeps along the way, never what it
# computes: recorded in config.json, but no part of the run's identity (its id, and the check
# that a run directory holds this run), so changing one resumes or reuses the same run.
# BUILD.md, "What defines a run", gives the reasons field by field.
PERFORMANCE_FIELDS = ("steps_per_call", "deterministic", "snapshot_epochs")


class TrainError(ValueError):
    """A training run cannot start or continue; the message names the problem and the fix."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything about one training run (and nothing about where files go): the fields
    that define it, and the few of ``PERFORMANCE_FIELDS`` that change only how it is
    computed or what it keeps along the way.

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
      adam_epsilon: ADAM's epsilon (added to sqrt(v) in the denominator of the update).
        The default is Keras 3's 1e-7; the authors' Keras 1 used 1e-8, which every preset
        sets (BUILD.md, "What defines a run"). Ignored by the other optimizers.
      momentum: SGD momentum (ignored by the other optimizers).
      bn_mode: "moving" (standard Keras BN) or "batch" (the authors' batch statistics at
        inference too; evaluation batch size then changes the result).
      bn_sync: synchronise BN statistics across replicas (the global batch's statistics).
        False (per-replica, ghost-batch statistics) needs ``bn_mode="batch"`` on more than
        one replica (``resolve``).
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
      snapshot_epochs: epochs after which the weights are kept as
        ``snapshots/epoch<k>.npz`` in the run directory (x0.npz format: every weight, BN
        statistics included, no optimizer state), strictly increasing, each in 1..epochs.
        Keeping snapshots does not change the run: it is recorded in config.json but is not
        part of the run id.
      augment, lr_scaling, reference_batch, warmup_epochs, ghost_batch, regime_adaptation,
        batch_schedule: the data and schedule remedies of ``lbgap_tf.train.schedules``
        (augmentation, LR scaling with warm-up, ghost batch normalization, regime adaptation,
        batch growth). Each is off by default and then left out of ``config_dict``, so a
        plain run keeps the config.json and run id it had before the remedies existed.
      step_remedy: how each step uses its batch (``lbgap_tf.train.remedies``): "none" (one
        gradient step), "conservative" (Li et al.'s proximal step), "adversarial" (FGSM
        inputs, Goodfellow et al.), "sam" or "asam" (sharpness-aware minimization). With
        "none" neither it nor any remedy parameter is in ``config_dict``, so a plain run keeps
        the config.json and run id it had before the remedies existed.
      conservative_lambda, conservative_iterations: the proximal weight λ >= 0 and the
        optimizer iterations per batch (the paper's 1e-3 and 3).
      adversarial_eps: FGSM's L∞ radius on the inputs (>= 0; pixels are in [0, 1]).
      sam_rho: SAM's/ASAM's radius rho >= 0 (0.05, Foret et al.'s typical value).
      asam_eta: ASAM's eta >= 0 in T_w = |w| + eta (0.01, Kwon et al.'s).
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
    adam_epsilon: float = 1e-7
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
    snapshot_epochs: tuple[int, ...] = ()
    augment: bool = False
    lr_scaling: str = "none"
    reference_batch: int = SB_BATCH_SIZE
    warmup_epochs: int = 0
    ghost_batch: int | None = None
    regime_adaptation: bool = False
    batch_schedule: tuple[tuple[int, int], ...] = ()
    step_remedy: str = "none"
    conservative_lambda: float = 1e-3
    conservative_iterations: int = 3
    adversarial_eps: float = 0.03
    sam_rho: float = 0.05
    asam_eta: float = 0.01

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
        if not 0 < self.adam_epsilon < 1:
            raise TrainError(f"adam_epsilon must be in (0, 1), got {self.adam_epsilon}: the "
                             "authors' Keras 1 value is 1e-8, Keras 3's default 1e-7")
        if not self.plateau_tol >= 0:
            raise TrainError(f"plateau_tol must be >= 0, got {self.plateau_tol}")
        if not 0 <= self.momentum < 1:
            raise TrainError(f"momentum must be in [0, 1), got {self.momentum}")
        _snapshot_epochs(self.snapshot_epochs, self.epochs)
        _data_remedies(self)
        _step_remedy(self)

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


LR_SCALINGS = ("none", "linear", "sqrt")
# The remedy fields and their "off" values: left out of config_dict (and the run id) when off.
REMEDY_DEFAULTS = {"augment": False, "lr_scaling": "none", "reference_batch": SB_BATCH_SIZE,
                   "warmup_epochs": 0, "ghost_batch": None, "regime_adaptation": False,
                   "batch_schedule": ()}


def _data_remedies(config: TrainConfig) -> None:
    """Checks the data and schedule remedy fields (the batch-dependent checks are in
    ``resolve``)."""
    if config.augment and models.spec(config.model).flat_input:
        raise TrainError(
            f"augmentation (flips, rotations, translations) needs an image network, and "
            f"{config.model} takes flat vectors: drop --augment or use a C network")
    _choice("lr_scaling", config.lr_scaling, LR_SCALINGS)
    _positive_int("reference_batch", config.reference_batch)
    if isinstance(config.warmup_epochs, bool) or not isinstance(
            config.warmup_epochs, (int, np.integer)) or not 0 <= config.warmup_epochs \
            <= config.epochs:
        raise TrainError(f"warmup_epochs must be an integer in 0..epochs ({config.epochs}), "
                         f"got {config.warmup_epochs!r}")
    if config.warmup_epochs and config.lr_scaling == "none":
        raise TrainError("warmup_epochs ramps the rate up to the scaled one: pass "
                         "--lr_scaling=linear or sqrt, or drop --warmup_epochs")
    if config.ghost_batch is not None:
        _positive_int("ghost_batch", config.ghost_batch)
    schedule = config.batch_schedule
    if not isinstance(schedule, tuple) or any(
            not isinstance(pair, tuple) or len(pair) != 2 or any(
                isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in pair)
            for pair in schedule):
        raise TrainError(f"batch_schedule must be a tuple of (epoch, global batch) integer "
                         f"pairs, got {schedule!r}")
    epochs = [epoch for epoch, _ in schedule]
    if any(k < 2 or k > config.epochs for k in epochs) or any(
            b <= a for a, b in zip(epochs[:-1], epochs[1:], strict=True)):
        raise TrainError(
            f"batch_schedule epochs must be strictly increasing in 2..{config.epochs} (the "
            f"first epoch uses batch_size), got {epochs}")
    if schedule and config.regime_adaptation:
        raise TrainError("regime_adaptation fixes the epochs from one batch size: drop it or "
                         "the batch_schedule")


def _step_remedy(config: TrainConfig) -> None:
    _choice("step_remedy", config.step_remedy, STEP_REMEDIES)
    for name, what in (("conservative_lambda", "the proximal weight λ"),
                       ("adversarial_eps", "the FGSM input radius"),
                       ("sam_rho", "the SAM radius"), ("asam_eta", "ASAM's eta")):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise TrainError(f"{name} ({what}) must be a number >= 0, got {value!r}")
    _positive_int("conservative_iterations", config.conservative_iterations)


def _snapshot_epochs(epochs: tuple, cap: int) -> None:
    if not isinstance(epochs, tuple) or any(
            isinstance(k, bool) or not isinstance(k, (int, np.integer)) for k in epochs):
        raise TrainError(f"snapshot_epochs must be a tuple of integers, got {epochs!r}")
    if any(k < 1 or k > cap for k in epochs) or any(
            b <= a for a, b in zip(epochs[:-1], epochs[1:], strict=True)):
        raise TrainError(
            f"snapshot_epochs must be strictly increasing epochs in 1..{cap}, got "
            f"{list(epochs)}: keep each epoch once, at most the run's epochs")


def resolve(config: TrainConfig, num_train: int, replicas: int) -> TrainConfig:
    """``config`` with ``dataset`` and the GLOBAL ``batch_size`` filled in and checked.

    With ``regime_adaptation``, ``epochs`` becomes the epochs that give as many updates as
    ``epochs`` epochs of ``reference_batch`` (rounded up) and the flag is cleared, so
    resolving a resolved config changes nothing. A scaling rule on a run whose batch is the
    reference batch throughout changes no rate and is dropped (the run is a plain run, with
    a plain run's id).

    Raises:
      TrainError: the batch is larger than the training set, or not divisible by the
        number of replicas (every replica must take an equal slice of each global batch); a
        ``batch_schedule`` whose batches do not grow, exceed the training set or do not divide
        among the replicas; a ``ghost_batch`` that does not divide every per-replica batch;
        or per-replica BN statistics (``bn_sync=False``) with moving-statistics BN on more
        than one replica: each replica would keep moving statistics of its own (Keras
        creates them unaggregated), evaluation would mix them and model.keras and the
        checkpoint would keep replica 0's only, so a resumed or reloaded run would give
        other numbers.
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
    previous = batch_size
    for epoch, batch in config.batch_schedule:
        if batch <= previous or batch > num_train or batch % replicas:
            raise TrainError(
                f"batch_schedule sets global batch {batch} at epoch {epoch} after {previous}: "
                f"each batch must grow, be at most the training set ({num_train}) and a "
                f"multiple of the {replicas} replicas")
        previous = batch
    if config.ghost_batch is not None:
        for batch in (batch_size, *(b for _, b in config.batch_schedule)):
            if (batch // replicas) % config.ghost_batch:
                raise TrainError(
                    f"ghost batch {config.ghost_batch} does not divide the per-replica batch "
                    f"{batch // replicas} (global {batch} on {replicas} replicas): pass a "
                    "--ghost_batch that divides every per-replica batch")
    if not config.bn_sync and config.bn_mode == "moving" and replicas > 1:
        raise TrainError(
            f"per-replica BN statistics (--nobn_sync) with --bn_mode=moving on {replicas} "
            "replicas would keep different moving statistics on every replica and save only "
            "the first's: use --bn_mode=batch for ghost-batch BN, keep --bn_sync, or train "
            "on one replica")
    lr_scaling, warmup_epochs = config.lr_scaling, config.warmup_epochs
    if not config.batch_schedule and batch_size == config.reference_batch:
        lr_scaling, warmup_epochs = "none", 0  # The rule changes no rate: a plain run.
    epochs = config.epochs
    if config.regime_adaptation:
        # As many updates as the reference (SB) batch would make in ``epochs`` epochs.
        updates = config.epochs * (num_train // config.reference_batch)
        epochs = -(-updates // (num_train // batch_size))
    # The adapted epoch count replaces the rule, so resolving again changes nothing.
    return dataclasses.replace(config, dataset=dataset, batch_size=batch_size, epochs=epochs,
                               regime_adaptation=False, lr_scaling=lr_scaling,
                               warmup_epochs=warmup_epochs)


def stop_reason(losses: Sequence[float], config: TrainConfig) -> str | None:
    """Why training stops after the epochs whose training losses are ``losses``, or None.

    "diverged": an epoch's training loss is not finite (NaN or inf; training stops at the
    first such epoch, whose weights are no minimizer of anything). "plateau":
    ``plateau_patience`` consecutive epochs without a relative improvement of more than
    ``plateau_tol`` over the best loss so far (the best moves only on such an improvement,
    as in ``keras.callbacks.EarlyStopping``); "epochs": the fixed count (or the cap, under
    plateau stopping) is reached.
    """
    if not np.all(np.isfinite(losses)):
        return DIVERGED
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


def config_dict(config: TrainConfig) -> dict:
    """``config`` as a JSON-serialisable dict (the synthetic spec as a nested dict).

    ``snapshot_epochs`` and the data remedy fields (``REMEDY_DEFAULTS``) appear only when set,
    and of the step remedy fields only the chosen remedy and its own parameters, so a run that
    keeps no snapshots and uses no remedy has the config.json (and the run directory it
    resumes from) that it had before those fields existed.
    """
    values = dataclasses.asdict(config)
    if not values["snapshot_epochs"]:
        del values["snapshot_epochs"]
    for name, off in REMEDY_DEFAULTS.items():
        if values[name] == off:
            del values[name]
    used = STEP_REMEDY_FIELDS[config.step_remedy]
    for name in {field for fields in STEP_REMEDY_FIELDS.values() for field in fields}:
        if name not in used:
            del values[name]
    if config.step_remedy == "none":
        del values["step_remedy"]
    return values


def defining_values(values: Mapping) -> dict:
    """The fields of a config dict (``config_dict``, or the ``config`` of a config.json) that
    define the run: all but ``PERFORMANCE_FIELDS``. A field the dict lacks (a config.json
    written before the field existed) takes its default, the value such runs used."""
    defined = {key: value for key, value in config_dict(TrainConfig()).items()
               if key not in PERFORMANCE_FIELDS}
    defined.update((key, value) for key, value in values.items()
                   if key not in PERFORMANCE_FIELDS)
    return defined
