"""Fig. 6 of Keskar et al.: sharpness against the training cross-entropy along training, for
an SB and an LB run from the same x0.

Each run keeps its weights after the chosen epochs (``snapshot_epochs``); each kept iterate is
evaluated EXACTLY on the whole training and test sets (one ``snapshots.csv`` row) and its
sharpness is measured per the plan (``sharpness.csv`` rows whose run id is
``<run id>@epoch<k>``, so they never mix with the final iterate's). A rerun trains, evaluates
and measures nothing already recorded.

``fig6_along_training.csv`` is derived on every run: one row per (run, epoch, sharpness
setting) with the regime, the epoch, the exact training loss and accuracy and the sharpness;
the figure is drawn from it alone.
"""

from __future__ import annotations

import dataclasses
import os
import time

import tensorflow as tf

from lbgap_tf import evaluation, gap, results, tables, train
from lbgap_tf.experiments import common

ALONG_FILE = "fig6_along_training.csv"
SNAPSHOTS_FILE = "snapshots.csv"
BENCHMARK = "along_training"
SNAPSHOT_KEY = ("run_id", "epoch", "eval_batch_size")


class AlongTrainingError(ValueError):
    """Fig. 6 cannot run as configured (no epochs, out of order, past the run's epochs...)."""


def _check_epochs(name: str, epochs: tuple[int, ...], cap: int) -> None:
    if not epochs:
        raise AlongTrainingError(f"no {name} epoch given: pass e.g. --{name}_snapshots=1,5,10")
    if any(b <= a for a, b in zip(epochs[:-1], epochs[1:], strict=True)) or epochs[0] < 1:
        raise AlongTrainingError(
            f"{name} epochs must be strictly increasing and >= 1, got "
            f"{', '.join(map(str, epochs))}: list each epoch once, smallest first")
    if epochs[-1] > cap:
        raise AlongTrainingError(
            f"{name} epoch {epochs[-1]} is past the {name} run's {cap} epochs, so it is never "
            f"kept: raise --{name}_epochs to at least {epochs[-1]} or drop it")


@dataclasses.dataclass(frozen=True)
class AlongTrainingConfig:
    """SB and LB settings (same model, data and seed), the epochs whose iterates are measured
    for each, and the sharpness plan. Fixed epoch counts only (plateau stopping could end a
    run before a chosen epoch)."""

    sb: train.TrainConfig
    lb: train.TrainConfig
    sb_epochs: tuple[int, ...]
    lb_epochs: tuple[int, ...]
    sharpness: gap.SharpnessPlan = gap.SharpnessPlan(
        epsilons=(1e-3,), subspace_dims=(None,), solvers=("lbfgsb",))

    def __post_init__(self):
        if self.sb.regime != "SB" or self.lb.regime != "LB":
            raise AlongTrainingError("the sb and lb settings must have regimes SB and LB")
        _check_epochs("sb", tuple(self.sb_epochs), self.sb.epochs)
        _check_epochs("lb", tuple(self.lb_epochs), self.lb.epochs)
        if self.sb.plateau_patience or self.lb.plateau_patience:
            raise AlongTrainingError(
                "Fig. 6 needs fixed epoch counts (plateau stopping could end a run before a "
                "chosen epoch): pass --plateau_patience=0")

    def along_id(self) -> str:
        key = {"sb": train.config_dict(self.sb), "lb": train.config_dict(self.lb),
               "sb_epochs": self.sb_epochs, "lb_epochs": self.lb_epochs,
               "sharpness": dataclasses.asdict(self.sharpness)}
        return results.new_run_id(key, prefix=f"{self.sb.model}-s{self.sb.seed}-")


@dataclasses.dataclass(frozen=True)
class AlongTrainingOutcome:
    rows: list[dict]
    csv_path: str
    wall_time_s: float


