"""Curvature of the loss at a trained minimizer: Hessian spectrum and adaptive sharpness.

f is the loss of Metric 2.1 (`evaluation.LossAndGradient`): the mean softmax cross-entropy
over fixed evaluation data, in a fixed order and GLOBAL evaluation batch, BN per the model's BN
mode, under a tf.distribute strategy. x is the flat vector of trainable weights (n of them) and
H the Hessian of f at x. Every measure here uses that same f, so its numbers compare with the
sharpness rows of the same run, data and batch.

Hessian-vector products (HVPs) H v are exact (no finite differences), summed per replica over
each replica's slice of every global batch, reduced with SUM and divided by N once (the mean
loss, not the sum), by one of `HVP_METHODS`:

- ``"forward_over_reverse"``: a `tf.autodiff.ForwardAccumulator` pushes v through the backward
  pass of a `tf.GradientTape` (the JVP of the gradient), as google/spectral-density does;
- ``"double_backprop"``: the gradient of (grad f . v), two nested tapes.

`CurvatureProblem` times one pass of each against one gradient pass (CPU seconds of the
process, which a shared machine does not inflate the way wall time is) and uses the faster
one; both give H v up to float rounding. Memory: a few n-vectors per HVP.

Measures (`MEASURES`), from HVPs only, the scipy side in float64:

- ``"top_eigenvalues"``: the k largest eigenvalues, `scipy.sparse.linalg.eigsh` (implicitly
  restarted Lanczos, ARPACK) on a `LinearOperator`, ``which="LA"``;
- ``"min_eigenvalue"``: the smallest one, ``which="SA"``; a negative value means x is not a
  minimum of f on this data (a saddle, or a minimum of the training loss only), a finding;
- ``"trace"``: Hutchinson's estimator, the mean of z^T H z over Rademacher probes z, with its
  standard error; probes are added until the relative standard error is at most ``tol``
  (after ``min_probes``) or ``max_probes`` were used;
- ``"density"``: the spectral density by stochastic Lanczos quadrature (`slq`); the row keeps
  the quadrature nodes and weights, from which `reporting.curvature` derives the smoothed
  density CSV and its plot;
- ``"adaptive_linf"``, ``"adaptive_l2"``: adaptive (scale-invariant) sharpness (Kwon et al.,
  ICML 2021; Andriushchenko et al., ICML 2023), the largest loss increase
  max f(x + delta) - f(x) over |delta_i| <= rho |x_i| (L-infinity) or over the ellipsoid
  ||delta / |x| ||_2 <= rho (L2; coordinates with x_i = 0 do not move). Scaling a ReLU
  layer's weights by c and the next one's by 1/c leaves f unchanged and maps one set onto the
  other, so the value is invariant where the box eps of Metric 2.1 is not. Metric 2.1's box
  |delta_i| <= eps (|x_i| + 1) is the same idea with an additive 1, which keeps small weights
  movable and breaks that invariance. The maximum is found by the suite's in-graph ascent
  (`sharpness.AscentSolver`, projected sign-gradient steps, for the box) and by projected
  normalised-gradient ascent in the scaled variables u = delta / |x| (for the ellipsoid); the
  raw loss difference is reported (a lower bound of the maximum, >= 0).

Each result carries its cost in gradient-pass equivalents: the measure's CPU seconds over the
CPU seconds of one gradient pass on the same data.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable

import numpy as np
import scipy.sparse.linalg
import tensorflow as tf

from lbgap_tf import evaluation, sharpness
from lbgap_tf.measures import slq

HVP_METHODS = ("forward_over_reverse", "double_backprop")
MEASURES = ("top_eigenvalues", "min_eigenvalue", "trace", "density", "adaptive_linf",
            "adaptive_l2")
ADAPTIVE_NORMS = {"adaptive_linf": "linf", "adaptive_l2": "l2"}

_log = logging.getLogger(__name__)


class CurvatureError(ValueError):
    """Bad input to a curvature measure (k >= number of weights, rho <= 0, no probes, ...)."""


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise CurvatureError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _positive_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) \
            or not math.isfinite(value) or value <= 0:
        raise CurvatureError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


@dataclasses.dataclass(frozen=True)
class CurvatureConfig:
    """What to measure and with which settings; checked on construction.

    k: eigenvalues of ``top_eigenvalues``. eigen_tol: ARPACK's relative accuracy of each
    eigenvalue. eigen_max_hvps: about the most HVPs one eigsh call may use (converted to
    ARPACK restarts; a call that runs out reports the eigenvalues that converged, if any).
    trace_tol: the relative standard error that ends Hutchinson's estimator, after
    trace_min_probes and at most trace_max_probes probes. lanczos_steps, density_probes: the
    SLQ density (one Lanczos run of that many steps per probe). rho_linf, rho_l2: radii of the
    adaptive-sharpness box and ellipsoid. ascent_steps: steps of either ascent. seed: draws
    the probes and eigsh's start vector.
    """

    measures: tuple[str, ...] = MEASURES
    k: int = 5
    eigen_tol: float = 1e-3
    eigen_max_hvps: int = 400
    trace_tol: float = 0.05
    trace_min_probes: int = 10
    trace_max_probes: int = 100
    lanczos_steps: int = 50
    density_probes: int = 1
    rho_linf: float = 1e-3
    rho_l2: float = 0.1
    ascent_steps: int = 20
    seed: int = 0

    def __post_init__(self):
        measures = tuple(dict.fromkeys(self.measures))
        if not measures:
            raise CurvatureError(f"no measure given: choose among {', '.join(MEASURES)}")
        unknown = [m for m in measures if m not in MEASURES]
        if unknown:
            raise CurvatureError(f"unknown measure(s) {', '.join(map(repr, unknown))}: choose "
                                 f"among {', '.join(MEASURES)}")
        object.__setattr__(self, "measures", measures)
        for name in ("k", "eigen_max_hvps", "trace_min_probes", "trace_max_probes",
                     "lanczos_steps", "density_probes", "ascent_steps"):
            _positive_int(name, getattr(self, name))
        for name in ("eigen_tol", "trace_tol", "rho_linf", "rho_l2"):
            _positive_float(name, getattr(self, name))
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) \
                or self.seed < 0:
            raise CurvatureError(f"seed must be an integer >= 0, got {self.seed!r}")

    def settings(self, measure: str) -> dict:
        """The settings that define one measure's result (part of its key in rows)."""
        if measure == "top_eigenvalues":
            return {"k": self.k, "tol": self.eigen_tol, "max_hvps": self.eigen_max_hvps,
                    "seed": self.seed}
        if measure == "min_eigenvalue":
            return {"tol": self.eigen_tol, "max_hvps": self.eigen_max_hvps, "seed": self.seed}
        if measure == "trace":
            return {"tol": self.trace_tol, "min_probes": self.trace_min_probes,
                    "max_probes": self.trace_max_probes, "seed": self.seed}
        if measure == "density":
            return {"steps": self.lanczos_steps, "probes": self.density_probes,
                    "seed": self.seed}
        if measure in ADAPTIVE_NORMS:
            rho = self.rho_linf if measure == "adaptive_linf" else self.rho_l2
            return {"rho": rho, "steps": self.ascent_steps}
        raise CurvatureError(f"unknown measure {measure!r}: choose among {', '.join(MEASURES)}")

    def check_against(self, num_weights: int) -> None:
        """Raises `CurvatureError` when a setting does not fit a model of ``num_weights``."""
        if "top_eigenvalues" in self.measures and self.k >= num_weights:
            raise CurvatureError(
                f"k={self.k} eigenvalues asked for, but the model has only {num_weights} "
                f"trainable weights; eigsh needs k < {num_weights}: pass a smaller k")
        if "min_eigenvalue" in self.measures and num_weights < 2:
            raise CurvatureError("min_eigenvalue needs a model with at least 2 trainable weights")


