"""Fig. 3 / Fig. 7 of Keskar et al.: the loss between an SB and an LB minimizer, and beyond the
paper, filter-normalised 1-D slices and 2-D contours around each minimizer.

One experiment is one SB/LB pair trained from the same x0 (seed ``sb.seed``; LB starts from
SB's saved x0, as in the gap benchmark, whose runs it reuses from the same output folder).
Its points, each one row of ``parametric.csv``:

- ``kind="linear"`` (Fig. 3) and ``"curvilinear"`` (Fig. 7): the weights at each alpha of the
  path from x_SB (alpha 0) to x_LB (alpha 1) (``landscape.path_point``), evaluated EXACTLY on
  the whole training and test sets: mean cross-entropy (nats) and accuracy;
- ``kind="slice"``: x_c + t d_k around each minimizer c (``center`` SB or LB) along random
  filter-normalised directions d_k (``direction`` k), training loss on the training set (or a
  fixed seeded subset of ``landscape_examples``) and test loss on the whole test set;
- ``kind="contour"``: x_c + t d_0 + u d_1 on a square grid (``alpha`` = t, ``beta`` = u),
  training loss only (the contour plots it), on the same training (sub)set as the slices.

Every evaluation is ``model(x, training=False)`` in the runs' BN mode with their evaluation
batch size (``evaluation.Evaluator``), so alpha 0 and 1 reproduce the evaluations of x_SB and
x_LB bit for bit. A row's key is (experiment id, kind, center, direction, alpha, beta): a rerun
evaluates only the points not in the file yet. The experiment id digests the two run ids and
the evaluation settings; the grids themselves are not in it, so a finer grid reuses the
points it shares with a coarser one.
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
import tensorflow as tf

from lbgap_tf import evaluation, results, train
from lbgap_tf.experiments import common
from lbgap_tf.measures import landscape

PARAMETRIC_FILE = "parametric.csv"
BENCHMARK = "parametric"
PATH_FIGURES = {"linear": "fig3", "curvilinear": "fig7"}
CENTERS = ("SB", "LB")
CONTOUR_DIRECTIONS = "0,1"

KEY_COLUMNS = ("experiment_id", "kind", "center", "direction", "alpha", "beta")
PARAMETRIC_COLUMNS = KEY_COLUMNS + (
    "figure", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "train_examples",
    "test_examples", "eval_batch_size", "bn_mode", "direction_seed", "bias_bn", "model",
    "dataset", "seed", "sb_run_id", "lb_run_id", "sb_batch_size", "lb_batch_size",
    "sb_epochs", "lb_epochs", "optimizer", "learning_rate", "precision", "strategy",
    "replicas", "device_kind", "seconds", "tf_version", "keras_version", "git_revision",
    "hostname", "finished_at", "nondefault_flags",
)


class ParametricError(ValueError):
    """A parametric-plot experiment cannot run as configured (bad grid, mismatched runs...)."""


@dataclasses.dataclass(frozen=True)
class ParametricConfig:
    """One SB/LB pair and the points to evaluate around it.

    Attributes:
      sb, lb: the two runs' training settings (same model, data set and seed; regimes SB and
        LB). LB's x0 is SB's saved x0.
      alphas: path parameters, strictly increasing (the paper: 25 in [-1, 2]).
      paths: of ``landscape.PATHS``; "linear" is Fig. 3, "curvilinear" Fig. 7.
      slice_steps: steps t of the 1-D slices, strictly increasing; empty for no slices.
      slice_directions: random directions per minimizer for the 1-D slices (0: no slices).
      contour_steps: steps of each axis of the 2-D contour grid; empty for no contour.
      landscape_examples: slices and contours evaluate the training loss on a fixed subset of
        this many training examples drawn from the seed (None: the whole training set).
      bias_bn: direction of biases and BN gamma/beta, see ``landscape``.
    """

    sb: train.TrainConfig
    lb: train.TrainConfig
    alphas: tuple[float, ...] = landscape.grid(-1.0, 2.0, 25)
    paths: tuple[str, ...] = landscape.PATHS
    slice_steps: tuple[float, ...] = landscape.grid(-1.0, 1.0, 21)
    slice_directions: int = 2
    contour_steps: tuple[float, ...] = landscape.grid(-1.0, 1.0, 11)
    landscape_examples: int | None = None
    bias_bn: str = "zero"

    def __post_init__(self):
        if self.sb.regime != "SB" or self.lb.regime != "LB":
            raise ParametricError("the sb and lb settings must have regimes SB and LB")
        for field in ("model", "dataset", "seed", "bn_mode", "eval_batch_size"):
            if getattr(self.sb, field) != getattr(self.lb, field):
                raise ParametricError(
                    f"SB and LB differ in {field} ({getattr(self.sb, field)} vs "
                    f"{getattr(self.lb, field)}): a parametric plot compares two minimizers "
                    "of one network from one x0")
        landscape.check_grid(self.alphas, "alphas")
        landscape.check_grid(self.slice_steps, "slice steps", allow_empty=True)
        landscape.check_grid(self.contour_steps, "contour steps", allow_empty=True)
        if not self.paths or any(path not in landscape.PATHS for path in self.paths):
            raise ParametricError(
                f"paths must be among {', '.join(landscape.PATHS)}, got {self.paths}")
        if self.bias_bn not in landscape.BIAS_BN_CHOICES:
            raise ParametricError(
                f"bias_bn must be one of {', '.join(landscape.BIAS_BN_CHOICES)}")
        if self.slice_directions < 0:
            raise ParametricError(
                f"slice_directions must be >= 0 (0: no slices), got {self.slice_directions}")
        if self.landscape_examples is not None and self.landscape_examples < 1:
            raise ParametricError(
                f"landscape_examples must be >= 1, got {self.landscape_examples}")

    @property
    def seed(self) -> int:
        return self.sb.seed


@dataclasses.dataclass(frozen=True)
class Point:
    """One point to evaluate (see the module docstring for the kinds)."""

    kind: str
    center: str = ""
    direction: str = ""
    alpha: float = 0.0
    beta: float | None = None

    def key(self, experiment_id: str) -> tuple[str, ...]:
        return (experiment_id, self.kind, self.center, self.direction,
                common.float_key(self.alpha), common.float_key(self.beta))


def points(config: ParametricConfig) -> list[Point]:
    """Every point of the experiment, in evaluation order."""
    todo = [Point(path, alpha=alpha) for path in config.paths for alpha in config.alphas]
    for center in CENTERS:
        todo += [Point("slice", center, str(k), t) for k in range(config.slice_directions)
                 for t in config.slice_steps]
        todo += [Point("contour", center, CONTOUR_DIRECTIONS, t, u)
                 for u in config.contour_steps for t in config.contour_steps]
    return todo


@dataclasses.dataclass(frozen=True)
class ParametricOutcome:
    """The experiment's id, its rows (this experiment's only) and the CSV's path."""

    experiment_id: str
    rows: list[dict]
    csv_path: str
    wall_time_s: float


