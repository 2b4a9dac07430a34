r"""Flags shared by the benchmark binaries, grouped by concern, and the ``run`` entry point.

A binary defines the groups it needs, adopts them as its key flags (so ``--helpshort`` lists
them), builds its frozen configs with the getters, and starts with ``common.run(main)``::

    common.define_model_data_flags()
    common.define_training_flags()
    common.define_distribution_flags()
    common.define_output_flags()
    flags.adopt_module_key_flags(common)
    ...
    if __name__ == "__main__":
        common.run(main)

Flag checks live in validators registered next to the flags (so a bad value fails at
parse time, naming the flag). ``--cpu_devices`` splits the CPU right after parsing, before
TensorFlow initialises devices.

Error output, the contract every binary keeps (README, "Errors and logs"):

- A binary that fails writes its error as exactly ONE line, ``PROGRAM: error: MESSAGE``
  (PROGRAM is the binary's file name, e.g. ``train.py``; MESSAGE names the problem and the
  fix), as the LAST line on stderr, exits with status 2 for a bad flag or 1 for a library
  ``ValueError`` (``DataError``, ``TrainError``, ...) or a file system error (``OSError``),
  prints no traceback (``--verbosity=1``
  re-raises library errors with theirs) and writes no result.
- Every other line on stderr is either TensorFlow's native log output or one of the binary's
  own log lines (absl format, ``[IWEF]MMDD HH:MM:SS.micros THREAD FILE.py:LINE] ...``)
  logged before the failure: none for a bad flag, which fails before any work starts, and
  only warnings under ``--quiet``.
- TensorFlow's native (C++) log records are written straight to file descriptor 2, some at
  ``import tensorflow`` before any code of the binary runs and whatever
  ``TF_CPP_MIN_LOG_LEVEL`` says, so they may precede the error line. A native record starts
  with a line matching one of

    ``^[IWEF]\d{4} \d{2}:\d{2}:\d+\.\d+ +\d+ [^\s\]]+\.(cc|cpp|cxx|c|h|hpp|hh|inc):\d+\] ``
        absl's C++ format, e.g. ``I0000 00:00:1795889538.403009  6709 port.cc:153] oneDNN
        custom operations are on...`` (a C/C++ source file, where the binary's own lines
        name a ``.py`` file);
    ``^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d+: [IWEF] [^\s\]]+\.(cc|...):\d+\] ``
        TensorFlow's older TSL format;
    ``^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$``
        absl's notice before its first native record;

  and continues over the lines that follow it (a multi-line message, such as
  ``cpu_feature_guard.cc``'s "To enable the following instructions: ...") up to the next line
  that starts a native record, one of the binary's own log lines, a Python traceback or the
  error line. ``tests/binaries.py`` applies exactly this pattern.

Logging policy: at the default verbosity the log shows the suite's own lines only. INFO
records from other Python code (TensorFlow's checkpoint saver "Sharding callback duration",
TFDS, Keras) are dropped, warnings and errors from anywhere are kept, and TensorFlow's native
threshold is ``TF_CPP_MIN_LOG_LEVEL=2`` (set by ``benchmarks/__init__.py`` before TensorFlow
is imported, unless the environment sets it). ``--quiet`` keeps warnings and errors only;
``--verbosity=1`` brings back everything: library INFO and DEBUG records and every native line.
"""

from __future__ import annotations

import json
import logging as std_logging
import os

import tensorflow as tf
from absl import app, flags, logging

import benchmarks
import lbgap_tf
from benchmarks import contract
from benchmarks.contract import EXIT_FLAG_ERROR, fail, guard
from lbgap_tf import data, distribute, gap, models, sharpness, train

FLAGS = flags.FLAGS


def _validate(name: str, check, message: str) -> None:
    """Registers a validator that passes None (flag unset) and otherwise needs ``check``."""
    flags.register_validator(name, lambda value: value is None or check(value), message=message)


def define_model_data_flags() -> None:
    """--model and the data flags (``define_data_flags``)."""
    flags.DEFINE_enum("model", "F1", models.MODEL_NAMES, "Network of the paper's Table 1.")
    define_data_flags()