@dataclasses.dataclass(frozen=True)
class CurvatureResult:
    """One measure on one model.

    ``value`` is the headline number: the largest eigenvalue (``top_eigenvalues``; all k
    are in ``values``, descending), the smallest eigenvalue, the trace (with
    ``standard_error``), the SLQ estimate of the trace n * sum(w * nodes) (nodes in
    ``values``, weights in ``weights``, with the standard error over probes when there are
    several) or the adaptive sharpness max_loss - loss. ``converged`` says whether the
    stopping rule was met (eigsh converged, the trace reached its tolerance; always True for
    the fixed-budget density and ascents). ``hvps`` and ``gradient_evals`` count the passes
    over the data; ``pass_equivalents`` is ``cpu_seconds`` over one gradient pass's.
    """

    measure: str
    settings: dict
    value: float
    values: tuple[float, ...]
    weights: tuple[float, ...]
    standard_error: float | None
    max_loss: float | None
    converged: bool
    hvps: int
    gradient_evals: int
    seconds: float
    cpu_seconds: float
    pass_equivalents: float
    message: str


@dataclasses.dataclass(frozen=True)
class PassCost:
    """CPU and wall seconds of one pass over the evaluation data (after a warm-up pass)."""

    cpu_seconds: float
    seconds: float


def time_pass(call: Callable[[], object], repeats: int) -> PassCost:
    """The mean cost of ``call()`` over ``repeats`` calls after one warm-up call (tracing)."""
    call()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(repeats):
        call()
    return PassCost((time.process_time() - cpu) / repeats,
                    (time.perf_counter() - wall) / repeats)


