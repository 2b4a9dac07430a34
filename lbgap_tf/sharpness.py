"""Metric 2.1 of Keskar et al. (ICLR 2017): (C_eps, A)-sharpness of a trained model.

With x the flattened trainable weights (n of them, `model.trainable_variables` order), f the
mean softmax cross-entropy over fixed evaluation data and A an n x p matrix (A = I for the full
space), A+ its pseudo-inverse:

    C_eps = { y in R^p : |y_i| <= eps * (|(A+ x)_i| + 1) }
    phi   = 100 * (max_{y in C_eps} f(x + A y) - f(x)) / (1 + f(x))

The maximum is found inexactly from y = 0 by one of `SOLVERS`:

- ``"lbfgsb"``: `scipy.optimize.minimize(method="L-BFGS-B")` on -f, float64 on the scipy side,
  `max_iter` iterations (the paper's setting is 10) and ZERO tolerances (ftol = gtol = 0). With
  scipy's default gtol the solver stops at y = 0 whenever the gradient at x is small, as it is
  at the near-zero training loss that large-batch training reaches, and reports a false
  "flat minimum" (phi = 0).
- ``"lbfgsb_scaled"``: the same L-BFGS-B in the box-scaled variables u = y / r (bounds +-1)
  with the objective divided by max_i |r_i grad_i f| at y = 0. L-BFGS-B's first step is the
  gradient itself (its initial Hessian guess is the identity): in y that step is ~|grad f|,
  which at a converged minimizer (gradient ~1e-4) is a small fraction of a box of half-width
  ~1e-3 per weight, and the solve can stall near y = 0. In u the first step moves the steepest
  coordinate to a face of the box. Same budget, same zero tolerances.
- ``"ascent"``: projected sign-gradient ascent, y <- clip(y + (2 r / K) sign(grad), -r, r) with
  r the box half-widths and K = `max_iter` steps; the whole loop runs inside one `tf.function`.

All keep the best point they evaluated (y = 0 included, so phi >= 0). Every result carries
diagnostics of how far the solver explored the box (max_loss / f(x), ||y|| / ||r||, the
fraction of coordinates on a face of the box), the norm of the perturbation ||A y|| and the
first-order term 100 grad f(x).(A y) / (1 + f(x)), so a stalled solve, or a value that is only
a residual gradient, is visible next to the value. Evaluations use
`evaluation.LossAndGradient`: `model(x, training=False)` over the data in a fixed order and a
fixed GLOBAL evaluation batch size, under a tf.distribute strategy. The model's weights are
restored bit for bit afterwards.

Subspaces. `FullSpace` is A = I. `RandomSubspace` is the paper's p = 100 case; the paper says
only that A's columns are "randomly generated", so A's distribution is a recorded setting
(`SUBSPACE_DISTRIBUTIONS`):

- ``"normal"``: i.i.d. N(0, 1) entries, the default: a corner (|y_j| ~ eps) moves each weight
  by ~sqrt(p) eps; on F1 Fashion-MNIST minimizers only this gave the paper's Table 4 direction.
- ``"normal_1_over_p"``: N(0, 1/p) entries (the earlier default): a corner moves each weight by
  ~eps; on those minimizers the value was mostly SB's first-order (residual gradient) term and
  LB came out flatter (README, "Table 4 under each A").
- ``"uniform"``: i.i.d. U[0, 1) entries (the columns share a large common component).
- ``"uniform_unit_columns"``: U[0, 1) entries with every column scaled to unit norm, what
  public reimplementations of the metric use: a corner moves the weights by ~sqrt(p) eps in
  total, a far smaller perturbation.

Every kind is A = G D with G i.i.d. (normal or uniform) in float32 and D a diagonal column
scale in float64 (1/sqrt(p), 1, or 1/||G_j||). G is generated in row blocks of
`block_elements` entries, block b from `tf.random.stateless_normal` (or `stateless_uniform`)
with seed (seed, b), and never needs to be stored whole: A y and A^T g regenerate the blocks
one at a time, and A+ x = (A^T A)^-1 A^T x needs only the p x p Gram matrix A^T A
(accumulated over the blocks in float64 once; its diagonal gives the unit-column scale).
Beyond a few n-vectors the subspace then needs O(block + p^2) memory (C2: 15M weights,
p = 100: 64 MiB blocks instead of a 6 GB matrix). When n * p * 4 bytes is at most
`cache_bytes` the blocks are generated once and kept, which gives the same numbers without
regenerating them at every evaluation. `MatrixSubspace` takes an explicit A (tests; A = I
reproduces the full space).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence

import keras
import numpy as np
import scipy.optimize
import tensorflow as tf

from lbgap_tf import evaluation
from lbgap_tf.subspaces import DEFAULT_SUBSPACE_DISTRIBUTION, SUBSPACE_DISTRIBUTIONS

SOLVERS = ("lbfgsb", "lbfgsb_scaled", "ascent")
# lbfgsb_scaled: coordinates whose slope at y = 0 is at least this fraction of the steepest
# reach a face of the box on the first step.
SCALED_FIRST_STEP_SLOPE = 1e-6
DEFAULT_EPSILONS = (1e-3, 5e-4)
DEFAULT_SUBSPACE_DIM = 100
# The authors evaluated with batches of 5000; with batch-statistics BN the value depends on it.
DEFAULT_EVAL_BATCH_SIZE = 5000
DEFAULT_BLOCK_ELEMENTS = 1 << 24  # 64 MiB of float32 per block of G
DEFAULT_CACHE_BYTES = 3 << 29  # 1.5 GiB: G is kept for F1, F2, C1 and C3 at p = 100

_log = logging.getLogger(__name__)


class SharpnessError(ValueError):
    """Bad input to the sharpness metric (eps <= 0, bad subspace dimension, unknown solver...)."""


# --------------------------------------------------------------------------------------------
# Solver core: maximise a function of y over the box |y_i| <= radius_i, starting at y = 0.
# --------------------------------------------------------------------------------------------

ValueAndGradient = Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]


@dataclasses.dataclass(frozen=True)
class SolverResult:
    """How a box maximisation went.

    `best_value` is the largest function value among the evaluated points (y = 0 included) and
    `best_point` that point (float64 [m]). `function_evals` / `gradient_evals` count every
    evaluation the solver used, the one at y = 0 included even when it was supplied as
    `initial` rather than computed.
    """

    solver: str
    best_value: float
    best_point: np.ndarray
    start_value: float
    iterations: int
    function_evals: int
    gradient_evals: int
    message: str


def _checked_radius(radius) -> np.ndarray:
    radius = np.asarray(radius, dtype=np.float64)
    if radius.ndim != 1 or radius.size == 0:
        raise SharpnessError(f"the box radius must be a non-empty vector, got shape {radius.shape}")
    if not np.all(np.isfinite(radius)) or np.any(radius < 0):
        raise SharpnessError("the box radius must be finite and >= 0 in every coordinate")
    return radius


def _checked_max_iter(max_iter) -> int:
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise SharpnessError(f"max_iter must be a positive integer, got {max_iter!r}")
    return int(max_iter)


def maximize_lbfgsb(fun: ValueAndGradient, radius, *, max_iter: int,
                    initial: tuple[float, np.ndarray] | None = None,
                    scaled: bool = False) -> SolverResult:
    """Maximises fun over |y| <= radius with L-BFGS-B from y = 0, `max_iter` iterations.

    Args:
      fun: y (float64 tf.Tensor [m]) -> (value, gradient [m]), anything np.asarray accepts.
      radius: box half-widths [m] (float64 on the scipy side).
      max_iter: L-BFGS-B iterations; the tolerances are zero, so only this budget (or an exactly
        zero projected gradient, or a failed line search) ends the run.
      initial: (value, gradient) at y = 0 when already known; saves one evaluation.
      scaled: solve in u = y / radius over the box |u| <= 1 (solver "lbfgsb_scaled"), with the
        objective divided by max_i |radius_i grad_i| at y = 0; the returned point is in y and
        the returned values are f's either way.
    """
    radius = _checked_radius(radius)
    max_iter = _checked_max_iter(max_iter)
    state = {"evals": 0, "best_value": -math.inf, "best_point": np.zeros_like(radius),
             "start_value": math.nan}

    def evaluate(y):
        if state["evals"] == 0 and initial is not None and not np.any(y):
            value, grad = initial
        else:
            value, grad = fun(tf.constant(y, tf.float64))
        value = float(np.asarray(value))
        grad = np.asarray(grad, dtype=np.float64).reshape(radius.shape)
        if state["evals"] == 0:
            state["start_value"] = value
        state["evals"] += 1
        if value > state["best_value"]:
            state["best_value"], state["best_point"] = value, y.copy()
        return value, grad

    scale, objective_scale, bound = np.ones_like(radius), 1.0, radius
    if scaled:
        # u = y / r; the objective is divided by SCALED_FIRST_STEP_SLOPE times the largest
        # |d f / d u_i| at u = 0, so the solver's first step (its initial Hessian guess is the
        # identity) carries every coordinate whose slope is within that factor of the steepest
        # to a face of the unit box, instead of moving it by r_i |grad_i| (a tiny fraction of
        # the box when the gradient at x is small).
        start = evaluate(np.zeros_like(radius))
        scale, bound = radius, np.ones_like(radius)
        steepest = float(np.max(np.abs(start[1] * radius)))
        objective_scale = steepest * SCALED_FIRST_STEP_SLOPE if steepest > 0 else 1.0

    def negated(z):
        y = np.clip(z * scale, -radius, radius)
        value, grad = start if scaled and not np.any(y) else evaluate(y)
        return -value / objective_scale, -grad * scale / objective_scale

    result = scipy.optimize.minimize(
        negated, np.zeros_like(radius), jac=True, method="L-BFGS-B",
        bounds=scipy.optimize.Bounds(-bound, bound),
        options={"maxiter": max_iter, "ftol": 0.0, "gtol": 0.0})
    return SolverResult(
        solver="lbfgsb_scaled" if scaled else "lbfgsb", best_value=state["best_value"],
        best_point=state["best_point"], start_value=state["start_value"],
        iterations=int(result.nit), function_evals=state["evals"],
        gradient_evals=state["evals"], message=str(result.message))


class AscentSolver:
    """Projected sign-gradient ascent over |y| <= radius, the whole loop in one tf.function.

    From y_0 = 0 it takes K = `max_iter` steps y_{k+1} = clip(y_k + (2 radius / K) sign(g_k),
    -radius, radius): each coordinate moves 2/K of its half-width per step, so it can reach a
    corner of the box in K/2 steps and still turn back. The gradient is evaluated at y_0..y_{K-1}
    and the value also at y_K (with `value_fn` when given, which skips the backward pass). The
    best evaluated point is returned. `fun` (and `value_fn`) must be traceable TensorFlow code
    taking a float64 vector. The solver is compiled once and reused for every radius.
    """

    def __init__(self, fun: ValueAndGradient, *, max_iter: int,
                 value_fn: Callable[[tf.Tensor], tf.Tensor] | None = None):
        self._fun = fun
        self._value_fn = value_fn
        self.max_iter = _checked_max_iter(max_iter)
        self._run = evaluation.compile_method(self._loop)

    def _value(self, y):
        if self._value_fn is not None:
            return tf.cast(self._value_fn(y), tf.float64)
        return tf.cast(self._fun(y)[0], tf.float64)

    def _loop(self, radius, start_value, start_grad):
        steps = self.max_iter
        step = 2.0 * radius / steps
        y = tf.zeros_like(radius)
        best_value, best_point = start_value, y
        nonfinite = tf.zeros([], tf.int32)
        grad = start_grad
        for _ in tf.range(steps - 1):
            y = tf.clip_by_value(y + step * tf.sign(grad), -radius, radius)
            value, grad = self._fun(y)
            value = tf.cast(value, tf.float64)
            grad = tf.cast(grad, tf.float64)
            better = value > best_value
            best_point = tf.where(better, y, best_point)
            best_value = tf.where(better, value, best_value)
            nonfinite += tf.cast(~tf.math.is_finite(value), tf.int32)
        y = tf.clip_by_value(y + step * tf.sign(grad), -radius, radius)
        value = self._value(y)
        better = value > best_value
        best_point = tf.where(better, y, best_point)
        best_value = tf.where(better, value, best_value)
        nonfinite += tf.cast(~tf.math.is_finite(value), tf.int32)
        return best_value, best_point, nonfinite

    def __call__(self, radius, *, initial: tuple[float, np.ndarray] | None = None
                 ) -> SolverResult:
        radius = _checked_radius(radius)
        if initial is None:
            start_value, start_grad = self._fun(tf.zeros(radius.shape, tf.float64))
        else:
            start_value, start_grad = initial
        start_value = tf.constant(float(np.asarray(start_value)), tf.float64)
        start_grad = tf.reshape(tf.cast(start_grad, tf.float64), radius.shape)
        best_value, best_point, nonfinite = self._run(
            tf.constant(radius), start_value, start_grad)
        steps = self.max_iter
        message = f"completed {steps} projected sign-gradient steps"
        if int(nonfinite):
            message += f"; {int(nonfinite)} non-finite values ignored"
        return SolverResult(
            solver="ascent", best_value=float(best_value), best_point=best_point.numpy(),
            start_value=float(start_value), iterations=steps, function_evals=steps + 1,
            gradient_evals=steps if self._value_fn is not None else steps + 1,
            message=message)


def maximize(fun: ValueAndGradient, radius, *, solver: str, max_iter: int,
             value_fn: Callable[[tf.Tensor], tf.Tensor] | None = None,
             initial: tuple[float, np.ndarray] | None = None) -> SolverResult:
    """Maximises fun(y) over |y_i| <= radius_i from y = 0 with the named solver (`SOLVERS`)."""
    _check_solver(solver)
    if solver in ("lbfgsb", "lbfgsb_scaled"):
        return maximize_lbfgsb(fun, radius, max_iter=max_iter, initial=initial,
                               scaled=solver == "lbfgsb_scaled")
    return AscentSolver(fun, max_iter=max_iter, value_fn=value_fn)(radius, initial=initial)


def _check_solver(solver) -> None:
    if solver not in SOLVERS:
        raise SharpnessError(f"unknown solver {solver!r}: choose one of {', '.join(SOLVERS)}")


# --------------------------------------------------------------------------------------------
# Spaces: the matrix A as products A y (float32 [n]) and A^T g (float64 [p]), and A+ x.
# --------------------------------------------------------------------------------------------

class FullSpace:
    """A = I_n: the perturbation is y itself."""

    kind = "full"

    def __init__(self, num_weights: int):
        self.num_weights = self.dim = int(num_weights)

    def matvec(self, y: tf.Tensor) -> tf.Tensor:
        return tf.cast(y, tf.float32)

    def rmatvec(self, g: tf.Tensor) -> tf.Tensor:
        return tf.cast(g, tf.float64)

    def coordinates(self, x: tf.Tensor) -> np.ndarray:
        """A+ x (float64 [p])."""
        return np.asarray(x, np.float64)


class MatrixSubspace:
    """An explicit n x p matrix A of full column rank (kept in float64)."""

    kind = "matrix"

    def __init__(self, matrix):
        matrix = np.asarray(matrix, dtype=np.float64)
        if matrix.ndim != 2 or matrix.shape[1] < 1 or matrix.shape[1] > matrix.shape[0]:
            raise SharpnessError(
                f"the subspace matrix must be n x p with 1 <= p <= n, got shape {matrix.shape}")
        if not np.all(np.isfinite(matrix)):
            raise SharpnessError("the subspace matrix has non-finite entries")
        self.num_weights, self.dim = matrix.shape
        self._gram = matrix.T @ matrix
        if np.linalg.matrix_rank(self._gram) < self.dim:
            raise SharpnessError("the subspace matrix must have linearly independent columns")
        self._matrix = tf.constant(matrix)

    def matvec(self, y: tf.Tensor) -> tf.Tensor:
        return tf.cast(tf.linalg.matvec(self._matrix, tf.cast(y, tf.float64)), tf.float32)

    def rmatvec(self, g: tf.Tensor) -> tf.Tensor:
        return tf.linalg.matvec(self._matrix, tf.cast(g, tf.float64), transpose_a=True)

    def coordinates(self, x: tf.Tensor) -> np.ndarray:
        """A+ x = (A^T A)^-1 A^T x, with only the p x p Gram matrix."""
        return np.linalg.solve(self._gram, self.rmatvec(x).numpy())


def check_distribution(distribution) -> str:
    """`distribution` if it is one of `SUBSPACE_DISTRIBUTIONS`, else a `SharpnessError`."""
    if distribution not in SUBSPACE_DISTRIBUTIONS:
        raise SharpnessError(
            f"unknown subspace distribution {distribution!r}: choose one of "
            f"{', '.join(SUBSPACE_DISTRIBUTIONS)}")
    return distribution


class RandomSubspace:
    """A random n x p matrix A = G D drawn from `distribution`, defined block by block.

    G is i.i.d. N(0, 1) ("normal", "normal_1_over_p") or U[0, 1) ("uniform",
    "uniform_unit_columns") in float32; D is diagonal (float64 [p]): 1 / sqrt(p) for
    "normal_1_over_p" (entries N(0, 1/p)), 1 / ||G_j|| for "uniform_unit_columns" (unit-norm
    columns), 1 otherwise. Rows [b * rows_per_block, (b + 1) * rows_per_block) of G come from
    `tf.random.stateless_normal` (or `stateless_uniform`) with seed (seed, b), so any block can
    be regenerated and G is never needed whole. A+ x = (A^T A)^-1 A^T x uses the p x p Gram
    matrix, accumulated over the blocks in float64 at construction. The blocks are
    kept in memory when n * p * 4 <= cache_bytes (products are then one matrix-vector product,
    equal to the blockwise ones up to float32 summation order), otherwise regenerated at every
    product (one block at a time).
    """

    kind = "random"

    def __init__(self, num_weights: int, dim: int, *, seed: int,
                 distribution: str = DEFAULT_SUBSPACE_DISTRIBUTION,
                 block_elements: int = DEFAULT_BLOCK_ELEMENTS,
                 cache_bytes: int = DEFAULT_CACHE_BYTES):
        self.distribution = check_distribution(distribution)
        if not 1 <= dim <= num_weights:
            raise SharpnessError(
                f"subspace_dim must be between 1 and the number of weights ({num_weights}), "
                f"got {dim}")
        if block_elements < dim:
            raise SharpnessError(f"block_elements ({block_elements}) must be >= subspace_dim")
        self.num_weights, self.dim, self.seed = int(num_weights), int(dim), int(seed)
        self.rows_per_block = min(self.num_weights, int(block_elements) // self.dim)
        self.num_blocks = -(-self.num_weights // self.rows_per_block)
        self.cached = self.num_weights * self.dim * 4 <= cache_bytes
        self._cache = None
        if self.cached:
            self._cache = tf.concat([self._generate(tf.constant(b)) for b in
                                     range(self.num_blocks)], axis=0)
        gram = self._gram()  # G^T G
        if distribution == "normal_1_over_p":
            scale = tf.fill([self.dim], tf.constant(1.0 / math.sqrt(self.dim), tf.float64))
        elif distribution == "uniform_unit_columns":
            scale = 1.0 / tf.sqrt(tf.linalg.diag_part(gram))
        else:
            scale = tf.ones([self.dim], tf.float64)
        self._scale = scale  # D, float64 [p]
        self.gram = gram * scale[:, None] * scale[None, :]  # A^T A, float64 [p, p]

    def _rows(self, block):
        start = block * self.rows_per_block
        return start, tf.minimum(self.rows_per_block, self.num_weights - start)

    def _generate(self, block):
        start, size = self._rows(block)
        seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(block, tf.int64)])
        shape = tf.stack([size, self.dim])
        if self.distribution.startswith("uniform"):
            return tf.random.stateless_uniform(shape, seed=seed, dtype=tf.float32)
        return tf.random.stateless_normal(shape, seed=seed, dtype=tf.float32)

    def _block(self, block):
        if self._cache is None:
            return self._generate(block)
        start, size = self._rows(block)
        return self._cache[start:start + size]

    def _gram(self) -> tf.Tensor:
        """G^T G in float64."""
        def body(b, total):
            g = tf.cast(self._block(b), tf.float64)
            return b + 1, total + tf.matmul(g, g, transpose_a=True)

        _, gram = tf.while_loop(lambda b, _: b < self.num_blocks, body,
                                [tf.constant(0), tf.zeros([self.dim, self.dim], tf.float64)],
                                parallel_iterations=1)
        return gram

    def matvec(self, y: tf.Tensor) -> tf.Tensor:
        """A y = G (D y), block by block: float64 y [p] -> float32 [n]."""
        v = tf.cast(tf.cast(y, tf.float64) * self._scale, tf.float32)
        if self._cache is not None:  # One product over the kept G (several times faster).
            return tf.linalg.matvec(self._cache, v)

        def body(b, parts):
            return b + 1, parts.write(b, tf.linalg.matvec(self._block(b), v))

        parts = tf.TensorArray(tf.float32, size=self.num_blocks, element_shape=[None],
                               infer_shape=False)
        _, parts = tf.while_loop(lambda b, _: b < self.num_blocks, body, [tf.constant(0), parts],
                                 parallel_iterations=1)
        return tf.reshape(parts.concat(), [self.num_weights])

    def rmatvec(self, g: tf.Tensor) -> tf.Tensor:
        """A^T g = D (G^T g), accumulated over blocks in float64: g [n] -> [p]."""
        g = tf.cast(g, tf.float32)
        if self._cache is not None:
            product = tf.linalg.matvec(self._cache, g, transpose_a=True)
            return tf.cast(product, tf.float64) * self._scale

        def body(b, total):
            start, size = self._rows(b)
            part = tf.linalg.matvec(self._block(b), g[start:start + size], transpose_a=True)
            return b + 1, total + tf.cast(part, tf.float64)

        _, total = tf.while_loop(lambda b, _: b < self.num_blocks, body,
                                 [tf.constant(0), tf.zeros([self.dim], tf.float64)],
                                 parallel_iterations=1)
        return total * self._scale

    def coordinates(self, x: tf.Tensor) -> np.ndarray:
        """A+ x = (A^T A)^-1 A^T x, with only the p x p Gram matrix."""
        return np.linalg.solve(self.gram.numpy(), self.rmatvec(x).numpy())


# --------------------------------------------------------------------------------------------
# The metric on a Keras model.
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SharpnessResult:
    """One sharpness value phi(x, f, eps, A) and how it was obtained.

    `loss` is f(x), `max_loss` the largest f found in the box; `value` = 100 (max_loss - loss)
    / (1 + loss). `subspace_dim` is None for the full space. `seconds` is the solver's wall
    time (the shared f(x) pass excluded). `gradient_norm` is the Euclidean norm of the full
    gradient of f at x. `eval_batch_size` is the GLOBAL evaluation batch.
    `subspace_distribution` is A's distribution for a random subspace (None otherwise).

    Diagnostics of the best point y* (how far the solver explored the box |y| <= r, and what
    the value measures): `loss_ratio` = max_loss / f(x); `radius_fraction` = ||y*|| / ||r||;
    `face_fraction` the fraction of coordinates with r_i > 0 on a face of the box
    (|y*_i| = r_i); `perturbation_norm` = ||A y*||, the distance moved in weight space;
    `first_order` = 100 grad f(x).(A y*) / (1 + f(x)), the value's first-order Taylor term:
    when `value` is close to it, the value measures the residual gradient, not curvature.
    """

    value: float
    loss: float
    max_loss: float
    epsilon: float
    solver: str
    subspace: str
    subspace_dim: int | None
    seed: int
    max_iter: int
    iterations: int
    function_evals: int
    gradient_evals: int
    seconds: float
    message: str
    num_weights: int
    eval_examples: int
    eval_batch_size: int
    bn_mode: str
    gradient_norm: float
    subspace_distribution: str | None
    loss_ratio: float
    radius_fraction: float
    face_fraction: float
    perturbation_norm: float
    first_order: float


def sharpness_value(max_loss: float, loss: float) -> float:
    """phi = 100 (max_loss - loss) / (1 + loss)."""
    return 100.0 * (max_loss - loss) / (1.0 + loss)


def detect_bn_mode(model) -> str:
    """"batch" (batch statistics at inference), "moving", "mixed" or "none" (no BN layer)."""
    from lbgap_tf.models import BatchStatisticsNormalization

    modes = set()
    stack = list(model.layers)
    while stack:
        layer = stack.pop()
        if isinstance(layer, BatchStatisticsNormalization):
            modes.add("batch")
        elif isinstance(layer, keras.layers.BatchNormalization):
            modes.add("moving")
        stack.extend(getattr(layer, "layers", []))
    if not modes:
        return "none"
    return modes.pop() if len(modes) == 1 else "mixed"


def _check_epsilons(epsilons) -> tuple[float, ...]:
    if isinstance(epsilons, (int, float)):
        epsilons = (epsilons,)
    epsilons = tuple(epsilons)
    if not epsilons:
        raise SharpnessError("no epsilon given: pass at least one, e.g. (1e-3, 5e-4)")
    for eps in epsilons:
        if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating)) \
                or not math.isfinite(eps) or eps <= 0:
            raise SharpnessError(f"epsilon must be a finite number > 0, got {eps!r}")
    return tuple(float(e) for e in epsilons)


def _subset(features, labels, size, seed):
    """A fixed, seeded subset of `size` examples, kept in their original order."""
    features, labels = np.asarray(features), np.asarray(labels)
    total = features.shape[0] if features.ndim else 0
    if size is None:
        return features, labels
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) \
            or not 1 <= size <= total:
        raise SharpnessError(
            f"eval_examples must be between 1 and the number of examples ({total}), got "
            f"{size!r}: pass None to use all of them")
    index = np.sort(np.random.default_rng(seed).choice(total, size=size, replace=False))
    return features[index], labels[index]


class SharpnessProblem:
    """f over fixed data for one model, with f(x) and its gradient computed once and shared.

    The weights x are those of the model at construction. `measure` maximises f over the box of
    each epsilon in a space and returns `SharpnessResult`s; afterwards the trainable weights are
    restored bit for bit (also when a solver fails).

    Args:
      model: Keras model producing LOGITS; under a multi-replica strategy build it under
        `strategy.scope()`.
      features, labels: evaluation data (the training set, per the paper), fixed order.
      eval_batch_size: GLOBAL evaluation batch; batch-statistics BN depends on it.
      eval_examples: None for all examples, or the size of a fixed subset drawn with
        `subset_seed` (kept in file order).
      strategy: tf.distribute strategy (None: the current one).
      bn_mode: recorded in the results; None detects it from the model's BN layers.
    """

    def __init__(self, model, features, labels, *, eval_batch_size: int = DEFAULT_EVAL_BATCH_SIZE,
                 eval_examples: int | None = None, subset_seed: int = 0, strategy=None,
                 bn_mode: str | None = None):
        if not model.trainable_variables:
            raise SharpnessError(
                "the model has no trainable weights, so it has no sharpness: build the model "
                "and leave its layers trainable")
        features, labels = _subset(features, labels, eval_examples, subset_seed)
        self._fn = evaluation.LossAndGradient(model, features, labels,
                                              batch_size=eval_batch_size, strategy=strategy)
        self._variables = list(model.trainable_variables)
        self._saved = [v.numpy().copy() for v in self._variables]
        self.bn_mode = bn_mode or detect_bn_mode(model)
        self.num_weights = self._fn.num_weights
        self.eval_examples = self._fn.num_examples
        self.eval_batch_size = self._fn.batch_size
        self._x = self._fn.flat_weights()
        start = time.perf_counter()
        value, grad = self._fn(self._x)
        self.loss_seconds = time.perf_counter() - start
        self.loss = float(value)
        self._grad = grad
        self.gradient_norm = float(tf.norm(tf.cast(grad, tf.float64)))
        self.full_space = FullSpace(self.num_weights)
        self._objectives: dict[object, _Objective] = {}

    def restore(self) -> None:
        """Puts the weights present at construction back into the model, bit for bit."""
        for variable, saved in zip(self._variables, self._saved, strict=True):
            variable.assign(saved)

    def space(self, subspace_dim: int | None = None, *, seed: int = 0, matrix=None,
              distribution: str = DEFAULT_SUBSPACE_DISTRIBUTION,
              block_elements: int = DEFAULT_BLOCK_ELEMENTS,
              cache_bytes: int = DEFAULT_CACHE_BYTES):
        """The full space (None), a `RandomSubspace` of `subspace_dim` whose entries follow
        `distribution`, or an explicit matrix."""
        n = self.num_weights
        check_distribution(distribution)
        if matrix is not None:
            space = MatrixSubspace(matrix)
            if space.num_weights != n:
                raise SharpnessError(
                    f"the subspace matrix has {space.num_weights} rows but the model has {n} "
                    "trainable weights")
            if subspace_dim is not None and subspace_dim != space.dim:
                raise SharpnessError(
                    f"subspace_dim {subspace_dim} differs from the matrix's {space.dim} columns")
            return space
        if subspace_dim is None:
            return self.full_space
        if isinstance(subspace_dim, bool) or not isinstance(subspace_dim, (int, np.integer)) \
                or not 1 <= subspace_dim <= n:
            raise SharpnessError(
                f"subspace_dim must be an integer between 1 and the number of trainable weights "
                f"({n}), got {subspace_dim!r}: pass None for the full space")
        return RandomSubspace(n, int(subspace_dim), seed=seed, distribution=distribution,
                              block_elements=block_elements, cache_bytes=cache_bytes)

    def _objective(self, space) -> _Objective:
        if space not in self._objectives:
            self._objectives[space] = _Objective(self._fn, self._x, self.loss, self._grad, space)
        return self._objectives[space]

    def measure(self, epsilons: Sequence[float] = DEFAULT_EPSILONS, *, space=None,
                solver: str = "lbfgsb", max_iter: int = 10, seed: int = 0
                ) -> list[SharpnessResult]:
        """phi for each epsilon in `space` (default: the full space) with `solver`.

        `seed` is only recorded (the space carries its own); pass the one used for the space.
        """
        epsilons = _check_epsilons(epsilons)
        _check_solver(solver)
        max_iter = _checked_max_iter(max_iter)
        space = space or self.full_space
        objective = self._objective(space)
        results = []
        try:
            for eps in epsilons:
                radius = eps * (np.abs(objective.coordinates) + 1.0)
                start = time.perf_counter()
                outcome = objective.solve(radius, solver, max_iter)
                seconds = time.perf_counter() - start
                diagnostics = objective.diagnostics(outcome.best_point, radius, self.loss,
                                                    outcome.best_value)
                result = SharpnessResult(
                    value=sharpness_value(outcome.best_value, self.loss), loss=self.loss,
                    max_loss=outcome.best_value, epsilon=eps, solver=solver,
                    subspace=space.kind,
                    subspace_dim=None if space.kind == "full" else space.dim, seed=int(seed),
                    max_iter=max_iter, iterations=outcome.iterations,
                    function_evals=outcome.function_evals,
                    gradient_evals=outcome.gradient_evals, seconds=seconds,
                    message=outcome.message, num_weights=self.num_weights,
                    eval_examples=self.eval_examples, eval_batch_size=self.eval_batch_size,
                    bn_mode=self.bn_mode, gradient_norm=self.gradient_norm,
                    subspace_distribution=getattr(space, "distribution", None), **diagnostics)
                _log.info("sharpness %.6g (eps %g, %s, %s p=%s %s): f %.6g -> %.6g, %d evals, "
                          "%.1f s, %s; ||y||/||r|| %.3g, on a face %.3g, ||Ay|| %.3g, "
                          "first-order term %.6g", result.value, eps, solver, space.kind,
                          result.subspace_dim, result.subspace_distribution or "",
                          self.loss, outcome.best_value, outcome.function_evals, seconds,
                          outcome.message, result.radius_fraction, result.face_fraction,
                          result.perturbation_norm, result.first_order)
                results.append(result)
        finally:
            self.restore()
        return results


class _Objective:
    """y -> (f(x + A y), A^T grad f(x + A y)) for one space, compiled once per space."""

    def __init__(self, fn: evaluation.LossAndGradient, x: tf.Tensor, loss: float,
                 grad: tf.Tensor, space):
        self._fn, self._x, self._space = fn, x, space
        self.coordinates = space.coordinates(x)
        self._initial = (loss, space.rmatvec(grad).numpy())
        spec = tf.TensorSpec([space.dim], tf.float64)
        self._compiled = evaluation.compile_method(self.value_and_gradient,
                                                      input_signature=[spec])
        self._ascent: dict[int, AscentSolver] = {}

    def value_and_gradient(self, y):
        value, grad = self._fn.value_and_gradient(self._x + self._space.matvec(y))
        return value, self._space.rmatvec(grad)

    def value(self, y):
        return self._fn.value(self._x + self._space.matvec(y))

    def diagnostics(self, point: np.ndarray, radius: np.ndarray, loss: float,
                    max_loss: float) -> dict:
        """The `SharpnessResult` diagnostics of the best point `point` in the box `radius`."""
        radius_norm = float(np.linalg.norm(radius))
        active = radius > 0
        on_face = np.abs(point[active]) >= radius[active] * (1 - 1e-9)
        moved = self._space.matvec(tf.constant(point, tf.float64))
        return {
            "loss_ratio": max_loss / loss if loss > 0 else math.inf,
            "radius_fraction": float(np.linalg.norm(point)) / radius_norm if radius_norm
            else 0.0,
            "face_fraction": float(np.mean(on_face)) if on_face.size else 0.0,
            "perturbation_norm": float(tf.norm(tf.cast(moved, tf.float64))),
            "first_order": sharpness_value(loss + float(self._initial[1] @ point), loss),
        }

    def solve(self, radius: np.ndarray, solver: str, max_iter: int) -> SolverResult:
        if solver in ("lbfgsb", "lbfgsb_scaled"):
            return maximize_lbfgsb(self._compiled, radius, max_iter=max_iter,
                                   initial=self._initial, scaled=solver == "lbfgsb_scaled")
        if max_iter not in self._ascent:
            self._ascent[max_iter] = AscentSolver(self.value_and_gradient, max_iter=max_iter,
                                                  value_fn=self.value)
        return self._ascent[max_iter](radius, initial=self._initial)


def sharpness(model, features, labels, *, epsilons: Sequence[float] = DEFAULT_EPSILONS,
              subspace_dim: int | None = None, solver: str = "lbfgsb", max_iter: int = 10,
              seed: int = 0, eval_batch_size: int = DEFAULT_EVAL_BATCH_SIZE,
              eval_examples: int | None = None, strategy=None, bn_mode: str | None = None,
              subspace_matrix=None,
              subspace_distribution: str = DEFAULT_SUBSPACE_DISTRIBUTION,
              block_elements: int = DEFAULT_BLOCK_ELEMENTS,
              cache_bytes: int = DEFAULT_CACHE_BYTES) -> list[SharpnessResult]:
    """(C_eps, A)-sharpness of `model` for each epsilon (Metric 2.1), one result per epsilon.

    `subspace_dim` None is the full space, an integer p a `RandomSubspace` drawn with `seed`
    from `subspace_distribution`; `subspace_matrix` gives A explicitly instead. `seed` also
    draws the evaluation subset when `eval_examples` is given. f(x) is computed once and
    shared by all epsilons. See `SharpnessProblem` for the data arguments; the model's weights
    are restored bit for bit.
    """
    epsilons = _check_epsilons(epsilons)
    _check_solver(solver)
    max_iter = _checked_max_iter(max_iter)
    check_distribution(subspace_distribution)
    if subspace_dim is not None and (isinstance(subspace_dim, bool)
                                     or not isinstance(subspace_dim, (int, np.integer))
                                     or subspace_dim < 1):
        raise SharpnessError(
            f"subspace_dim must be a positive integer, got {subspace_dim!r}: pass None for the "
            "full space")
    problem = SharpnessProblem(model, features, labels, eval_batch_size=eval_batch_size,
                               eval_examples=eval_examples, subset_seed=seed, strategy=strategy,
                               bn_mode=bn_mode)
    space = problem.space(subspace_dim, seed=seed, matrix=subspace_matrix,
                          distribution=subspace_distribution, block_elements=block_elements,
                          cache_bytes=cache_bytes)
    return problem.measure(epsilons, space=space, solver=solver, max_iter=max_iter, seed=seed)