def define_data_flags() -> None:
    """--dataset, --data_dir, --tfds_data_dir and the synthetic task's size."""
    flags.DEFINE_enum(
        "dataset", None, data.DATASET_NAMES,
        "Data set. Default: the model's paper dataset (F1: mnist, F2: timit, C1/C2: cifar10, "
        "C3/C4: cifar100). 'synthetic' is a tiny learnable task for smoke runs.")
    flags.DEFINE_string("data_dir", None, "Folder with local copies of the data files "
                        "(see BUILD.md, 'Preparing data').")
    flags.DEFINE_string("tfds_data_dir", None, "TensorFlow Datasets data folder.")
    flags.DEFINE_integer("synthetic_train_examples", 1024,
                         "--dataset=synthetic: training examples.")
    flags.DEFINE_integer("synthetic_test_examples", 256, "--dataset=synthetic: test examples.")
    flags.DEFINE_float("synthetic_noise", 1.0,
                       "--dataset=synthetic: noise around the class means (higher is harder).")
    for name in ("synthetic_train_examples", "synthetic_test_examples"):
        _validate(name, lambda v: v >= 1, f"--{name} must be at least 1")
    _validate("synthetic_noise", lambda v: v >= 0, "--synthetic_noise must be >= 0")


def define_training_flags() -> None:
    """Regime, GLOBAL batch size, epochs, x0, and the optimization flags of one run."""
    flags.DEFINE_enum("regime", "SB", train.REGIMES,
                      "SB (small batch, 256) or LB (large batch, --lb_fraction of the "
                      "training set); the row's regime label.")
    flags.DEFINE_integer(
        "batch_size", None,
        "GLOBAL batch size: the examples of one step summed over ALL replicas and workers "
        "(each of N replicas takes batch_size/N). Default: 256 for --regime=SB, "
        "--lb_fraction of the training set for --regime=LB.")
    flags.DEFINE_integer("epochs", 20, "Epochs to train; the cap under plateau stopping.")
    flags.DEFINE_string("x0", None, "Initial weights: an x0.npz of an earlier run "
                        "(<output_dir>/runs/<run_id>/x0.npz). Default: drawn from --seed.")
    _validate("batch_size", lambda v: v >= 1,
              "--batch_size must be a positive integer (the GLOBAL batch size)")
    _validate("epochs", lambda v: v >= 1, "--epochs must be a positive integer")
    define_optimization_flags()


def define_optimization_flags() -> None:
    """LB fraction, stopping rule, optimizer, BN and evaluation settings shared by regimes."""
    flags.DEFINE_float("lb_fraction", train.PAPER_LB_FRACTION,
                       "LB batch as a fraction of the training set (the paper's 0.1).")
    flags.DEFINE_integer(
        "plateau_patience", 0,
        "0: train exactly --epochs. k > 0: stop when the epoch's training loss failed k "
        "consecutive epochs to improve on the best so far by more than --plateau_tol "
        "(relative), the paper's 'until the loss ceased to improve'.")
    flags.DEFINE_float("plateau_tol", 1e-3, "Relative improvement that counts as progress.")
    flags.DEFINE_enum("optimizer", "adam", train.OPTIMIZERS,
                      "adam (the paper's, beta_1 0.9, beta_2 0.999), sgd (with --momentum) or "
                      "adagrad.")
    flags.DEFINE_float("learning_rate", 1e-3, "Learning rate.")
    flags.DEFINE_float("adam_epsilon", 1e-7,
                       "ADAM's epsilon. Default: Keras 3's 1e-7; the authors' Keras 1 used "
                       "1e-8, which every preset sets.")
    flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
    flags.DEFINE_enum("bn_mode", "moving", models.BN_MODES,
                      "BN at inference: 'moving' averages (standard Keras) or 'batch' "
                      "statistics (the authors' Keras 1 mode=2).")
    flags.DEFINE_bool("bn_sync", True,
                      "Synchronise BN statistics across replicas (the global batch's); "
                      "--nobn_sync gives per-replica (ghost batch) statistics, on several "
                      "replicas with --bn_mode=batch only.")
    flags.DEFINE_bool("eval_every_epoch", False,
                      "Evaluate on the full training and test sets after every epoch.")
    flags.DEFINE_integer("eval_batch_size", 5000,
                         "GLOBAL evaluation batch size (matters with --bn_mode=batch; the "
                         "authors used 5000).")
    flags.DEFINE_integer("steps_per_call", 100,
                         "Training steps per compiled call (fewer Python round trips).")
    flags.DEFINE_bool("deterministic", True,
                      "TensorFlow op determinism for the whole process, from startup: "
                      "reproducible runs, exact resumes and measurements.")
    _validate("lb_fraction", lambda v: 0 < v <= 1,
              "--lb_fraction must be in (0, 1]; the paper's LB is 0.1")
    _validate("plateau_patience", lambda v: v >= 0,
              "--plateau_patience must be >= 0 (0 trains exactly --epochs)")
    _validate("plateau_tol", lambda v: v >= 0, "--plateau_tol must be >= 0")
    _validate("learning_rate", lambda v: v > 0, "--learning_rate must be positive")
    _validate("adam_epsilon", lambda v: 0 < v < 1, "--adam_epsilon must be in (0, 1)")
    _validate("momentum", lambda v: 0 <= v < 1, "--momentum must be in [0, 1)")
    _validate("eval_batch_size", lambda v: v >= 1, "--eval_batch_size must be positive")
    _validate("steps_per_call", lambda v: v >= 1, "--steps_per_call must be positive")
    define_remedy_flags()
    define_step_remedy_flags()