# --------------------------------------------------------------------------------------------
# Adaptive sharpness maximisers over delta, for any traceable f(x + delta).
# --------------------------------------------------------------------------------------------

def adaptive_radius(weights, rho: float) -> np.ndarray:
    """The half-widths rho |w_i| of the adaptive L-infinity box (float64)."""
    return _positive_float("rho", rho) * np.abs(np.asarray(weights, np.float64))


class EllipsoidAscent:
    """Maximises fun(delta) over ||delta / s||_2 <= rho (s >= 0 per coordinate) from delta = 0.

    Works in u = delta / s (delta = s * u, so coordinates with s_i = 0 never move): K =
    `max_iter` projected normalised-gradient steps u <- P(u + (2 rho / K) g_u / ||g_u||), with
    g_u = s * grad_delta and P the projection onto the ball ||u|| <= rho, so the boundary is
    reachable in K / 2 steps. The gradient is evaluated at u_0..u_{K-1} and the value also at
    u_K (with `value_fn` when given). The whole loop runs in one `tf.function`; the best
    evaluated point is returned as delta. `fun` takes a float64 delta and returns (value,
    gradient with respect to delta).
    """

    def __init__(self, fun: sharpness.ValueAndGradient, *, max_iter: int,
                 value_fn: Callable[[tf.Tensor], tf.Tensor] | None = None):
        self._fun, self._value_fn = fun, value_fn
        self.max_iter = _positive_int("max_iter", max_iter)
        self._run = evaluation.compile_method(self._loop)

    def _value(self, delta):
        if self._value_fn is not None:
            return tf.cast(self._value_fn(delta), tf.float64)
        return tf.cast(self._fun(delta)[0], tf.float64)

    def _loop(self, scale, rho, start_value, start_grad):
        step = 2.0 * rho / self.max_iter

        def advance(u, grad):
            g_u = scale * tf.cast(grad, tf.float64)
            u = u + step * tf.math.divide_no_nan(g_u, tf.norm(g_u))
            return u * tf.minimum(tf.constant(1.0, tf.float64),
                                  tf.math.divide_no_nan(rho, tf.norm(u)))

        u = tf.zeros_like(scale)
        best_value, best_point, grad = start_value, u, start_grad
        for _ in tf.range(self.max_iter - 1):
            u = advance(u, grad)
            value, grad = self._fun(scale * u)
            value = tf.cast(value, tf.float64)
            better = value > best_value
            best_point = tf.where(better, u, best_point)
            best_value = tf.where(better, value, best_value)
        u = advance(u, grad)
        value = self._value(scale * u)
        better = value > best_value
        best_point = tf.where(better, u, best_point)
        best_value = tf.where(better, value, best_value)
        return best_value, scale * best_point

    def __call__(self, scale, rho: float, *, initial: tuple[float, np.ndarray] | None = None
                 ) -> sharpness.SolverResult:
        scale = np.asarray(scale, np.float64)
        if scale.ndim != 1 or scale.size == 0 or not np.all(np.isfinite(scale)) \
                or np.any(scale < 0):
            raise CurvatureError("the ellipsoid scale must be a non-empty vector of finite "
                                 "values >= 0")
        rho = _positive_float("rho", rho)
        if initial is None:
            initial = self._fun(tf.zeros(scale.shape, tf.float64))
        start_value = tf.constant(float(np.asarray(initial[0])), tf.float64)
        start_grad = tf.reshape(tf.cast(initial[1], tf.float64), scale.shape)
        best_value, best_point = self._run(tf.constant(scale), tf.constant(rho, tf.float64),
                                           start_value, start_grad)
        steps = self.max_iter
        return sharpness.SolverResult(
            solver="ellipsoid_ascent", best_value=float(best_value),
            best_point=best_point.numpy(), start_value=float(start_value), iterations=steps,
            function_evals=steps + 1,
            gradient_evals=steps if self._value_fn is not None else steps + 1,
            message=f"completed {steps} projected normalised-gradient steps")


