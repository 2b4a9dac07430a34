"""Flags shared by the figure binaries (parametric, batch_sweep, warm_start,
sharpness_along_training), on top of ``common``'s groups, and their getters.

The SB/LB flags carry the names and meanings of ``benchmarks.gap``'s, so a figure given the
gap preset's training flags and output folder finds the gap benchmark's runs (same run ids)
instead of training them again.
"""

from __future__ import annotations

import math

from absl import flags

from benchmarks import common
from lbgap_tf import gap, sharpness, train
from lbgap_tf.measures import landscape

FLAGS = flags.FLAGS


def define_figure_flags() -> None:
    """The data, optimization, distribution and output groups, --model and --replot."""
    common.define_model_data_flags()
    common.define_optimization_flags()
    common.define_distribution_flags()
    common.define_output_flags()
    flags.DEFINE_bool("replot", False,
                      "Only redraw the PNGs from the CSV rows already in --output_dir: no "
                      "training, no evaluation, no TensorFlow work.")


def define_pair_flags() -> None:
    """SB and LB batch sizes and epochs (as ``benchmarks.gap``)."""
    flags.DEFINE_integer("sb_batch_size", train.SB_BATCH_SIZE,
                         "SB GLOBAL batch size (over all replicas); the paper's 256.")
    flags.DEFINE_integer("lb_batch_size", None,
                         "LB GLOBAL batch size (over all replicas). Default: --lb_fraction of "
                         "the training set (the paper's 10%).")
    flags.DEFINE_integer("sb_epochs", 20, "SB epochs (the cap under --plateau_patience).")
    flags.DEFINE_integer("lb_epochs", 20, "LB epochs (the cap under --plateau_patience).")
    for name in ("sb_batch_size", "lb_batch_size", "sb_epochs", "lb_epochs"):
        flags.register_validator(name, lambda v: v is None or v >= 1,
                                 message=f"--{name} must be a positive integer")


def define_sharpness_flags(*, epsilons=("1e-3",), subspace_dims=("full",),
                           solvers=("lbfgsb",)) -> None:
    """The sharpness plan of every final iterate or snapshot (as ``benchmarks.gap``)."""
    flags.DEFINE_list("epsilons", list(epsilons), "Sharpness box sizes (Metric 2.1).")
    flags.DEFINE_list("subspace_dims", list(subspace_dims),
                      "Sharpness spaces: 'full' and/or random subspace dimensions p.")
    flags.DEFINE_list("solvers", list(solvers),
                      "Sharpness solvers: lbfgsb (the paper's), lbfgsb_scaled and/or ascent.")
    flags.DEFINE_integer("sharpness_max_iter", 10, "Sharpness solver iterations (the paper: 10).")
    flags.DEFINE_integer("sharpness_examples", None,
                         "Evaluate sharpness on a fixed seeded subset of this many training "
                         "examples. Default: the whole training set.")
    flags.DEFINE_integer("sharpness_batch_size", 5000,
                         "GLOBAL evaluation batch of the sharpness objective (batch-mode BN "
                         "depends on it; the authors used 5000).")
    for name in ("sharpness_max_iter", "sharpness_examples", "sharpness_batch_size"):
        flags.register_validator(name, lambda v: v is None or v >= 1,
                                 message=f"--{name} must be a positive integer")
    flags.register_validator("solvers", lambda names: bool(names) and set(names) <= set(
        sharpness.SOLVERS), message=f"--solvers takes {', '.join(sharpness.SOLVERS)}")


def sharpness_plan() -> gap.SharpnessPlan:
    """The ``gap.SharpnessPlan`` of the sharpness flags."""
    try:
        epsilons = tuple(float(text) for text in FLAGS.epsilons)
    except ValueError as error:
        raise sharpness.SharpnessError(
            f"--epsilons must be numbers, got {FLAGS.epsilons}: e.g. --epsilons=1e-3") from error
    dims = []
    for text in FLAGS.subspace_dims:
        if text != "full" and not (text.isdigit() and int(text) > 0):
            raise sharpness.SharpnessError(
                f"--subspace_dims takes 'full' and positive integers, got {text!r}")
        dims.append(None if text == "full" else int(text))
    return gap.SharpnessPlan(
        epsilons=epsilons, subspace_dims=tuple(dims), solvers=tuple(FLAGS.solvers),
        max_iter=FLAGS.sharpness_max_iter, eval_examples=FLAGS.sharpness_examples,
        eval_batch_size=FLAGS.sharpness_batch_size)


def int_list(name: str, values: list[str]) -> tuple[int, ...]:
    """A list flag of positive integers, e.g. --batch_sizes=256,1024."""
    try:
        return tuple(int(text) for text in values)
    except ValueError as error:
        raise ValueError(
            f"--{name} must be integers, got {','.join(values)}: e.g. --{name}=256,1024"
        ) from error


def train_config(**fields) -> train.TrainConfig:
    """A ``TrainConfig`` of the flags (model, seed, data, optimization) with ``fields`` set."""
    return train.TrainConfig(**common.optimization_settings(), model=FLAGS.model,
                             synthetic=common.synthetic_spec(), **fields)


def pair_configs() -> tuple[train.TrainConfig, train.TrainConfig]:
    """The SB and LB ``TrainConfig``s of the flags (model and seed from --model, --seed)."""
    return (train_config(regime="SB", batch_size=FLAGS.sb_batch_size, epochs=FLAGS.sb_epochs),
            train_config(regime="LB", batch_size=FLAGS.lb_batch_size, epochs=FLAGS.lb_epochs))


def float_list(name: str, values: list[str], *, allow_empty: bool = False
               ) -> tuple[float, ...]:
    """A list flag of numbers, strictly increasing (``landscape.check_grid``)."""
    try:
        numbers = tuple(float(text) for text in values)
    except ValueError as error:
        raise landscape.LandscapeError(
            f"--{name} must be numbers, got {','.join(values)}: e.g. --{name}=-1,0,1") from error
    if not all(math.isfinite(value) for value in numbers):
        raise landscape.LandscapeError(f"--{name} must be finite numbers")
    return landscape.check_grid(numbers, f"--{name}", allow_empty=allow_empty)