def define_remedy_flags() -> None:
    """The data and schedule remedies (``lbgap_tf.train.schedules``), all off by default."""
    flags.DEFINE_bool("augment", False,
                      "Augment training batches (image networks only): horizontal flips, "
                      "rotations up to 10 degrees, translations up to 0.2 of the image size.")
    flags.DEFINE_enum("lr_scaling", "none", train.LR_SCALINGS,
                      "Scale --learning_rate by the GLOBAL batch over --reference_batch: none, "
                      "linear (Goyal et al.) or sqrt (Hoffer et al.).")
    flags.DEFINE_integer("reference_batch", train.SB_BATCH_SIZE,
                         "The batch --learning_rate belongs to (the SB batch), for "
                         "--lr_scaling and --regime_adaptation.")
    flags.DEFINE_integer("warmup_epochs", 0,
                         "Ramp the rate linearly from --learning_rate to the scaled rate over "
                         "this many epochs (needs --lr_scaling).")
    flags.DEFINE_integer("ghost_batch", None,
                         "Ghost batch normalization: BN statistics per chunk of this many "
                         "examples of each replica's batch (must divide it).")
    flags.DEFINE_bool("regime_adaptation", False,
                      "Train as many updates as --epochs epochs of --reference_batch would "
                      "make (Hoffer et al.'s regime adaptation).")
    flags.DEFINE_list("batch_schedule", [],
                      "Batch growth: EPOCH:BATCH entries, e.g. 5:1024,10:6000 (GLOBAL batch "
                      "from that epoch on; growing, at most the training set).")
    _validate("reference_batch", lambda v: v >= 1, "--reference_batch must be positive")
    _validate("warmup_epochs", lambda v: v >= 0, "--warmup_epochs must be >= 0")
    _validate("ghost_batch", lambda v: v >= 1, "--ghost_batch must be positive")
    _validate("batch_schedule", lambda v: all(_schedule_entry(text) for text in v),
              "--batch_schedule takes EPOCH:BATCH entries with positive integers, e.g. "
              "--batch_schedule=5:1024,10:6000")


def _schedule_entry(text: str) -> tuple[int, int] | None:
    """(epoch, batch) of an EPOCH:BATCH entry, None when malformed."""
    parts = text.split(":")
    if len(parts) != 2 or not all(part.isdigit() and int(part) > 0 for part in parts):
        return None
    return int(parts[0]), int(parts[1])


