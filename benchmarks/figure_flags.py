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
from lbgap_tf import train
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


def pair_configs() -> tuple[train.TrainConfig, train.TrainConfig]:
    """The SB and LB ``TrainConfig``s of the flags (model and seed from --model, --seed)."""
    shared = dict(common.optimization_settings(), model=FLAGS.model,
                  synthetic=common.synthetic_spec())
    sb = train.TrainConfig(**shared, regime="SB", batch_size=FLAGS.sb_batch_size,
                           epochs=FLAGS.sb_epochs)
    lb = train.TrainConfig(**shared, regime="LB", batch_size=FLAGS.lb_batch_size,
                           epochs=FLAGS.lb_epochs)
    return sb, lb


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