def run(config: AlongTrainingConfig, *, output_dir: str,
        strategy: tf.distribute.Strategy | None = None, data_dirs: dict | None = None,
        quiet: bool = False, nondefault_flags: str = "") -> AlongTrainingOutcome:
    """Trains, evaluates and measures what is missing, then rewrites
    ``fig6_along_training.csv``; returns its rows as read back from the file."""
    started = time.perf_counter()
    strategy = strategy or tf.distribute.get_strategy()
    store = common.RunStore(output_dir, strategy=strategy, benchmark=BENCHMARK, quiet=quiet,
                            nondefault_flags=nondefault_flags)
    train_data, test_data = train.load_data(config.sb, **(data_dirs or {}))
    num_train = train_data.info.num_examples
    store.resolve(config.sb, num_train)  # Both batches are checked before any training.
    store.resolve(config.lb, num_train)
    snapshots = len(config.sb_epochs) + len(config.lb_epochs)
    progress = common.Progress("along training", 2 + snapshots * (
        1 + common.sharpness_steps(config.sharpness)))
    sb = store.get(dataclasses.replace(config.sb, snapshot_epochs=config.sb_epochs),
                   train_data, test_data, progress)
    lb = store.get(dataclasses.replace(config.lb, x0_path=sb.x0_path,
                                       snapshot_epochs=config.lb_epochs),
                   train_data, test_data, progress)
    points = []
    evaluators = {}
    for run, epochs in ((sb, config.sb_epochs), (lb, config.lb_epochs)):
        never_kept = [k for k in epochs if not os.path.exists(train.snapshot_path(run.run_dir, k))]
        if never_kept:
            raise AlongTrainingError(
                f"the run {run.run_id} kept no weights after epoch(s) "
                f"{', '.join(map(str, never_kept))} (it was trained without them, e.g. by the "
                "gap benchmark): use a fresh --output_dir so that it is trained with them")
        for epoch in epochs:
            points += _snapshot_points(config, store, run, epoch, train_data, test_data,
                                       evaluators, progress)
    csv_path = os.path.join(output_dir, ALONG_FILE)
    if train.is_chief(strategy):
        tables.write_table(csv_path, points)
        points = results.read_rows(csv_path)
    return AlongTrainingOutcome(points, csv_path, time.perf_counter() - started)


def _snapshot_points(config, store, run, epoch, train_data, test_data, evaluators,
                     progress) -> list[dict]:
    """The figure rows of ``run``'s iterate after ``epoch``: its exact evaluation (recorded
    once in snapshots.csv) joined with each sharpness measurement of the plan. ``evaluators``
    caches each run's (train, test) evaluators, built once on its model."""
    output_dir, strategy = store.output_dir, store.strategy
    weights = train.load_x0(train.snapshot_path(run.run_dir, epoch))
    eval_batch = run.config.eval_batch_size
    snapshot_id = f"{run.run_id}@epoch{epoch}"
    path = os.path.join(output_dir, SNAPSHOTS_FILE)
    key = (snapshot_id, str(epoch), str(eval_batch))
    recorded = [row for row in results.read_rows(path)
                if tuple(row[c] for c in SNAPSHOT_KEY) == key]

    def model_at_epoch():
        model = store.model(run)
        model.set_weights(weights)
        return model

    if recorded:
        progress.stage(f"{snapshot_id}: evaluated earlier, skipped")
        evaluated = recorded[0]
    else:
        progress.stage(f"{snapshot_id}: exact evaluation on the training and test sets")
        model = model_at_epoch()
        if run.run_id not in evaluators:
            evaluators[run.run_id] = tuple(
                evaluation.Evaluator(model, split.features, split.labels,
                                     batch_size=min(eval_batch, split.info.num_examples),
                                     strategy=strategy)
                for split in (train_data, test_data))
        on_train, on_test = (evaluate() for evaluate in evaluators[run.run_id])
        evaluated = {"run_id": snapshot_id, "epoch": epoch, "eval_batch_size": eval_batch,
                     "source_run_id": run.run_id, "regime": run.config.regime,
                     "train_loss": on_train.loss, "train_accuracy": on_train.accuracy,
                     "test_loss": on_test.loss, "test_accuracy": on_test.accuracy,
                     "train_examples": on_train.num_examples,
                     "test_examples": on_test.num_examples, **common.row_provenance(),
                     "finished_at": common.utc_now()}
        if train.is_chief(strategy):
            results.append_row(path, evaluated)
    snapshot_row = dict(run.row, run_id=snapshot_id, train_loss=evaluated["train_loss"],
                        train_accuracy=evaluated["train_accuracy"],
                        test_accuracy=evaluated["test_accuracy"])
    measured = common.measure_sharpness(
        model_at_epoch, snapshot_row, plan=config.sharpness, seed=run.config.seed,
        train_data=train_data, output_dir=output_dir, strategy=strategy, benchmark=BENCHMARK,
        precision=run.config.precision, nondefault_flags=store.nondefault_flags,
        progress=progress)
    row = run.row
    return [{
        "along_id": config.along_id(), "figure": "fig6", "model": row["model"],
        "dataset": row["dataset"], "seed": row["seed"], "regime": row["regime"],
        "run_id": row["run_id"], "batch_size": row["global_batch_size"], "epoch": epoch,
        "run_epochs": row["epochs_run"], "optimizer": row["optimizer"],
        "learning_rate": row["learning_rate"], "bn_mode": row["bn_mode"],
        "eval_batch_size": eval_batch, "train_loss": evaluated["train_loss"],
        "train_accuracy": evaluated["train_accuracy"], "test_loss": evaluated["test_loss"],
        "test_accuracy": evaluated["test_accuracy"],
        **{f"sharpness_{column}": sharp[column] for column in (
            "subspace", "subspace_dim", "epsilon", "solver", "max_iter", "eval_examples",
            "eval_batch_size")},
        "sharpness": sharp["sharpness"], "device_kind": sharp["device_kind"],
        "git_revision": row["git_revision"],
    } for sharp in measured]