def define_step_remedy_flags() -> None:
    """--step_remedy and its parameters: how each training step uses its batch."""
    flags.DEFINE_enum(
        "step_remedy", "none", train.STEP_REMEDIES,
        "How every run of the binary (gap: SB and LB) takes its steps: none (one gradient "
        "step), conservative (Li et al.'s proximal step, --conservative_lambda/_iterations), "
        "adversarial (FGSM inputs, --adversarial_eps), sam or asam (sharpness-aware, "
        "--sam_rho, --asam_eta; perturbation from the GLOBAL batch's gradient, m = global "
        "batch).")
    flags.DEFINE_float("conservative_lambda", 1e-3,
                       "Conservative training: proximal weight λ (the paper's 1e-3).")
    flags.DEFINE_integer("conservative_iterations", 3,
                         "Conservative training: optimizer iterations per batch (the paper's 3).")
    flags.DEFINE_float("adversarial_eps", 0.03,
                       "Adversarial training: FGSM L-infinity radius on the inputs (pixels in "
                       "[0, 1]).")
    flags.DEFINE_float("sam_rho", 0.05, "SAM/ASAM radius rho (Foret et al.'s 0.05).")
    flags.DEFINE_float("asam_eta", 0.01, "ASAM's eta in T_w = |w| + eta (Kwon et al.'s 0.01).")
    for name in ("conservative_lambda", "adversarial_eps", "sam_rho", "asam_eta"):
        _validate(name, lambda v: v >= 0, f"--{name} must be >= 0")
    _validate("conservative_iterations", lambda v: v >= 1,
              "--conservative_iterations must be a positive integer")


def define_distribution_flags() -> None:
    """The strategy flags (``define_strategy_flags``), --precision and --jit_compile."""
    define_strategy_flags()
    flags.DEFINE_enum("precision", "float32", train.PRECISIONS, "Keras dtype policy.")
    flags.DEFINE_bool("jit_compile", False, "XLA-compile the training steps (one replica).")


def define_strategy_flags() -> None:
    """--strategy, --cpu_devices, --tpu_address and the checks of their combinations."""
    flags.DEFINE_enum(
        "strategy", "default", distribute.STRATEGIES,
        "tf.distribute strategy: default (one device), one_device, mirrored (all GPUs, else "
        "all logical CPUs, see --cpu_devices), multi_worker_mirrored (cluster from TF_CONFIG), "
        "tpu (see --tpu_address).")
    flags.DEFINE_integer("cpu_devices", None,
                         "Split the CPU into this many logical devices (replicas of "
                         "--strategy=mirrored on a machine without GPUs).")
    flags.DEFINE_string("tpu_address", None, "TPU name or grpc://host:port ('local' on a TPU "
                        "VM); only with --strategy=tpu.")
    _validate("cpu_devices", lambda v: v >= 1, "--cpu_devices must be at least 1")
    flags.register_multi_flags_validator(
        ["strategy", "cpu_devices"],
        lambda f: f["cpu_devices"] in (None, 1) or f["strategy"] == "mirrored",
        message="--cpu_devices > 1 makes replicas only for --strategy=mirrored: add "
                "--strategy=mirrored or drop --cpu_devices")
    flags.register_multi_flags_validator(
        ["strategy", "tpu_address"],
        lambda f: f["tpu_address"] is None or f["strategy"] == "tpu",
        message="--tpu_address needs --strategy=tpu")


def define_checkpoint_flags() -> None:
    """--checkpoint_every_s: how often a training run saves its checkpoint."""
    flags.DEFINE_float(
        "checkpoint_every_s", 0.0,
        "0: checkpoint after every epoch. t > 0: after the first epoch ending t seconds or "
        "more after the last checkpoint, and after the last epoch; a killed run loses at "
        "most t seconds of training and writes fewer bytes. Changes no result.")
    _validate("checkpoint_every_s", lambda v: v >= 0, "--checkpoint_every_s must be >= 0")


def define_output_flags() -> None:
    """--output_dir, --seed, --quiet."""
    flags.DEFINE_string("output_dir", "results/",
                        "Receives the result CSVs and the run directories.")
    flags.DEFINE_integer("seed", 0, "Seed of initial weights, data order and dropout.")
    flags.DEFINE_bool("quiet", False, "Log warnings and errors only (for CI).")
    _validate("seed", lambda v: v >= 0, "--seed must be >= 0")
    flags.register_validator("output_dir", bool, message="--output_dir must not be empty")