def experiment_id(config: ParametricConfig, sb_run_id: str, lb_run_id: str,
                  eval_batch_size: int, landscape_examples: int) -> str:
    key = {"sb": sb_run_id, "lb": lb_run_id, "eval_batch_size": eval_batch_size,
           "landscape_examples": landscape_examples, "bias_bn": config.bias_bn,
           "direction_seed": config.seed}
    return results.new_run_id(key, prefix=f"{config.sb.model}-s{config.seed}-")


def run(config: ParametricConfig, *, output_dir: str,
        strategy: tf.distribute.Strategy | None = None, data_dirs: dict | None = None,
        quiet: bool = False, nondefault_flags: str = "") -> ParametricOutcome:
    """Trains (or finds) the pair, evaluates every missing point and appends its row.

    Returns this experiment's rows as read back from ``parametric.csv``.
    """
    started = time.perf_counter()
    strategy = strategy or tf.distribute.get_strategy()
    store = common.RunStore(output_dir, strategy=strategy, benchmark=BENCHMARK, quiet=quiet,
                            nondefault_flags=nondefault_flags)
    train_data, test_data = train.load_data(config.sb, **(data_dirs or {}))
    num_train = train_data.info.num_examples
    # Both batch sizes are checked against the data before anything is trained.
    store.resolve(config.sb, num_train)
    store.resolve(dataclasses.replace(config.lb, x0_path=None), num_train)

    todo = points(config)
    progress = common.Progress("parametric", 2 + len(todo))
    sb = store.get(config.sb, train_data, test_data, progress)
    lb = store.get(dataclasses.replace(config.lb, x0_path=sb.x0_path), train_data, test_data,
                   progress)
    eval_batch = sb.config.eval_batch_size
    landscape_examples = min(config.landscape_examples or num_train, num_train)
    experiment = experiment_id(config, sb.run_id, lb.run_id, eval_batch, landscape_examples)
    csv_path = os.path.join(output_dir, PARAMETRIC_FILE)
    done = common.finished_keys(results.read_rows(csv_path), KEY_COLUMNS, ("alpha", "beta"))
    missing = [point for point in todo if point.key(experiment) not in done]
    for _ in range(len(todo) - len(missing)):
        progress.stage("point evaluated earlier, skipped")
    if missing:
        _Evaluation(config, store, sb, lb, train_data, test_data, eval_batch,
                    landscape_examples, experiment, csv_path, nondefault_flags,
                    progress).evaluate(missing)
    rows = [row for row in results.read_rows(csv_path) if row["experiment_id"] == experiment]
    return ParametricOutcome(experiment, rows, csv_path, time.perf_counter() - started)


