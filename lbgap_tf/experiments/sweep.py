"""Fig. 4 of Keskar et al.: test accuracy and sharpness of the final iterate against the
GLOBAL batch size.

For each trial (seed ``first_seed + trial``) one run per batch size, all from the same x0:
the smallest batch draws x0 from the seed and saves it, every larger batch starts from that
file (so with batch 256 and the gap benchmark's SB settings the first run IS the gap
benchmark's SB run and is reused from the same output folder). Runs with a batch of at most
256 are labelled SB, larger ones LB (the label is recorded, it changes nothing). Each final
iterate gets the sharpness measurements of the plan (``sharpness.csv`` rows, as the gap
benchmark's). A rerun trains and measures nothing that is already recorded.

``fig4_sweep.csv`` is derived from those rows on every run: one row per (run, sharpness
setting) with the batch size, the trial, the run's accuracies and the sharpness, and is all
the figure is drawn from.
"""

from __future__ import annotations

import dataclasses
import os
import time

import tensorflow as tf

from lbgap_tf import gap, results, tables, train
from lbgap_tf.experiments import common

SWEEP_FILE = "fig4_sweep.csv"
BENCHMARK = "batch_sweep"


class SweepError(ValueError):
    """A batch-size sweep cannot run as configured (no batch sizes, out of order, ...)."""


def check_batch_sizes(batch_sizes) -> tuple[int, ...]:
    """``batch_sizes`` as positive integers in strictly increasing order, or SweepError."""
    sizes = tuple(batch_sizes)
    if not sizes:
        raise SweepError("no batch size given: pass e.g. --batch_sizes=256,1024,6000")
    if any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in sizes):
        raise SweepError(f"batch sizes must be positive integers, got {sizes}")
    if any(b <= a for a, b in zip(sizes[:-1], sizes[1:], strict=True)):
        raise SweepError(
            f"batch sizes must be strictly increasing, got {', '.join(map(str, sizes))}: list "
            "each GLOBAL batch size once, smallest first")
    return sizes


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """A batch-size sweep.

    Attributes:
      base: the training settings every run shares (model, data set, epochs, optimizer, BN,
        evaluation); its regime, batch size, seed and x0 are set per run.
      batch_sizes: GLOBAL batch sizes, strictly increasing.
      trials: trials; trial k uses seed ``first_seed + k`` for x0, data order and subspaces.
      sharpness: the measurements of each final iterate.
    """

    base: train.TrainConfig
    batch_sizes: tuple[int, ...]
    trials: int = 1
    first_seed: int = 0
    sharpness: gap.SharpnessPlan = gap.SharpnessPlan(
        epsilons=(1e-3,), subspace_dims=(None,), solvers=("lbfgsb",))

    def __post_init__(self):
        check_batch_sizes(self.batch_sizes)
        if self.trials < 1:
            raise SweepError(f"trials must be at least 1, got {self.trials}")

    def run_config(self, batch_size: int, seed: int, x0_path: str | None) -> train.TrainConfig:
        regime = "SB" if batch_size <= train.SB_BATCH_SIZE else "LB"
        return dataclasses.replace(self.base, regime=regime, batch_size=batch_size, seed=seed,
                                   x0_path=x0_path)

    def sweep_id(self) -> str:
        key = {"base": train.config_dict(dataclasses.replace(self.base, seed=0)),
               "batch_sizes": self.batch_sizes,
               "sharpness": dataclasses.asdict(self.sharpness)}
        return results.new_run_id(key, prefix=f"{self.base.model}-")


@dataclasses.dataclass(frozen=True)
class SweepOutcome:
    rows: list[dict]
    csv_path: str
    wall_time_s: float


def run(config: SweepConfig, *, output_dir: str, strategy: tf.distribute.Strategy | None = None,
        data_dirs: dict | None = None, quiet: bool = False,
        nondefault_flags: str = "") -> SweepOutcome:
    """Trains and measures what is missing, then rewrites ``fig4_sweep.csv`` from the rows;
    returns its rows as read back from the file."""
    started = time.perf_counter()
    strategy = strategy or tf.distribute.get_strategy()
    store = common.RunStore(output_dir, strategy=strategy, benchmark=BENCHMARK, quiet=quiet,
                            nondefault_flags=nondefault_flags)
    train_data, test_data = train.load_data(config.base, **(data_dirs or {}))
    for batch_size in config.batch_sizes:  # Every batch is checked before any training.
        store.resolve(config.run_config(batch_size, config.first_seed, None),
                      train_data.info.num_examples)
    progress = common.Progress("batch sweep", config.trials * len(config.batch_sizes)
                               * (1 + common.sharpness_steps(config.sharpness)))
    points = []
    for trial in range(config.trials):
        seed = config.first_seed + trial
        x0_path = None
        for batch_size in config.batch_sizes:
            finished = store.get(config.run_config(batch_size, seed, x0_path), train_data,
                                 test_data, progress)
            x0_path = x0_path or finished.x0_path
            measured = common.measure_sharpness(
                lambda run=finished: store.model(run), finished.row, plan=config.sharpness,
                seed=seed, train_data=train_data, output_dir=output_dir, strategy=strategy,
                benchmark=BENCHMARK, precision=finished.config.precision,
                nondefault_flags=nondefault_flags, progress=progress)
            points += [_point(config, trial, finished, row) for row in measured]
    csv_path = os.path.join(output_dir, SWEEP_FILE)
    if train.is_chief(strategy):
        tables.write_table(csv_path, points)
        points = results.read_rows(csv_path)  # As a replot will see them: strings.
    return SweepOutcome(points, csv_path, time.perf_counter() - started)


def _point(config: SweepConfig, trial: int, run: common.FinishedRun, measured: dict) -> dict:
    """One figure row: the run at one batch size and one sharpness measurement of it."""
    row = run.row
    return {
        "sweep_id": config.sweep_id(), "figure": "fig4", "model": row["model"],
        "dataset": row["dataset"], "trial": trial, "seed": row["seed"],
        "batch_size": row["global_batch_size"], "regime": row["regime"],
        "run_id": row["run_id"], "x0": row["x0"], "epochs_run": row["epochs_run"],
        "stop_rule": row["stop_rule"], "optimizer": row["optimizer"],
        "learning_rate": row["learning_rate"], "bn_mode": row["bn_mode"],
        "eval_batch_size": row["eval_batch_size"], "train_loss": row["train_loss"],
        "train_accuracy": row["train_accuracy"], "test_loss": row["test_loss"],
        "test_accuracy": row["test_accuracy"],
        **{f"sharpness_{column}": measured[column] for column in (
            "subspace", "subspace_dim", "epsilon", "solver", "max_iter", "eval_examples",
            "eval_batch_size")},
        "sharpness": measured["sharpness"], "device_kind": measured["device_kind"],
        "git_revision": row["git_revision"],
    }