def define_networks_flags(*, trials: int) -> None:
    """--models and --trials of the experiments over several networks (gap, remedies)."""
    flags.DEFINE_list("models", ["F1"], "Networks, e.g. F1,C1 (Table 1 names).")
    flags.DEFINE_integer("trials", trials, "Trials per network; trial k uses seed --seed + k.")
    _validate("trials", lambda v: v >= 1, "--trials must be a positive integer")
    flags.register_validator("models", lambda names: bool(names) and all(
        name in models.MODEL_NAMES for name in names),
        message=f"--models takes names from {', '.join(models.MODEL_NAMES)}, e.g. F1,C1")


def define_pair_flags() -> None:
    """SB and LB batch sizes and epochs. The gap benchmark, the remedies and the figures share
    these names and meanings, so their runs of the same settings have the same run ids."""
    flags.DEFINE_integer("sb_batch_size", train.SB_BATCH_SIZE,
                         "SB GLOBAL batch size (over all replicas); the paper's 256.")
    flags.DEFINE_integer("lb_batch_size", None,
                         "LB GLOBAL batch size (over all replicas). Default: --lb_fraction of "
                         "the training set (the paper's 10%).")
    flags.DEFINE_integer("sb_epochs", 20, "SB epochs (the cap under --plateau_patience).")
    flags.DEFINE_integer("lb_epochs", 20, "LB epochs (the cap under --plateau_patience).")
    for name in ("sb_batch_size", "lb_batch_size", "sb_epochs", "lb_epochs"):
        _validate(name, lambda v: v >= 1, f"--{name} must be a positive integer")


def define_sharpness_flags(*, epsilons=("1e-3",), subspace_dims: tuple[str, ...] | None = (
        "full",), solvers=("lbfgsb",)) -> None:
    """The sharpness plan of every measured iterate: box sizes, spaces (no --subspace_dims
    when ``subspace_dims`` is None: full space only), solvers, iterations, evaluation set."""
    flags.DEFINE_list("epsilons", list(epsilons), "Sharpness box sizes (Metric 2.1).")
    if subspace_dims is not None:
        flags.DEFINE_list("subspace_dims", list(subspace_dims),
                          "Sharpness spaces: 'full' (Table 3) and/or random subspace "
                          "dimensions p (Table 4: 100).")
    flags.DEFINE_list("solvers", list(solvers),
                      "Sharpness solvers: lbfgsb (the paper's), lbfgsb_scaled (L-BFGS-B in the "
                      "box-scaled variables y / r) and/or ascent.")
    flags.DEFINE_integer("sharpness_max_iter", 10, "Sharpness solver iterations (the paper: 10).")
    flags.DEFINE_integer("sharpness_examples", None,
                         "Evaluate sharpness on a fixed seeded subset of this many training "
                         "examples. Default: the whole training set.")
    flags.DEFINE_integer("sharpness_batch_size", 5000,
                         "GLOBAL evaluation batch of the sharpness objective (batch-mode BN "
                         "depends on it; the authors used 5000).")
    for name in ("sharpness_max_iter", "sharpness_examples", "sharpness_batch_size"):
        _validate(name, lambda v: v >= 1, f"--{name} must be a positive integer")
    flags.register_validator("solvers", lambda names: bool(names) and set(names) <= set(
        sharpness.SOLVERS), message=f"--solvers takes names from {', '.join(sharpness.SOLVERS)}")


# --- getters ---------------------------------------------------------------------------------

def synthetic_spec(model: str | None = None) -> data.SyntheticSpec | None:
    """The synthetic task of the flags (None unless --dataset=synthetic).

    Its examples take the paper input shape and class count of ``model`` (default --model),
    so a synthetic run exercises the real architecture.
    """
    if FLAGS.dataset != "synthetic":
        return None
    model_spec = models.spec(model or FLAGS.model)
    return data.SyntheticSpec(
        num_train=FLAGS.synthetic_train_examples, num_test=FLAGS.synthetic_test_examples,
        input_shape=model_spec.input_shape, num_classes=model_spec.num_classes,
        seed=FLAGS.seed, noise=FLAGS.synthetic_noise)


