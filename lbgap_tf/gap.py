"""The generalization-gap experiment (Tables 2-4): SB and LB from one x0, then sharpness.

For each network and trial (seed ``first_seed + trial``):

1. train SB from x0 drawn from the seed (the run saves that x0), then LB from the SAME x0,
   each with a fresh optimizer (the authors' protocol);
2. record the pair: full train/test accuracy of both (from the run rows), the SB - LB test
   gap and the distance ratio ||x_SB - x0|| / ||x_LB - x0|| over the trainable weights;
3. measure sharpness (Metric 2.1) of both minimizers for every space, solver and epsilon of
   the plan, on the training set (or a fixed seeded subset of it).

Every finished stage leaves a row: ``runs.csv`` per run, ``pairs.csv`` per pair,
``sharpness.csv`` per measurement. A rerun of the same experiment finds those rows and repeats
no finished stage (a pair is found by its ``gap_id`` too, so an experiment with another
sharpness plan on the same runs records its own pair); a pair or measurement that another
process recorded meanwhile is not appended twice (``results.append_row``'s key); an
interrupted run resumes from its last checkpointed epoch. A run whose training loss becomes
NaN or inf stops as diverged (``train.DIVERGED``): its trial gets no pair row and no
sharpness, and ``GapOutcome.diverged`` lists it (``benchmarks.gap`` then fails). The tables
are derived from the rows of this experiment only (``gap_id``), so experiments with other
settings can share an output folder. The outcome carries the wall time of each stage (data,
training, distances, sharpness, tables) of this invocation.

Each stage is logged as "[gap k/N, E min elapsed, ETA ...]", the ETA costing the work left
(epochs per regime, measurements per space and solver) at the costs measured so far
(``lbgap_tf.experiments.progress``).

Sharpness is always measured in float32: the weights of a run trained under a mixed-precision
dtype policy are copied into a float32 twin of its network first, because the box of Metric
2.1 (relative 5e-4 to 1e-3) lies below bfloat16's resolution (~3.9e-3 relative) and a network
computing in bfloat16 would round most of the perturbation away and look flatter than it is.
The sharpness row's ``precision`` column is the precision of the measurement (float32); the
run's training precision is in its ``runs.csv`` row.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import time
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from lbgap_tf import data, distribute, results, sharpness, sharpness_rows, tables, train
from lbgap_tf.experiments import progress
from lbgap_tf.train.network import build_model

RUNS_FILE = "runs.csv"
PAIRS_FILE = "pairs.csv"
SHARPNESS_FILE = "sharpness.csv"
BENCHMARK = "gap"
STAGES = ("data", "training", "distances", "sharpness", "tables")
SHARPNESS_PRECISION = "float32"

PAIR_COLUMNS = (
    "gap_id", "model", "dataset", "trial", "seed", "sb_run_id", "lb_run_id",
    "sb_train_accuracy", "lb_train_accuracy", "sb_test_accuracy", "lb_test_accuracy",
    "test_gap_pp", "sb_distance", "lb_distance", "distance_ratio", "git_revision",
    "finished_at",
)


@dataclasses.dataclass(frozen=True)
class SharpnessPlan:
    """Which sharpness measurements each minimizer gets.

    Attributes:
      epsilons: box sizes (the paper: 1e-3 and 5e-4).
      subspace_dims: None for the full space (Table 3), p for a random subspace of dimension
        p (Table 4: 100), drawn from the trial's seed.
      subspace_distributions: the distributions of the random subspace matrix A
        (``sharpness.SUBSPACE_DISTRIBUTIONS``), each measured with its own rows; the first is
        the one Table 4 compares with the paper.
      solvers: "lbfgsb" (the paper's), "lbfgsb_scaled" and/or "ascent" (see ``sharpness``).
      max_iter: solver iterations (the paper: 10 L-BFGS-B iterations).
      eval_examples: None to evaluate f on the whole training set, or the size of a fixed
        subset drawn from the trial's seed (recorded in every row).
      eval_batch_size: GLOBAL evaluation batch of f (batch-statistics BN depends on it).
    """

    epsilons: tuple[float, ...] = (1e-3, 5e-4)
    subspace_dims: tuple[int | None, ...] = (None, 100)
    subspace_distributions: tuple[str, ...] = (sharpness.DEFAULT_SUBSPACE_DISTRIBUTION,)
    solvers: tuple[str, ...] = ("lbfgsb", "ascent")
    max_iter: int = 10
    eval_examples: int | None = None
    eval_batch_size: int = 5000

    def spaces(self) -> list[tuple[int | None, str | None]]:
        """(dimension, distribution of A) of every space measured: (None, None) for the full
        space, one entry per distribution for each random subspace dimension."""
        return [(dim, distribution) for dim in dict.fromkeys(self.subspace_dims)
                for distribution in ((None,) if dim is None
                                     else dict.fromkeys(self.subspace_distributions))]

    def __post_init__(self):
        if not self.epsilons or any(not eps > 0 for eps in self.epsilons):
            raise sharpness.SharpnessError(
                f"epsilons must be positive, got {self.epsilons}: e.g. 1e-3,5e-4")
        for solver in self.solvers:
            if solver not in sharpness.SOLVERS:
                raise sharpness.SharpnessError(
                    f"unknown solver {solver!r}: choose from {', '.join(sharpness.SOLVERS)}")
        if not self.solvers or not self.subspace_dims or not self.subspace_distributions:
            raise sharpness.SharpnessError(
                "the plan needs at least one solver, one space and one subspace distribution")
        for distribution in self.subspace_distributions:
            sharpness.check_distribution(distribution)
        for dim in self.subspace_dims:
            if dim is not None and dim < 1:
                raise sharpness.SharpnessError(f"subspace dimension must be >= 1, got {dim}")
        if self.max_iter < 1 or self.eval_batch_size < 1 \
                or (self.eval_examples is not None and self.eval_examples < 1):
            raise sharpness.SharpnessError(
                "max_iter, eval_batch_size and eval_examples must be positive")


@dataclasses.dataclass(frozen=True)
class GapConfig:
    """One generalization-gap experiment.

    ``sb`` and ``lb`` are the two regimes' training settings (model and seed are set per
    network and trial); ``trials`` seeds run from ``first_seed``.
    """

    models: tuple[str, ...]
    sb: train.TrainConfig
    lb: train.TrainConfig
    trials: int = 5
    first_seed: int = 0
    sharpness: SharpnessPlan = SharpnessPlan()

    def __post_init__(self):
        if not self.models:
            raise train.TrainError("no model given: pass e.g. --models=F1")
        if self.trials < 1:
            raise train.TrainError(f"trials must be at least 1, got {self.trials}")
        if self.sb.regime != "SB" or self.lb.regime != "LB":
            raise train.TrainError("the sb and lb settings must have regimes SB and LB")

    @property
    def seeds(self) -> range:
        return range(self.first_seed, self.first_seed + self.trials)

    def gap_id(self, model: str) -> str:
        """Identifies the experiment's settings for one network (not its trial count, nor
        the training fields that define no run, ``train.PERFORMANCE_FIELDS``)."""
        key = {regime: train.defining_values(train.config_dict(
                   dataclasses.replace(settings, model=model, seed=0)))
               for regime, settings in (("sb", self.sb), ("lb", self.lb))}
        key.update({"sharpness": dataclasses.asdict(self.sharpness)})
        return results.new_run_id(key, prefix=f"{model}-")


@dataclasses.dataclass(frozen=True)
class GapOutcome:
    """The experiment's rows (this experiment's only) and the derived tables."""

    run_rows: list[dict]
    pair_rows: list[dict]
    sharpness_rows: list[dict]
    table2: list[dict]
    table3: list[dict]
    table4: list[dict]
    wall_time_s: float
    # The distribution of A whose Table 4 rows are compared with the paper's.
    table4_distribution: str = sharpness.DEFAULT_SUBSPACE_DISTRIBUTION
    stage_seconds: dict = dataclasses.field(default_factory=dict)  # STAGES -> seconds

    @property
    def diverged(self) -> list[dict]:
        """Run rows of runs that diverged: their trials have no pair and no sharpness row,
        and the experiment counts as failed."""
        return [row for row in self.run_rows if row["stop_reason"] == train.DIVERGED]


def trainable_distance(model: keras.Model, x0: Sequence[np.ndarray]) -> float:
    """||x - x0|| over the trainable weights; ``x0`` in ``model.weights`` order (an x0.npz)."""
    squares = [np.sum((np.asarray(w, np.float64) - np.asarray(start, np.float64)) ** 2)
               for w, start in zip(model.weights, x0, strict=True) if w.trainable]
    return float(np.sqrt(np.sum(squares)))


def _epochs_work(regime: str) -> str:
    return f"{regime} epoch"


def _space_name(dim: int | None, distribution: str | None) -> str:
    return "full space" if dim is None else f"random subspace p={dim} ({distribution})"


def _measurements_work(dim: int | None, distribution: str | None, solver: str) -> str:
    return f"{'full-space' if dim is None else f'p={dim} {distribution}'} {solver} measurement"


def _progress(config: GapConfig) -> progress.StageProgress:
    """The experiment's stages and work: per network and trial, SB and LB epochs and every
    measurement of both minimizers; epochs under plateau stopping are caps. The pair stage
    (two distances, seconds) is not costed."""
    plan = config.sharpness
    spaces = [(dim, distribution, solver) for dim, distribution in plan.spaces()
              for solver in dict.fromkeys(plan.solvers)]
    per_trial = {_epochs_work("SB"): config.sb.epochs, _epochs_work("LB"): config.lb.epochs}
    for dim, distribution, solver in spaces:
        per_trial[_measurements_work(dim, distribution, solver)] = \
            2 * len(dict.fromkeys(plan.epsilons))
    trials = len(config.models) * config.trials
    capped = [_epochs_work(settings.regime) for settings in (config.sb, config.lb)
              if settings.plateau_patience]
    return progress.StageProgress(
        "gap", trials * (3 + 2 * len(spaces)),
        {work: units * trials for work, units in per_trial.items()}, capped)


def _recorded(rows: Sequence[dict], units_column: str | None, *seconds_columns: str
              ) -> tuple[float, float] | None:
    """(units, seconds) of finished stages as their rows recorded them: the sums of
    ``units_column`` (one unit per row without it) and of ``seconds_columns``; None when a
    row lacks the numbers."""
    try:
        units = sum(float(row[units_column]) if units_column else 1.0 for row in rows)
        seconds = sum(float(row[column]) for row in rows for column in seconds_columns)
    except (KeyError, ValueError):
        return None
    return (units, seconds) if rows else None


class _Experiment:
    """Runs one ``GapConfig`` into ``output_dir``; see ``run``."""

    def __init__(self, config: GapConfig, output_dir: str, strategy, data_dirs: dict,
                 quiet: bool, nondefault_flags: str, checkpoint_every_s: float):
        self.config, self.output_dir, self.strategy = config, output_dir, strategy
        self.data_dirs, self.quiet, self.nondefault_flags = data_dirs, quiet, nondefault_flags
        self.checkpoint_every_s = checkpoint_every_s
        self.description = distribute.describe(strategy)
        self.paths = {name: os.path.join(output_dir, name)
                      for name in (RUNS_FILE, PAIRS_FILE, SHARPNESS_FILE)}
        self.progress = _progress(config)
        self.stage_seconds = dict.fromkeys(STAGES, 0.0)

    @contextlib.contextmanager
    def timed(self, stage: str):
        """Adds the wall time of the block to ``stage_seconds[stage]``."""
        began = time.perf_counter()
        try:
            yield
        finally:
            self.stage_seconds[stage] += time.perf_counter() - began

    def rows(self, name: str) -> list[dict]:
        return results.read_rows(self.paths[name])

    def run(self) -> tuple[list[str], list[str], set]:
        """Every stage of every network and trial; returns this experiment's run ids, gap ids
        and sharpness keys, to select its rows."""
        run_ids, gap_ids, keys = [], [], set()
        for model in self.config.models:
            gap_ids.append(self.config.gap_id(model))
            with self.timed("data"):
                train_data, test_data = train.load_data(
                    dataclasses.replace(self.config.sb, model=model), **self.data_dirs)
            for trial, seed in enumerate(self.config.seeds):
                pair = self._pair(model, trial, seed, train_data, test_data)
                run_ids += [pair.sb.run_id, pair.lb.run_id]
                if pair.diverged:
                    continue
                spaces = {}  # SB and LB of a trial share its random subspaces (one seed).
                for run in (pair.sb, pair.lb):
                    with self.timed("sharpness"):
                        keys |= self._sharpness(run, seed, train_data, spaces)
                del pair, spaces
                # The networks, subspaces and the data copies held by their compiled
                # functions form reference cycles: free them before the next trial.
                gc.collect()
        return run_ids, gap_ids, keys

    # --- training ---------------------------------------------------------------------

    def _run(self, config: train.TrainConfig, train_data, test_data) -> _Run:
        config = train.resolve(config, train_data.info.num_examples,
                               self.strategy.num_replicas_in_sync)
        run_id = train.run_id(config, self.description)
        run_dir = os.path.join(self.output_dir, "runs", run_id)
        finished = [row for row in self.rows(RUNS_FILE) if row["run_id"] == run_id]
        label = f"{config.model} {config.regime} seed {config.seed} ({run_id})"
        work = _epochs_work(config.regime)
        if finished:
            self.progress.skip(f"{label}: trained earlier, skipped", work, config.epochs,
                               _recorded(finished[:1], "epochs_run", "wall_time_s", "startup_s"))
            return _Run(run_id, run_dir, config, finished[0], None)
        resumed = min(config.epochs,
                      len(results.read_rows(os.path.join(run_dir, train.HISTORY_FILE))))
        self.progress.finished_earlier(work, resumed)
        stage = self.progress.begin(f"training {label}", work, config.epochs - resumed)
        trained_here = []
        with self.timed("training"):
            result = train.train(config, train_data, test_data, run_dir=run_dir,
                                 strategy=self.strategy, quiet=self.quiet,
                                 checkpoint_every_s=self.checkpoint_every_s,
                                 on_epoch_end=lambda epoch, _: trained_here.append(epoch))
        self.progress.end(stage, units_done=len(trained_here))
        row = train.run_record(result, run_id=run_id, benchmark=BENCHMARK,
                               nondefault_flags=self.nondefault_flags)
        if train.is_chief(self.strategy):
            results.append_row(self.paths[RUNS_FILE], row)
        return _Run(run_id, run_dir, config, row, result.model)

    def _pair(self, model, trial, seed, train_data, test_data) -> _Pair:
        sb = self._run(dataclasses.replace(self.config.sb, model=model, seed=seed),
                       train_data, test_data)
        x0_path = os.path.join(sb.run_dir, train.X0_FILE)
        lb = self._run(dataclasses.replace(self.config.lb, model=model, seed=seed,
                                           x0_path=x0_path), train_data, test_data)
        pair = _Pair(sb, lb)
        for run in pair.diverged:
            logging.warning(
                "%s %s seed %d (%s) diverged at epoch %s: no pair row and no sharpness for "
                "trial %d; the experiment fails (lower the learning rate)", model,
                run.config.regime, seed, run.run_id, run.row["epochs_run"], trial)
        if pair.diverged:
            return pair
        gap_id = self.config.gap_id(model)
        done = any((row["gap_id"], row["sb_run_id"], row["lb_run_id"])
                   == (gap_id, sb.run_id, lb.run_id) for row in self.rows(PAIRS_FILE))
        if done:
            self.progress.skip(f"{model} seed {seed}: pair recorded earlier, skipped")
            return pair
        self.progress.begin(f"{model} seed {seed}: distances from x0")
        with self.timed("distances"):
            x0 = train.load_x0(x0_path)
            sb_distance = trainable_distance(self._model(sb), x0)
            lb_distance = trainable_distance(self._model(lb), x0)
        sb_test, lb_test = (float(run.row["test_accuracy"]) for run in (sb, lb))
        row = {
            "gap_id": gap_id, "model": model,
            "dataset": sb.config.dataset, "trial": trial, "seed": seed,
            "sb_run_id": sb.run_id, "lb_run_id": lb.run_id,
            "sb_train_accuracy": sb.row["train_accuracy"],
            "lb_train_accuracy": lb.row["train_accuracy"],
            "sb_test_accuracy": sb_test, "lb_test_accuracy": lb_test,
            "test_gap_pp": 100 * (sb_test - lb_test),
            "sb_distance": sb_distance, "lb_distance": lb_distance,
            "distance_ratio": sb_distance / lb_distance if lb_distance > 0 else float("inf"),
            "git_revision": results.git_revision(),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if train.is_chief(self.strategy):
            results.append_row(self.paths[PAIRS_FILE], row,
                               key=lambda row: tuple(row[c] for c in tables.PAIR_KEY))
        return pair

    def _model(self, run: _Run) -> keras.Model:
        """The run's final model: in memory when trained now, else loaded from its file."""
        if run.model is None:
            with self.strategy.scope():
                run.model = keras.models.load_model(
                    os.path.join(run.run_dir, train.MODEL_FILE), compile=False)
        return run.model

    def _measured_model(self, run: _Run, info: data.DatasetInfo) -> keras.Model:
        """The run's network computing in float32 (``SHARPNESS_PRECISION``): the trained
        network itself, or for a mixed-precision run a float32 twin holding its weights."""
        model = self._model(run)
        if run.config.precision == SHARPNESS_PRECISION:
            return model
        with self.strategy.scope():
            twin = build_model(
                dataclasses.replace(run.config, precision=SHARPNESS_PRECISION), info)
        twin.set_weights(model.get_weights())
        return twin

    # --- sharpness --------------------------------------------------------------------

    def _sharpness(self, run: _Run, seed: int, train_data: data.SplitData,
                   spaces: dict) -> set:
        """Measures the run's missing sharpness values; ``spaces`` caches the random
        subspaces (by dimension and distribution) of the trial's seed across its runs."""
        plan = self.config.sharpness
        eval_examples = min(plan.eval_examples or train_data.info.num_examples,
                            train_data.info.num_examples)
        eval_batch = min(plan.eval_batch_size, eval_examples)
        eval_seed = sharpness_rows.subset_seed(eval_examples, train_data.info.num_examples,
                                               seed)
        wanted = {}
        for dim, distribution in plan.spaces():
            for solver in plan.solvers:
                wanted[(dim, distribution, solver)] = {
                    eps: sharpness_rows.measurement_key(
                        run.run_id, subspace_dim=dim, subspace_seed=seed, epsilon=eps,
                        solver=solver, max_iter=plan.max_iter, eval_examples=eval_examples,
                        eval_seed=eval_seed, eval_batch_size=eval_batch,
                        subspace_distribution=distribution or "")
                    for eps in plan.epsilons}
        measured = {sharpness_rows.row_key(row): row for row in self.rows(SHARPNESS_FILE)}
        problem = None
        for (dim, distribution, solver), by_eps in wanted.items():
            label = f"{run.config.model} {run.config.regime} seed {seed}: sharpness, " \
                    f"{_space_name(dim, distribution)}, {solver}"
            missing = [eps for eps, key in by_eps.items() if key not in measured]
            work = _measurements_work(dim, distribution, solver)
            if not missing:
                self.progress.skip(f"{label}: measured earlier, skipped", work, len(by_eps),
                                   _recorded([measured[key] for key in by_eps.values()],
                                             None, "seconds"))
                continue
            self.progress.finished_earlier(work, len(by_eps) - len(missing))
            stage = self.progress.begin(
                f"{label}, eps {', '.join(f'{e:g}' for e in missing)}", work, len(missing))
            if problem is None:
                problem = sharpness.SharpnessProblem(
                    self._measured_model(run, train_data.info), train_data.features,
                    train_data.labels,
                    eval_batch_size=eval_batch,
                    eval_examples=None if eval_examples == train_data.info.num_examples
                    else eval_examples,
                    subset_seed=seed, strategy=self.strategy)
            if (dim, distribution) not in spaces:
                spaces[(dim, distribution)] = problem.space(
                    dim, seed=seed,
                    distribution=distribution or sharpness.DEFAULT_SUBSPACE_DISTRIBUTION)
            space = spaces[(dim, distribution)]
            for result in problem.measure(missing, space=space, solver=solver,
                                          max_iter=plan.max_iter, seed=seed):
                row = sharpness_rows.sharpness_row(
                    result, run.row, benchmark=BENCHMARK, strategy=self.description,
                    precision=SHARPNESS_PRECISION, eval_seed=eval_seed,
                    nondefault_flags=self.nondefault_flags)
                if train.is_chief(self.strategy):
                    sharpness_rows.append(self.paths[SHARPNESS_FILE], row)
            self.progress.end(stage)
        return {key for by_eps in wanted.values() for key in by_eps.values()}


