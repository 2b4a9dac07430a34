"""Fig. 5 of Keskar et al.: LB runs warm-started ("piggybacked") from an SB run's iterates.

For each trial (seed ``first_seed + trial``): one SB run that keeps its weights after every
epoch (``snapshot_epochs`` 1..SB epochs, ``snapshots/epoch<k>.npz``, the x0 archive format);
then for each start epoch k one LB run whose x0 is the SB iterate after k epochs (k = 0: the
SB run's own x0, i.e. plain LB from the same start as in the gap benchmark) with a fresh
optimizer, and the sharpness of each LB solution (``sharpness.csv`` rows). LB runs are
distinct runs because their x0 digests differ. A rerun trains and measures nothing already
recorded; an interrupted SB run resumes with every snapshot of its checkpointed epochs.

``fig5_warm_start.csv`` is derived on every run: one row per (LB run, sharpness setting) with
the start epoch, the SB run, the LB run's accuracies and the sharpness; the figure is drawn
from it alone.
"""

from __future__ import annotations

import dataclasses
import os
import time

import tensorflow as tf

from lbgap_tf import gap, results, tables, train
from lbgap_tf.experiments import common

WARM_START_FILE = "fig5_warm_start.csv"
BENCHMARK = "warm_start"


class WarmStartError(ValueError):
    """A warm-start experiment cannot run as configured (no start epochs, out of order, an
    epoch the SB run does not keep, ...)."""


@dataclasses.dataclass(frozen=True)
class WarmStartConfig:
    """SB settings (its epochs bound the start epochs), LB settings (its epochs are each LB
    run's budget), the start epochs k (strictly increasing, 0 <= k <= SB epochs), trials and
    the sharpness plan of each LB solution."""

    sb: train.TrainConfig
    lb: train.TrainConfig
    start_epochs: tuple[int, ...]
    trials: int = 1
    first_seed: int = 0
    sharpness: gap.SharpnessPlan = gap.SharpnessPlan(
        epsilons=(1e-3,), subspace_dims=(None,), solvers=("lbfgsb",))

    def __post_init__(self):
        if self.sb.regime != "SB" or self.lb.regime != "LB":
            raise WarmStartError("the sb and lb settings must have regimes SB and LB")
        epochs = tuple(self.start_epochs)
        if not epochs:
            raise WarmStartError("no start epoch given: pass e.g. --start_epochs=0,1,5,10")
        if any(b <= a for a, b in zip(epochs[:-1], epochs[1:], strict=True)) or epochs[0] < 0:
            raise WarmStartError(
                f"start epochs must be strictly increasing and >= 0, got "
                f"{', '.join(map(str, epochs))}: list each epoch once, smallest first")
        if epochs[-1] > self.sb.epochs:
            raise WarmStartError(
                f"start epoch {epochs[-1]} is past the SB run's {self.sb.epochs} epochs, so the "
                f"SB run never keeps it: raise --sb_epochs to at least {epochs[-1]} or drop it")
        if self.sb.plateau_patience:
            raise WarmStartError(
                "the SB run must train a fixed number of epochs (plateau stopping could end it "
                "before a start epoch): pass --plateau_patience=0")
        if self.trials < 1:
            raise WarmStartError(f"trials must be at least 1, got {self.trials}")

    def sb_config(self, seed: int) -> train.TrainConfig:
        return dataclasses.replace(self.sb, seed=seed,
                                   snapshot_epochs=tuple(range(1, self.sb.epochs + 1)))

    def warm_start_id(self) -> str:
        key = {"sb": train.config_dict(dataclasses.replace(self.sb, seed=0)),
               "lb": train.config_dict(dataclasses.replace(self.lb, seed=0)),
               "start_epochs": self.start_epochs,
               "sharpness": dataclasses.asdict(self.sharpness)}
        return results.new_run_id(key, prefix=f"{self.sb.model}-")


@dataclasses.dataclass(frozen=True)
class WarmStartOutcome:
    rows: list[dict]
    csv_path: str
    wall_time_s: float


def run(config: WarmStartConfig, *, output_dir: str,
        strategy: tf.distribute.Strategy | None = None, data_dirs: dict | None = None,
        quiet: bool = False, nondefault_flags: str = "") -> WarmStartOutcome:
    """Trains and measures what is missing, then rewrites ``fig5_warm_start.csv``; returns its
    rows as read back from the file."""
    started = time.perf_counter()
    strategy = strategy or tf.distribute.get_strategy()
    store = common.RunStore(output_dir, strategy=strategy, benchmark=BENCHMARK, quiet=quiet,
                            nondefault_flags=nondefault_flags)
    train_data, test_data = train.load_data(config.sb, **(data_dirs or {}))
    num_train = train_data.info.num_examples
    store.resolve(config.sb, num_train)  # Both batches are checked before any training.
    store.resolve(config.lb, num_train)
    progress = common.Progress("warm start", config.trials * (1 + len(config.start_epochs) * (
        1 + common.sharpness_steps(config.sharpness))))
    points = []
    for trial in range(config.trials):
        seed = config.first_seed + trial
        sb = store.get(config.sb_config(seed), train_data, test_data, progress)
        starts = {k: train.snapshot_path(sb.run_dir, k) for k in config.start_epochs}
        never_kept = [k for k, path in starts.items() if not os.path.exists(path)]
        if never_kept:
            raise WarmStartError(
                f"the SB run {sb.run_id} kept no weights after epoch(s) "
                f"{', '.join(map(str, never_kept))} (it was trained without snapshots, e.g. by "
                "the gap benchmark): use a fresh --output_dir so that it is trained with them")
        for start_epoch, x0_path in starts.items():
            lb = store.get(dataclasses.replace(config.lb, seed=seed, x0_path=x0_path),
                           train_data, test_data, progress)
            measured = common.measure_sharpness(
                lambda run=lb: store.model(run), lb.row, plan=config.sharpness, seed=seed,
                train_data=train_data, output_dir=output_dir, strategy=strategy,
                benchmark=BENCHMARK, precision=lb.config.precision,
                nondefault_flags=nondefault_flags, progress=progress)
            points += [_point(config, trial, start_epoch, sb, lb, row) for row in measured]
    csv_path = os.path.join(output_dir, WARM_START_FILE)
    if train.is_chief(strategy):
        tables.write_table(csv_path, points)
        points = results.read_rows(csv_path)
    return WarmStartOutcome(points, csv_path, time.perf_counter() - started)


def _point(config, trial, start_epoch, sb, lb, measured) -> dict:
    row = lb.row
    return {
        "warm_start_id": config.warm_start_id(), "figure": "fig5", "model": row["model"],
        "dataset": row["dataset"], "trial": trial, "seed": row["seed"],
        "start_epoch": start_epoch, "sb_run_id": sb.run_id,
        "sb_batch_size": sb.config.batch_size, "sb_epochs": sb.config.epochs,
        "lb_run_id": row["run_id"], "lb_batch_size": row["global_batch_size"],
        "lb_epochs": row["epochs_run"], "x0": row["x0"], "optimizer": row["optimizer"],
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
