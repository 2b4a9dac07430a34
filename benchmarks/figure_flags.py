"""Flags shared by the figure binaries (parametric, batch_sweep, warm_start,
sharpness_along_training), on top of ``common``'s groups, and their getters.

The SB/LB and sharpness flags are ``common``'s, as in ``benchmarks.gap``, so a figure given the
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
    return common.pair_configs(model=FLAGS.model, synthetic=common.synthetic_spec())


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