@dataclasses.dataclass
class _Run:
    run_id: str
    run_dir: str
    config: train.TrainConfig
    row: dict
    model: keras.Model | None


@dataclasses.dataclass(frozen=True)
class _Pair:
    sb: _Run
    lb: _Run

    @property
    def diverged(self) -> list[_Run]:
        """The runs of the pair whose training loss became NaN or inf."""
        return [run for run in (self.sb, self.lb) if run.row["stop_reason"] == train.DIVERGED]


def run(config: GapConfig, *, output_dir: str, strategy: tf.distribute.Strategy | None = None,
        data_dirs: dict | None = None, quiet: bool = False, nondefault_flags: str = "",
        checkpoint_every_s: float = 0.0) -> GapOutcome:
    """Runs (or resumes) the experiment and writes its rows and tables into ``output_dir``.

    ``checkpoint_every_s`` is the training runs' checkpoint interval (``train.train``; 0:
    every epoch); it does not change any result.

    Tables ``table2.csv``, ``table3.csv`` (full space) and ``table4.csv`` (random subspace)
    are rebuilt from this experiment's rows at the end.
    """
    started = time.perf_counter()
    experiment = _Experiment(config, output_dir, strategy or tf.distribute.get_strategy(),
                             data_dirs or {}, quiet, nondefault_flags, checkpoint_every_s)
    run_ids, gap_ids, keys = experiment.run()
    with experiment.timed("tables"):
        outcome = collect(output_dir, run_ids=run_ids, gap_ids=gap_ids, sharpness_keys=keys,
                          wall_time_s=time.perf_counter() - started,
                          table4_distribution=config.sharpness.subspace_distributions[0])
        write_tables(output_dir, outcome)
    return dataclasses.replace(outcome, wall_time_s=time.perf_counter() - started,
                               stage_seconds=dict(experiment.stage_seconds))


