"""Pieces every figure experiment shares: finished runs trained on demand, resumable point
rows, a fixed training subset and progress with an ETA.

Runs live in the gap benchmark's layout (``runs.csv`` and ``runs/<run_id>/`` under the output
folder, the run id a digest of the resolved config and x0), so a figure pointed at the output
folder of ``benchmarks.gap`` with the same training settings reuses its runs, and the gap
benchmark reuses a figure's.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from lbgap_tf import data, distribute, results, sharpness, sharpness_rows, tables, train

RUNS_FILE = "runs.csv"
SHARPNESS_FILE = "sharpness.csv"


@dataclasses.dataclass
class FinishedRun:
    """A trained run: its id, directory, resolved config and ``runs.csv`` row."""

    run_id: str
    run_dir: str
    config: train.TrainConfig
    row: dict
    model: keras.Model | None = None

    @property
    def x0_path(self) -> str:
        return os.path.join(self.run_dir, train.X0_FILE)


class Progress:
    """Logs each stage with its position, the elapsed time and an ETA.

    The ETA is the mean duration of the stages done so far times the stages left ("at the
    pace so far"). Stages differ in cost (a training run, a sharpness solve, a row written),
    and the figure and remedies experiments interleave them in a fixed pattern, so the mean
    over every stage done weighs each kind by how often it has come; a median or a short
    window instead follows the cheap stages between two trainings and promises minutes where
    a training is still to come. ``clock`` (seconds) and ``log`` are for tests.
    """

    def __init__(self, name: str, total: int, *, clock=time.perf_counter, log=logging.info):
        self._name, self._total, self._clock, self._log = name, total, clock, log
        self._done, self._started = 0, clock()

    def stage(self, description: str) -> None:
        elapsed = self._clock() - self._started
        eta = ""
        if self._done:
            left = self._total - self._done
            eta = f", ETA {elapsed / self._done * left / 60:.1f} min at the pace so far"
        self._log("[%s %d/%d, %.1f min elapsed%s] %s", self._name, self._done + 1,
                  self._total, elapsed / 60, eta, description)
        self._done += 1


class RunStore:
    """The finished runs of ``output_dir``; ``get`` trains a run that is not there yet.

    Args:
      output_dir: the folder holding ``runs.csv`` and ``runs/``.
      strategy: the tf.distribute strategy to train and evaluate under.
      benchmark: recorded in the ``runs.csv`` rows of runs trained here.
      data_dirs, quiet, nondefault_flags: as for ``gap.run``.
    """

    def __init__(self, output_dir: str, *, strategy: tf.distribute.Strategy, benchmark: str,
                 quiet: bool = False, nondefault_flags: str = ""):
        self.output_dir, self.strategy, self.benchmark = output_dir, strategy, benchmark
        self.quiet, self.nondefault_flags = quiet, nondefault_flags
        self.description = distribute.describe(strategy)
        self.runs_path = os.path.join(output_dir, RUNS_FILE)

    def resolve(self, config: train.TrainConfig, num_train: int) -> tuple[train.TrainConfig, str]:
        """(resolved config, run id) of ``config``: checks the batch against the data."""
        config = train.resolve(config, num_train, self.strategy.num_replicas_in_sync)
        return config, train.run_id(config, self.description)

    def get(self, config: train.TrainConfig, train_data: data.SplitData,
            test_data: data.SplitData, progress: Progress | None = None) -> FinishedRun:
        """The finished run of ``config``: found in ``runs.csv``, else trained (or resumed
        from its checkpoints) and recorded there."""
        config, run_id = self.resolve(config, train_data.info.num_examples)
        run_dir = os.path.join(self.output_dir, "runs", run_id)
        label = f"{config.model} {config.regime} batch {config.batch_size} seed {config.seed} " \
                f"({run_id})"
        finished = [row for row in results.read_rows(self.runs_path) if row["run_id"] == run_id]
        if finished:
            if progress:
                progress.stage(f"{label}: trained earlier, skipped")
            return FinishedRun(run_id, run_dir, config, finished[0])
        if progress:
            progress.stage(f"training {label}")
        result = train.train(config, train_data, test_data, run_dir=run_dir,
                             strategy=self.strategy, quiet=self.quiet)
        row = train.run_record(result, run_id=run_id, benchmark=self.benchmark,
                               nondefault_flags=self.nondefault_flags)
        if train.is_chief(self.strategy):
            results.append_row(self.runs_path, row)
        return FinishedRun(run_id, run_dir, config, row, result.model)

    def model(self, run: FinishedRun) -> keras.Model:
        """The run's final model: in memory when trained now, else loaded from its file."""
        if run.model is None:
            with self.strategy.scope():
                run.model = keras.models.load_model(
                    os.path.join(run.run_dir, train.MODEL_FILE), compile=False)
        return run.model


def measure_sharpness(load_model: Callable[[], keras.Model], run_row: Mapping[str, object], *,
                      plan, seed: int, train_data: data.SplitData, output_dir: str,
                      strategy: tf.distribute.Strategy, benchmark: str, precision: str,
                      nondefault_flags: str = "", progress: Progress | None = None
                      ) -> list[dict]:
    """Sharpness (Metric 2.1) of the weights of the model ``load_model()`` returns (called
    only when a measurement is missing) for every space, solver and epsilon of ``plan`` (a
    ``gap.SharpnessPlan``), one ``sharpness.csv`` row each.

    ``run_row`` supplies the row's provenance (``sharpness_rows.RUN_PROVENANCE``); its
    ``run_id`` keys the measurements, so a snapshot of a run (weights after epoch k) passes
    a row whose run id names the epoch. Measurements already in ``sharpness.csv`` are not
    repeated. ``seed`` draws the evaluation subset and the random subspaces. Returns the
    rows of every measurement of the plan (earlier and new), one per measurement; none, with
    a warning, for a run that diverged (its weights are no minimizer).
    """
    if run_row.get("stop_reason") == train.DIVERGED:
        logging.warning("%s diverged at epoch %s (training loss NaN or inf): no sharpness "
                        "measured, no point for it", run_row["run_id"], run_row["epochs_run"])
        return []
    path = os.path.join(output_dir, SHARPNESS_FILE)
    num_train = train_data.info.num_examples
    eval_examples = min(plan.eval_examples or num_train, num_train)
    eval_batch = min(plan.eval_batch_size, eval_examples)
    eval_seed = sharpness_rows.subset_seed(eval_examples, num_train, seed)
    run_id = str(run_row["run_id"])

    def key(dim, distribution, solver, eps):
        return sharpness_rows.measurement_key(
            run_id, subspace_dim=dim, subspace_seed=seed, epsilon=eps, solver=solver,
            max_iter=plan.max_iter, eval_examples=eval_examples, eval_seed=eval_seed,
            eval_batch_size=eval_batch, subspace_distribution=distribution or "")

    wanted = {key(dim, distribution, solver, eps) for dim, distribution in plan.spaces()
              for solver in plan.solvers for eps in plan.epsilons}
    finished = sharpness_rows.finished_keys(results.read_rows(path))
    problem = None
    description = distribute.describe(strategy)
    for dim, distribution in plan.spaces():
        space = None
        for solver in plan.solvers:
            space_name = "full space" if dim is None else \
                f"random subspace p={dim} ({distribution})"
            label = f"{run_id}: sharpness, {space_name}, {solver}"
            missing = [eps for eps in plan.epsilons
                       if key(dim, distribution, solver, eps) not in finished]
            if not missing:
                if progress:
                    progress.stage(f"{label}: measured earlier, skipped")
                continue
            if progress:
                progress.stage(f"{label}, eps {', '.join(f'{e:g}' for e in missing)}")
            if problem is None:
                problem = sharpness.SharpnessProblem(
                    load_model(), train_data.features, train_data.labels,
                    eval_batch_size=eval_batch,
                    eval_examples=None if eval_examples == num_train else eval_examples,
                    subset_seed=seed, strategy=strategy)
            if space is None:
                space = problem.space(
                    dim, seed=seed,
                    distribution=distribution or sharpness.DEFAULT_SUBSPACE_DISTRIBUTION)
            for result in problem.measure(missing, space=space, solver=solver,
                                          max_iter=plan.max_iter, seed=seed):
                row = sharpness_rows.sharpness_row(
                    result, run_row, benchmark=benchmark, strategy=description,
                    precision=precision, eval_seed=eval_seed,
                    nondefault_flags=nondefault_flags)
                if train.is_chief(strategy):
                    sharpness_rows.append(path, row)
    return tables.unique_measurements(
        row for row in results.read_rows(path) if sharpness_rows.row_key(row) in wanted)


def sharpness_steps(plan) -> int:
    """Progress stages ``measure_sharpness`` logs for one model (one per space and solver)."""
    return len(plan.spaces()) * len(plan.solvers)


def training_subset(split: data.SplitData, size: int | None, seed: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) of a fixed subset of ``size`` examples drawn with ``seed``, kept in
    file order (the whole split when ``size`` is None or not smaller than the split)."""
    total = split.info.num_examples
    if size is None or size >= total:
        return split.features, split.labels
    index = np.sort(np.random.default_rng(seed).choice(total, size=size, replace=False))
    return split.features[index], split.labels[index]


def float_key(value) -> str:
    """A float as it keys a row: ``repr(float(...))`` of the number or of its CSV text, so a
    value written to CSV and read back gives the same key ("" stays "")."""
    if value is None or value == "":
        return ""
    return repr(float(value))


def finished_keys(rows: Iterable[Mapping[str, str]], columns: Sequence[str],
                  float_columns: Iterable[str] = ()) -> set[tuple[str, ...]]:
    """The keys (``columns`` of each row, floats normalised by ``float_key``) of ``rows``."""
    floats = set(float_columns)
    return {tuple(float_key(row[c]) if c in floats else row[c] for c in columns)
            for row in rows}


def row_provenance() -> dict:
    """Columns every figure row carries: versions, code revision, host and time."""
    record = results.provenance()
    return {"tf_version": record["tf_version"], "keras_version": record["keras_version"],
            "git_revision": record["git_revision"], "hostname": record["hostname"]}


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