def optimization_settings() -> dict:
    """``TrainConfig`` fields of the data, optimization, distribution and output flags, i.e.
    everything but the model, regime, batch size, epochs and x0 of one run."""
    return dict(
        dataset=FLAGS.dataset, lb_fraction=FLAGS.lb_fraction,
        plateau_patience=FLAGS.plateau_patience, plateau_tol=FLAGS.plateau_tol,
        optimizer=FLAGS.optimizer, learning_rate=FLAGS.learning_rate,
        adam_epsilon=FLAGS.adam_epsilon, momentum=FLAGS.momentum,
        bn_mode=FLAGS.bn_mode, bn_sync=FLAGS.bn_sync, precision=FLAGS.precision,
        jit_compile=FLAGS.jit_compile, seed=FLAGS.seed, deterministic=FLAGS.deterministic,
        eval_every_epoch=FLAGS.eval_every_epoch, eval_batch_size=FLAGS.eval_batch_size,
        steps_per_call=FLAGS.steps_per_call, augment=FLAGS.augment, lr_scaling=FLAGS.lr_scaling,
        reference_batch=FLAGS.reference_batch, warmup_epochs=FLAGS.warmup_epochs,
        ghost_batch=FLAGS.ghost_batch, regime_adaptation=FLAGS.regime_adaptation,
        batch_schedule=tuple(_schedule_entry(text) for text in FLAGS.batch_schedule),
        **step_remedy_settings())


def step_remedy_settings() -> dict:
    """``TrainConfig`` fields of the step remedy flags."""
    return {name: FLAGS[name].value for name in (
        "step_remedy", "conservative_lambda", "conservative_iterations", "adversarial_eps",
        "sam_rho", "asam_eta")}


def train_config(**overrides) -> train.TrainConfig:
    """The ``TrainConfig`` of the model/data, training, distribution and output flags."""
    values = dict(optimization_settings(), model=FLAGS.model, regime=FLAGS.regime,
                  batch_size=FLAGS.batch_size, epochs=FLAGS.epochs, x0_path=FLAGS.x0,
                  synthetic=synthetic_spec())
    values.update(overrides)
    return train.TrainConfig(**values)


def networks() -> tuple[str, ...]:
    """The networks of --models. --dataset=synthetic takes one: its examples take that
    network's input shape and class count."""
    if FLAGS.dataset == "synthetic" and len(FLAGS.models) > 1:
        raise ValueError("--dataset=synthetic takes one network at a time: pass one --models")
    return tuple(FLAGS.models)


def pair_configs(**fields) -> tuple[train.TrainConfig, train.TrainConfig]:
    """The SB and LB ``TrainConfig``s of the optimization and pair flags, with ``fields``
    (e.g. model, synthetic) set in both."""
    shared = dict(optimization_settings(), **fields)
    return (train.TrainConfig(**shared, regime="SB", batch_size=FLAGS.sb_batch_size,
                              epochs=FLAGS.sb_epochs),
            train.TrainConfig(**shared, regime="LB", batch_size=FLAGS.lb_batch_size,
                              epochs=FLAGS.lb_epochs))


def sharpness_plan() -> gap.SharpnessPlan:
    """The ``gap.SharpnessPlan`` of the sharpness flags (full space only without
    --subspace_dims)."""
    try:
        epsilons = tuple(float(text) for text in FLAGS.epsilons)
    except ValueError as error:
        raise sharpness.SharpnessError(
            f"--epsilons must be numbers, got {FLAGS.epsilons}: e.g. --epsilons=1e-3") from error
    dims = []
    for text in FLAGS.subspace_dims if "subspace_dims" in FLAGS else ["full"]:
        if text != "full" and not (text.isdigit() and int(text) > 0):
            raise sharpness.SharpnessError(
                f"--subspace_dims takes 'full' and positive integers, got {text!r}: e.g. "
                "--subspace_dims=full,100")
        dims.append(None if text == "full" else int(text))
    return gap.SharpnessPlan(
        epsilons=epsilons, subspace_dims=tuple(dims), solvers=tuple(FLAGS.solvers),
        max_iter=FLAGS.sharpness_max_iter, eval_examples=FLAGS.sharpness_examples,
        eval_batch_size=FLAGS.sharpness_batch_size)