def collect(output_dir: str, *, run_ids: Sequence[str], gap_ids: Sequence[str],
            sharpness_keys: set, wall_time_s: float,
            table4_distribution: str = sharpness.DEFAULT_SUBSPACE_DISTRIBUTION) -> GapOutcome:
    """This experiment's rows from the CSVs of ``output_dir`` (a row recorded twice counted
    once) and the tables derived from them.

    ``table4_distribution`` is the distribution of A whose Table 4 rows the summary compares
    with the paper's."""
    wanted_runs = set(run_ids)
    run_rows = [row for row in results.read_rows(os.path.join(output_dir, RUNS_FILE))
                if row["run_id"] in wanted_runs]
    pair_rows = tables.unique_pairs(
        row for row in results.read_rows(os.path.join(output_dir, PAIRS_FILE))
        if row["gap_id"] in gap_ids and row["sb_run_id"] in wanted_runs)
    measured = tables.unique_measurements(
        row for row in results.read_rows(os.path.join(output_dir, SHARPNESS_FILE))
        if sharpness_rows.row_key(row) in sharpness_keys)
    return GapOutcome(
        run_rows=run_rows, pair_rows=pair_rows, sharpness_rows=measured,
        table2=tables.table2(run_rows, pair_rows),
        table3=tables.sharpness_table(measured, subspace="full"),
        table4=tables.sharpness_table(measured, subspace="random"),
        wall_time_s=wall_time_s, table4_distribution=table4_distribution)


def write_tables(output_dir: str, outcome: GapOutcome) -> dict:
    """Writes table2/3/4.csv; returns their paths by table name."""
    paths = {}
    for name in ("table2", "table3", "table4"):
        paths[name] = os.path.join(output_dir, f"{name}.csv")
        tables.write_table(paths[name], getattr(outcome, name))
    return paths