class _Evaluation:
    """Evaluates points of one experiment on one model whose weights it overwrites."""

    def __init__(self, config, store, sb, lb, train_data, test_data, eval_batch,
                 landscape_examples, experiment, csv_path, nondefault_flags, progress):
        self.config, self.experiment, self.csv_path = config, experiment, csv_path
        self.progress, self.strategy = progress, store.strategy
        self.model = store.model(sb)
        self.trainable = [bool(w.trainable) for w in self.model.weights]
        self.x_sb = [np.asarray(w) for w in self.model.get_weights()]
        self.x_lb = [np.asarray(w) for w in store.model(lb).get_weights()]
        subset = common.training_subset(train_data, landscape_examples, config.seed)

        def evaluator(features, labels):
            return evaluation.Evaluator(self.model, features, labels,
                                        batch_size=min(eval_batch, len(labels)),
                                        strategy=store.strategy)

        self.full_train = evaluator(train_data.features, train_data.labels)
        self.test = evaluator(test_data.features, test_data.labels)
        self.landscape_train = evaluator(*subset)
        self._directions = {}
        provenance = common.row_provenance()
        self.fixed = {
            "experiment_id": experiment, "eval_batch_size": eval_batch,
            "bn_mode": sb.config.bn_mode, "direction_seed": config.seed,
            "bias_bn": config.bias_bn, "model": sb.config.model, "dataset": sb.config.dataset,
            "seed": config.seed, "sb_run_id": sb.run_id, "lb_run_id": lb.run_id,
            "sb_batch_size": sb.config.batch_size, "lb_batch_size": lb.config.batch_size,
            "sb_epochs": sb.row["epochs_run"], "lb_epochs": lb.row["epochs_run"],
            "optimizer": sb.config.optimizer, "learning_rate": sb.config.learning_rate,
            "precision": sb.config.precision, "strategy": store.description["strategy"],
            "replicas": store.description["replicas"],
            "device_kind": store.description["device_kind"], **provenance,
            "nondefault_flags": store.nondefault_flags,
        }

    def _direction(self, center: str, index: int) -> list[np.ndarray]:
        if (center, index) not in self._directions:
            weights = self.x_sb if center == "SB" else self.x_lb
            self._directions[(center, index)] = landscape.filter_normalized_direction(
                weights, self.trainable, seed=self.config.seed, index=index,
                bias_bn=self.config.bias_bn)
        return self._directions[(center, index)]

    def _weights(self, point: Point) -> list[np.ndarray]:
        if point.kind in landscape.PATHS:
            return landscape.path_point(self.x_sb, self.x_lb, self.trainable, point.alpha,
                                        point.kind)
        center = self.x_sb if point.center == "SB" else self.x_lb
        if point.kind == "slice":
            return landscape.displaced(center, [self._direction(point.center,
                                                                int(point.direction))],
                                       [point.alpha])
        return landscape.displaced(
            center, [self._direction(point.center, 0), self._direction(point.center, 1)],
            [point.alpha, point.beta])

    def evaluate(self, missing: list[Point]) -> None:
        for point in missing:
            where = f"alpha {point.alpha:g}" if point.beta is None else \
                f"({point.alpha:g}, {point.beta:g})"
            self.progress.stage(f"{point.kind} {point.center} {where}".replace("  ", " "))
            began = time.perf_counter()
            self.model.set_weights(self._weights(point))
            if point.kind in landscape.PATHS:
                train_result, test_result = self.full_train(), self.test()
            elif point.kind == "slice":
                train_result, test_result = self.landscape_train(), self.test()
            else:
                train_result, test_result = self.landscape_train(), None
            row = dict(self.fixed)
            row.update({
                "kind": point.kind, "center": point.center, "direction": point.direction,
                "alpha": point.alpha, "beta": point.beta,
                "figure": PATH_FIGURES.get(point.kind, point.kind),
                "train_loss": train_result.loss, "train_accuracy": train_result.accuracy,
                "train_examples": train_result.num_examples,
                "test_loss": test_result.loss if test_result else None,
                "test_accuracy": test_result.accuracy if test_result else None,
                "test_examples": test_result.num_examples if test_result else None,
                "seconds": round(time.perf_counter() - began, 3),
                "finished_at": common.utc_now(),
            })
            if train.is_chief(self.strategy):
                results.append_row(self.csv_path, {c: row[c] for c in PARAMETRIC_COLUMNS})
        self.model.set_weights(self.x_sb)