def strategy():
    """The tf.distribute strategy of the distribution flags."""
    return distribute.get_strategy(FLAGS.strategy, cpu_devices=FLAGS.cpu_devices,
                                   tpu_address=FLAGS.tpu_address)


def data_dirs() -> dict:
    """``data_dir`` and ``tfds_data_dir`` keyword arguments for the data loaders."""
    return {"data_dir": FLAGS.data_dir, "tfds_data_dir": FLAGS.tfds_data_dir}


def nondefault_flags() -> str:
    """The flags (of these groups and the binary's own) that differ from their defaults,
    as compact JSON sorted by name, e.g. ``{"batch_size":6000,"regime":"LB"}``."""
    changed = {}
    for module, module_flags in FLAGS.flags_by_module_dict().items():
        if module.startswith("absl"):
            continue
        for flag in module_flags:
            if flag.value != flag.default:
                changed[flag.name] = flag.value
    return json.dumps(changed, sort_keys=True, separators=(",", ":"), default=str)


# --- entry point -----------------------------------------------------------------------------

SUITE_DIRECTORIES = tuple(os.path.dirname(package.__file__) + os.sep
                          for package in (lbgap_tf, benchmarks))


class _SuiteInfoOnly(std_logging.Filter):
    """Passes warnings and errors from anywhere, lower levels only from the suite's modules
    (files under ``SUITE_DIRECTORIES``)."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return (record.levelno >= std_logging.WARNING
                or record.pathname.startswith(SUITE_DIRECTORIES))


_LIBRARY_INFO_FILTER = _SuiteInfoOnly()


def _route_python_logs(show_library_info: bool) -> None:
    """Sends every Python log record through absl's handler, filtered per the policy.

    TensorFlow's logger gets a handler of its own when it is created before absl's handler
    is installed, which would print each TensorFlow warning twice (once in absl's format); with
    absl's handler on the root logger that handler is removed.
    """
    handler = logging.get_absl_handler()
    if handler in std_logging.getLogger().handlers:
        tf_logger = tf.get_logger()
        for own_handler in list(tf_logger.handlers):
            tf_logger.removeHandler(own_handler)
    if show_library_info:
        handler.removeFilter(_LIBRARY_INFO_FILTER)
    else:
        handler.addFilter(_LIBRARY_INFO_FILTER)


def parse_flags(argv: list[str]) -> list[str]:
    """Parses ``argv`` into FLAGS; a bad flag is one stderr line and exit status 2. Then
    applies --cpu_devices (before TensorFlow initialises devices), --deterministic (op
    determinism for the whole process), --quiet and the logging policy (module docstring)."""
    remaining = contract.parse_flags(argv)
    if "cpu_devices" in FLAGS and FLAGS.cpu_devices is not None:
        try:
            distribute.split_cpu(FLAGS.cpu_devices)
        except ValueError as error:
            fail(error, EXIT_FLAG_ERROR)
    if "deterministic" in FLAGS and FLAGS.deterministic:
        # Process-wide from the start, not only once a run trains (train.train enables it
        # too): a process that finds its runs trained by an earlier one (a resumed gap
        # experiment, a figure reusing the gap runs) measures with the same kernels.
        tf.config.experimental.enable_op_determinism()
    if "quiet" in FLAGS and FLAGS.quiet:
        logging.set_verbosity(logging.WARNING)
    _route_python_logs(show_library_info=logging.level_debug())
    return remaining


def run(main) -> None:
    """``absl.app.run(main)`` with one-line errors: a bad flag exits 2, a library
    ``ValueError`` exits 1; neither prints a traceback or writes results."""
    app.run(guard(main), flags_parser=parse_flags)