# --------------------------------------------------------------------------------------------
# The measures on a Keras model.
# --------------------------------------------------------------------------------------------

class CurvatureProblem:
    """The curvature measures of one model at its current weights x, on fixed data.

    Construction evaluates f(x) and its gradient, times a gradient pass and (with
    ``hvp_method="auto"``) one HVP by each of `HVP_METHODS`, and keeps the faster method.
    The trainable weights are restored bit for bit after every evaluation.

    Args:
      model: Keras model producing LOGITS; under a multi-replica strategy build it under
        `strategy.scope()`.
      features, labels: the evaluation data, in a fixed order (the sharpness metric's: the
        run's training set or its fixed subset).
      eval_batch_size: GLOBAL evaluation batch (batch-statistics BN depends on it).
      strategy: tf.distribute strategy (None: the current one).
      bn_mode: recorded; None detects it from the model.
      hvp_method: one of `HVP_METHODS`, or "auto" to time both and keep the faster.
      timing_repeats: passes averaged per timing.
    """

    def __init__(self, model, features, labels, *, eval_batch_size: int, strategy=None,
                 bn_mode: str | None = None, hvp_method: str = "auto", timing_repeats: int = 2):
        if hvp_method != "auto" and hvp_method not in HVP_METHODS:
            raise CurvatureError(f"unknown hvp_method {hvp_method!r}: choose auto or one of "
                                 f"{', '.join(HVP_METHODS)}")
        self._fn = evaluation.LossAndGradient(model, features, labels,
                                              batch_size=eval_batch_size, strategy=strategy)
        self.bn_mode = bn_mode or sharpness.detect_bn_mode(model)
        self.num_weights = self._fn.num_weights
        self.eval_examples = self._fn.num_examples
        self.eval_batch_size = self._fn.batch_size
        self._x = self._fn.flat_weights()
        self.weights = self._x.numpy().astype(np.float64)
        spec = [tf.TensorSpec([self.num_weights], self._fn.dtype)]
        self._compiled = {
            "forward_over_reverse": evaluation.compile_method(self._forward_over_reverse,
                                                              input_signature=spec),
            "double_backprop": evaluation.compile_method(self._double_backprop,
                                                         input_signature=spec)}
        self.gradient_cost = time_pass(lambda: self._fn(self._x), timing_repeats)
        value, grad = self._fn(self._x)
        self.loss = float(value)
        self._grad = grad
        self.gradient = grad.numpy().astype(np.float64)
        self.gradient_norm = float(tf.norm(tf.cast(grad, tf.float64)))
        probe = tf.constant(slq.rademacher(self.num_weights, np.random.default_rng(0)),
                            self._fn.dtype)
        methods = HVP_METHODS if hvp_method == "auto" else (hvp_method,)
        self.hvp_costs = {}  # HVP method -> cost of one HVP in gradient passes (CPU time)
        products = {}
        for method in methods:
            cost = time_pass(lambda m=method: self._compiled[m](probe), timing_repeats)
            self.hvp_costs[method] = cost.cpu_seconds / self.gradient_cost.cpu_seconds
            products[method] = self._compiled[method](probe).numpy().astype(np.float64)
        self.hvp_note = ""
        usable = dict(self.hvp_costs)
        if len(products) == 2:
            forward, backward = products["forward_over_reverse"], products["double_backprop"]
            difference = np.linalg.norm(forward - backward) / max(np.linalg.norm(backward),
                                                                  1e-30)
            if not difference <= 1e-3:
                # Seen with BN synchronised across replicas: TensorFlow's forward-mode
                # derivative of the cross-replica all-reduce is wrong; double backprop matched
                # the explicit Hessian there.
                del usable["forward_over_reverse"]
                self.hvp_note = (f"forward-over-reverse disagreed with double backprop "
                                 f"(relative difference {difference:.2g}) and is not used")
                _log.warning("%s", self.hvp_note)
        self.hvp_method = min(usable, key=usable.get)
        self.hvps = 0
        self._ascents: dict = {}

    # ---------------------------------------------------------------- Hessian-vector products

    def _forward_over_reverse(self, vector):
        fn = self._fn

        def replica_sum(x, y):
            # The TensorFlow variables under the Keras ones: the accumulator watches those.
            variables = [v.value for v in fn.variables]
            with tf.autodiff.ForwardAccumulator(variables, fn.unflatten(vector)) as accumulator:
                with tf.GradientTape() as tape:
                    loss = fn.summed_loss(x, y)
                grads = tape.gradient(loss, variables,
                                      unconnected_gradients=tf.UnconnectedGradients.ZERO)
            return fn.flatten(accumulator.jvp(grads,
                                              unconnected_gradients=tf.UnconnectedGradients.ZERO))

        return fn.mean_over_data(self._x, replica_sum)

    def _double_backprop(self, vector):
        fn = self._fn

        def replica_sum(x, y):
            variables = fn.variables
            with tf.GradientTape() as outer:
                with tf.GradientTape() as inner:
                    loss = fn.summed_loss(x, y)
                grads = inner.gradient(loss, variables,
                                       unconnected_gradients=tf.UnconnectedGradients.ZERO)
                projection = tf.add_n([tf.reduce_sum(g * tf.cast(t, g.dtype)) for g, t in
                                       zip(grads, fn.unflatten(vector), strict=True)])
            return fn.flatten(outer.gradient(projection, variables,
                                             unconnected_gradients=tf.UnconnectedGradients.ZERO))

        return fn.mean_over_data(self._x, replica_sum)

    def hvp(self, vector, method: str | None = None) -> np.ndarray:
        """H v (float64 [n]) for a vector v (anything np.asarray accepts), by ``method``
        (default: the chosen one). Counted in ``hvps``."""
        method = method or self.hvp_method
        v = tf.constant(np.asarray(vector, np.float64).reshape(self.num_weights),
                        self._fn.dtype)
        self.hvps += 1
        return self._compiled[method](v).numpy().astype(np.float64)

    def _operator(self) -> scipy.sparse.linalg.LinearOperator:
        n = self.num_weights
        return scipy.sparse.linalg.LinearOperator((n, n), matvec=self.hvp, dtype=np.float64)

    # ---------------------------------------------------------------------------- measures

    def _eigsh(self, k: int, which: str, config: CurvatureConfig):
        n = self.num_weights
        ncv = min(n, max(2 * k + 1, 20))
        maxiter = max(1, math.ceil(config.eigen_max_hvps / max(1, ncv - k)))
        start = np.random.default_rng(config.seed).standard_normal(n)
        try:
            values = scipy.sparse.linalg.eigsh(
                self._operator(), k=k, which=which, tol=config.eigen_tol, maxiter=maxiter,
                ncv=ncv, v0=start, return_eigenvectors=False)
            return np.sort(values), True, f"eigsh ({which}) converged"
        except scipy.sparse.linalg.ArpackNoConvergence as error:
            values = np.sort(np.asarray(error.eigenvalues, np.float64))
            return values, False, (f"eigsh ({which}) did not converge within about "
                                   f"{config.eigen_max_hvps} HVPs: {len(values)} of {k} "
                                   "eigenvalues converged")

    def _top_eigenvalues(self, config: CurvatureConfig) -> dict:
        values, converged, message = self._eigsh(config.k, "LA", config)
        values = tuple(float(v) for v in values[::-1])
        return {"value": values[0] if values else math.nan, "values": values,
                "converged": converged, "message": message}

    def _min_eigenvalue(self, config: CurvatureConfig) -> dict:
        values, converged, message = self._eigsh(1, "SA", config)
        value = float(values[0]) if values.size else math.nan
        if converged and value < 0:
            message += "; negative curvature: x is not a minimum of f on this data"
        return {"value": value, "values": (value,), "converged": converged, "message": message}

    def _trace(self, config: CurvatureConfig) -> dict:
        rng = np.random.default_rng(config.seed)
        samples = []
        enough = min(max(2, config.trace_min_probes), config.trace_max_probes)
        mean, error, converged = math.nan, None, False
        while len(samples) < config.trace_max_probes:
            probe = slq.rademacher(self.num_weights, rng)
            samples.append(float(probe @ self.hvp(probe)))
            mean = math.fsum(samples) / len(samples)
            if len(samples) >= 2:
                error = float(np.std(samples, ddof=1) / math.sqrt(len(samples)))
            if len(samples) >= enough and error is not None \
                    and error <= config.trace_tol * abs(mean):
                converged = True
                break
        rel = f"{error / abs(mean):.3g}" if error is not None and mean else "n/a"
        message = (f"Hutchinson over {len(samples)} Rademacher probes, relative s.e. {rel}"
                   + ("" if converged else f" (tolerance {config.trace_tol:g} not reached)"))
        return {"value": mean, "values": (), "standard_error": error, "converged": converged,
                "message": message}

    def _density(self, config: CurvatureConfig) -> dict:
        n, probes = self.num_weights, config.density_probes
        rules = slq.slq(self.hvp, n, steps=config.lanczos_steps, probes=probes,
                        seed=config.seed)
        nodes, weights = slq.combine(rules)
        traces = [n * slq.moment(*rule, 1) for rule in rules]
        error = float(np.std(traces, ddof=1) / math.sqrt(probes)) if probes > 1 else None
        return {"value": float(np.mean(traces)), "values": tuple(float(v) for v in nodes),
                "weights": tuple(float(w) for w in weights), "standard_error": error,
                "converged": True,
                "message": f"SLQ: {probes} probe(s), "
                           f"{', '.join(str(rule[0].size) for rule in rules)} Ritz values"}

    def _delta_value_and_gradient(self, delta):
        value, grad = self._fn.value_and_gradient(self._x + tf.cast(delta, self._fn.dtype))
        return value, tf.cast(grad, tf.float64)

    def _delta_value(self, delta):
        return self._fn.value(self._x + tf.cast(delta, self._fn.dtype))

    def _adaptive(self, measure: str, config: CurvatureConfig) -> dict:
        key = (measure, config.ascent_steps)
        if key not in self._ascents:
            solver = sharpness.AscentSolver if measure == "adaptive_linf" else EllipsoidAscent
            self._ascents[key] = solver(self._delta_value_and_gradient,
                                        max_iter=config.ascent_steps,
                                        value_fn=self._delta_value)
        initial = (self.loss, self._grad)
        if measure == "adaptive_linf":
            outcome = self._ascents[key](adaptive_radius(self.weights, config.rho_linf),
                                         initial=initial)
        else:
            outcome = self._ascents[key](np.abs(self.weights), config.rho_l2, initial=initial)
        return {"value": outcome.best_value - self.loss, "values": (),
                "max_loss": outcome.best_value, "converged": True,
                "gradient_evals": outcome.gradient_evals, "message": outcome.message}

    def measure(self, measure: str, config: CurvatureConfig) -> CurvatureResult:
        """One of `MEASURES` with the settings of ``config``."""
        config.check_against(self.num_weights)
        method = {"top_eigenvalues": self._top_eigenvalues,
                  "min_eigenvalue": self._min_eigenvalue, "trace": self._trace,
                  "density": self._density}.get(measure)
        if method is None and measure not in ADAPTIVE_NORMS:
            raise CurvatureError(f"unknown measure {measure!r}: choose among "
                                 f"{', '.join(MEASURES)}")
        hvps_before = self.hvps
        cpu, wall = time.process_time(), time.perf_counter()
        outcome = method(config) if method else self._adaptive(measure, config)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        result = CurvatureResult(
            measure=measure, settings=config.settings(measure), value=float(outcome["value"]),
            values=tuple(outcome.get("values", ())), weights=tuple(outcome.get("weights", ())),
            standard_error=outcome.get("standard_error"), max_loss=outcome.get("max_loss"),
            converged=bool(outcome["converged"]), hvps=self.hvps - hvps_before,
            gradient_evals=int(outcome.get("gradient_evals", 0)), seconds=wall,
            cpu_seconds=cpu, pass_equivalents=cpu / self.gradient_cost.cpu_seconds,
            message=outcome["message"])
        _log.info("%s %s: %.6g (%d HVPs, %d gradients, %.1f gradient passes, %.1f s); %s",
                  measure, result.settings, result.value, result.hvps, result.gradient_evals,
                  result.pass_equivalents, wall, result.message)
        return result
