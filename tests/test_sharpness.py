"""Metric 2.1 against closed forms and an independent NumPy + scipy computation."""

import dataclasses
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.optimize  # noqa: E402
import tensorflow as tf  # noqa: E402

from lbgap_tf import evaluation, models, sharpness  # noqa: E402
from tests import numpy_reference as ref  # noqa: E402

# tests/conftest.py splits the CPU into two logical devices for the whole session.
CPUS = [d.name for d in tf.config.list_logical_devices("CPU")]
needs_two_cpus = pytest.mark.skipif(len(CPUS) < 2, reason="needs 2 logical CPU devices")


def _linear(g, x):
    g, x = tf.constant(g, tf.float64), tf.constant(x, tf.float64)

    def fun(y):
        return tf.reduce_sum(g * (x + y)), g
    return fun


def _solve(solver, fun, radius, max_iter):
    return sharpness.maximize(fun, radius, solver=solver, max_iter=max_iter)


# ------------------------------------------------------------------------------ closed forms

@pytest.mark.parametrize("solver", sharpness.SOLVERS)
@pytest.mark.parametrize("max_iter", [1, 3, 10])
def test_linear_function_reaches_box_maximum(solver, max_iter):
    rng = np.random.default_rng(0)
    x, g = rng.normal(size=50), rng.normal(size=50)
    g[:3] = [1e-12, -1e-9, 0.0]
    eps = 1e-3
    radius = eps * (np.abs(x) + 1)
    result = _solve(solver, _linear(g, x), radius, max_iter)
    expected = g @ x + np.sum(np.abs(g) * eps * (np.abs(x) + 1))
    assert result.best_value == pytest.approx(expected, rel=1e-12, abs=1e-14)
    assert result.start_value == pytest.approx(g @ x, rel=1e-14)
    assert np.all(np.abs(result.best_point) <= radius)
    assert result.solver == solver and result.message


@pytest.mark.parametrize("solver", sharpness.SOLVERS)
def test_convex_quadratic_maximum_at_the_far_corner(solver):
    rng = np.random.default_rng(1)
    m = 20
    radius = rng.uniform(0.5, 2.0, m)
    a = rng.uniform(0.1, 3.0, m)
    c = rng.uniform(-0.9, 0.9, m) * radius  # minimiser inside the box, never at its centre
    a_t, c_t = tf.constant(a), tf.constant(c)

    def fun(y):
        return tf.reduce_sum(a_t * (y - c_t) ** 2), 2 * a_t * (y - c_t)

    corner = -np.sign(c) * radius
    expected = np.sum(a * (corner - c) ** 2)
    result = _solve(solver, fun, radius, 10)
    np.testing.assert_allclose(result.best_point, corner, rtol=1e-12)
    assert result.best_value == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("solver", sharpness.SOLVERS)
def test_tiny_gradient_at_start_does_not_stop_the_solver(solver):
    """Near-zero gradient at y = 0, large maximum: scipy's default gtol stops at 0 here."""
    m = 30
    radius = np.full(m, 1e-3 * 1.05)
    slope, curvature = 1e-7, 5e3

    def fun(y):
        return tf.reduce_sum(slope * y + curvature * y * y), slope + 2 * curvature * y

    def negated(y):
        value, grad = fun(tf.constant(y))
        return -float(value), -grad.numpy()

    default = scipy.optimize.minimize(negated, np.zeros(m), jac=True, method="L-BFGS-B",
                                      bounds=scipy.optimize.Bounds(-radius, radius),
                                      options={"maxiter": 10})
    assert np.all(default.x == 0) and "PROJECTED GRADIENT" in str(default.message)
    expected = np.sum(slope * radius + curvature * radius ** 2)
    result = _solve(solver, fun, radius, 10)
    assert result.best_value == pytest.approx(expected, rel=1e-9)
    assert result.best_value > 0.1  # 0.165, while the gradient at 0 has norm 5.5e-7


def test_ascent_keeps_best_point_and_counts_evaluations():
    # f(y) = -(y - 0.3)^2 peaks inside the box; steps of 2/K = 0.5 overshoot and come back.
    def fun(y):
        return -tf.reduce_sum((y - 0.3) ** 2), -2 * (y - 0.3)

    values = []

    def value_fn(y):
        values.append(1)
        return fun(y)[0]

    result = sharpness.AscentSolver(fun, max_iter=4, value_fn=value_fn)(np.ones(1))
    # Trajectory 0 -> 0.5 -> 0 -> 0.5 -> 0: the best evaluated point is 0.5.
    assert result.best_point == pytest.approx([0.5])
    assert result.best_value == pytest.approx(-0.04)
    assert (result.function_evals, result.gradient_evals, result.iterations) == (5, 4, 4)


def test_lbfgsb_uses_initial_value_and_counts_it():
    calls = []
    g = np.array([1.0, -2.0])

    def fun(y):
        calls.append(y.numpy().copy())
        return tf.reduce_sum(g * y), tf.constant(g)

    result = sharpness.maximize_lbfgsb(fun, np.ones(2), max_iter=5, initial=(0.0, g))
    assert result.best_value == pytest.approx(3.0)
    assert not any(np.all(c == 0) for c in calls)
    assert result.function_evals == len(calls) + 1
    assert result.iterations <= 5


# --------------------------------------------------------------------------------- subspaces

def _explicit(space):
    return np.stack([space.matvec(tf.constant(np.eye(space.dim)[j])).numpy()
                     for j in range(space.dim)], axis=1).astype(np.float64)


def test_random_subspace_is_the_scaled_gaussian_blocks():
    n, p, seed = 1000, 7, 5
    space = sharpness.RandomSubspace(n, p, seed=seed, distribution="normal_1_over_p",
                                     block_elements=300 * p, cache_bytes=0)
    assert (space.rows_per_block, space.num_blocks, space.cached) == (300, 4, False)
    gaussian = np.concatenate([
        tf.random.stateless_normal([min(300, n - 300 * b), p], seed=[seed, b]).numpy()
        for b in range(4)]).astype(np.float64)
    expected = gaussian / np.sqrt(p)  # i.i.d. N(0, 1/p)
    a = _explicit(space)
    np.testing.assert_allclose(a, expected, rtol=1e-6, atol=1e-7)
    assert np.mean(a ** 2) == pytest.approx(1 / p, rel=0.05)
    np.testing.assert_allclose(space.gram.numpy(), expected.T @ expected, rtol=1e-10)
    rng = np.random.default_rng(0)
    g = rng.normal(size=n).astype(np.float32)
    np.testing.assert_allclose(space.rmatvec(tf.constant(g)).numpy(), expected.T @ g, rtol=1e-5)
    x = rng.normal(size=n).astype(np.float32)
    np.testing.assert_allclose(space.coordinates(tf.constant(x)),
                               np.linalg.lstsq(expected, x, rcond=None)[0], rtol=1e-5)
    cached = sharpness.RandomSubspace(n, p, seed=seed, distribution="normal_1_over_p",
                                      block_elements=300 * p)
    assert cached.cached
    np.testing.assert_allclose(_explicit(cached), a, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(cached.rmatvec(tf.constant(g)).numpy(), expected.T @ g, rtol=1e-5)
    np.testing.assert_array_equal(cached.gram.numpy(), space.gram.numpy())
    other = sharpness.RandomSubspace(n, p, seed=seed + 1, distribution="normal_1_over_p")
    assert not np.allclose(_explicit(other), a, atol=1e-3)


@pytest.mark.parametrize("solver", sharpness.SOLVERS)
def test_random_subspace_linear_maximum_and_bound(solver):
    """In a subspace the linear maximum is g.x + sum_j |(A^T g)_j| eps (|(A^T x)_j| + 1)."""
    n, p, eps = 4000, 10, 1e-3
    rng = np.random.default_rng(2)
    x = rng.normal(0, 0.1, n).astype(np.float32)
    g = rng.normal(size=n).astype(np.float32)
    space = sharpness.RandomSubspace(n, p, seed=3, distribution="normal_1_over_p",
                                     block_elements=128 * p, cache_bytes=0)
    a = _explicit(space)
    g_t, x_t = tf.constant(g, tf.float64), tf.constant(x)

    def fun(y):
        w = tf.cast(x_t + space.matvec(y), tf.float64)
        return tf.reduce_sum(g_t * w), space.rmatvec(tf.cast(g_t, tf.float32))

    coords = space.coordinates(x_t)
    np.testing.assert_allclose(coords, np.linalg.lstsq(a, x, rcond=None)[0], rtol=1e-4,
                               atol=1e-6)
    radius = eps * (np.abs(coords) + 1)
    result = _solve(solver, fun, radius, 10)
    gx = float(np.dot(g.astype(np.float64), x))
    expected = gx + np.sum(np.abs(a.T @ g) * radius)
    full = gx + np.sum(np.abs(g) * eps * (np.abs(x) + 1.0))
    assert result.best_value == pytest.approx(expected, rel=1e-4)
    # About sqrt(p / n) = 0.05 of the full-space gain for a Gaussian g.
    assert result.best_value - gx < 0.2 * (full - gx)


def test_subspace_distributions_moments_and_linear_closed_form():
    """Each distribution of A: the moments of its entries, unit columns where promised, the
    Gram matrix, and the closed-form maximum of a linear function (L-BFGS-B, one step)."""
    n, p, eps = 6000, 8, 1e-3
    rng = np.random.default_rng(3)
    x = rng.normal(0, 0.1, n).astype(np.float32)
    g = rng.normal(size=n).astype(np.float32)
    g_t, x_t = tf.constant(g, tf.float64), tf.constant(x)
    moments = {"normal_1_over_p": (0.0, 1 / p), "normal": (0.0, 1.0),
               "uniform": (0.5, 1 / 12)}
    matrices = {}
    for distribution in sharpness.SUBSPACE_DISTRIBUTIONS:
        space = sharpness.RandomSubspace(n, p, seed=4, distribution=distribution)
        assert space.distribution == distribution
        a = matrices[distribution] = _explicit(space)
        if distribution in moments:
            mean, var = moments[distribution]
            # n p = 48000 entries: the sample mean is within 4 standard errors of its mean.
            assert abs(a.mean() - mean) < 4 * np.sqrt(var / a.size)
            assert a.var() == pytest.approx(var, rel=0.03)
        else:
            np.testing.assert_allclose(np.linalg.norm(a, axis=0), 1.0, rtol=1e-6)
            assert a.min() >= 0
        np.testing.assert_allclose(space.gram.numpy(), a.T @ a, rtol=1e-5)

        def fun(y, space=space):
            w = tf.cast(x_t + space.matvec(y), tf.float64)
            return tf.reduce_sum(g_t * w), space.rmatvec(tf.cast(g_t, tf.float32))

        radius = eps * (np.abs(space.coordinates(x_t)) + 1)
        result = sharpness.maximize_lbfgsb(fun, radius, max_iter=1)
        gx = float(np.dot(g.astype(np.float64), x))
        expected = gx + np.sum(np.abs(a.T @ g) * radius)
        assert result.best_value == pytest.approx(expected, rel=1e-5)
    # Same seed, same uniform draws: unit columns are the uniform matrix's columns rescaled.
    uniform = matrices["uniform"]
    np.testing.assert_allclose(matrices["uniform_unit_columns"],
                               uniform / np.linalg.norm(uniform, axis=0), rtol=1e-5)
    np.testing.assert_allclose(matrices["normal_1_over_p"], matrices["normal"] / np.sqrt(p),
                               rtol=1e-6)
    with pytest.raises(sharpness.SharpnessError,
                       match="unknown subspace distribution 'cauchy': choose one of normal, "):
        sharpness.RandomSubspace(n, p, seed=0, distribution="cauchy")


def test_diagnostics_of_a_one_step_ascent_against_numpy():
    """One ascent step of 2 r goes to the corner r sign(A^T g): every diagnostic then has a
    closed form in the NumPy gradient at x."""
    model = ref.build_tiny_model(seed=4)
    x, y = ref.tiny_data(n=40, seed=5)
    params = ref.tiny_params(model)
    center = ref.flatten(params)
    f0, g0 = ref.loss_and_gradient(params, x, y)
    matrix = np.random.default_rng(6).normal(size=(center.size, 5))
    problem = sharpness.SharpnessProblem(model, x, y, eval_batch_size=16)
    for space, a in ((None, np.eye(center.size)), (problem.space(matrix=matrix), matrix)):
        [result] = problem.measure((0.01,), space=space, solver="ascent", max_iter=1)
        coordinates = np.linalg.lstsq(a, center, rcond=None)[0]
        radius = 0.01 * (np.abs(coordinates) + 1)
        corner = radius * np.sign(a.T @ g0)
        assert result.max_loss > result.loss  # The corner was the best point.
        assert result.gradient_norm == pytest.approx(np.linalg.norm(g0), rel=1e-4)
        assert result.radius_fraction == pytest.approx(1.0, rel=1e-6)
        assert result.face_fraction == 1.0
        assert result.perturbation_norm == pytest.approx(np.linalg.norm(a @ corner), rel=1e-5)
        assert result.first_order == pytest.approx(100 * g0 @ (a @ corner) / (1 + f0), rel=1e-4)
        assert result.loss_ratio == pytest.approx(result.max_loss / result.loss, rel=1e-12)
        assert result.subspace_distribution is None


# ------------------------------------------------------------------ the metric on a Keras model

def _numpy_metric(model, x, y, eps, solver, max_iter):
    """Metric 2.1 computed independently: NumPy forward/backward, scipy or NumPy ascent."""
    params = ref.tiny_params(model)
    center = ref.flatten(params)
    radius = eps * (np.abs(center) + 1)

    def f(delta):
        return ref.loss_and_gradient(ref.unflatten(center + delta, params), x, y)

    f0, g0 = f(np.zeros_like(center))
    if solver in ("lbfgsb", "lbfgsb_scaled"):
        seen = [f0]
        # lbfgsb_scaled: u = delta / radius in [-1, 1], objective over 1e-6 max |radius g0|.
        scaled = solver == "lbfgsb_scaled"
        unit = radius if scaled else np.ones_like(radius)
        divisor = 1e-6 * np.max(np.abs(radius * g0)) if scaled else 1.0

        def negated(u):
            value, grad = f(u * unit)
            seen.append(value)
            return -value / divisor, -grad * unit / divisor
        bound = np.ones_like(radius) if scaled else radius
        scipy.optimize.minimize(negated, np.zeros_like(center), jac=True, method="L-BFGS-B",
                                bounds=scipy.optimize.Bounds(-bound, bound),
                                options={"maxiter": max_iter, "ftol": 0, "gtol": 0})
        best = max(seen)
    else:
        delta, grad, best = np.zeros_like(center), g0, f0
        for _ in range(max_iter):
            delta = np.clip(delta + 2 * radius / max_iter * np.sign(grad), -radius, radius)
            value, grad = f(delta)
            best = max(best, value)
    return 100 * (best - f0) / (1 + f0), f0


def _all_variables(model):
    return [v.numpy().copy() for v in model.variables]


@pytest.mark.parametrize("solver", sharpness.SOLVERS)
def test_tiny_model_matches_independent_computation(solver):
    model = ref.build_tiny_model(seed=4)
    x, y = ref.tiny_data(n=40, seed=5)
    before = _all_variables(model)
    results = sharpness.sharpness(model, x, y, epsilons=(0.05, 0.01), solver=solver,
                                  max_iter=10, eval_batch_size=16)
    for result in results:
        expected, f0 = _numpy_metric(model, x, y, result.epsilon, solver, 10)
        assert result.loss == pytest.approx(f0, rel=1e-6)
        # float32 model vs float64 reference: they agree to ~3e-6 after 10 solver steps.
        assert result.value == pytest.approx(expected, rel=1e-4)
        assert result.value > 0.1
        assert result.max_loss >= result.loss
        assert result.value == pytest.approx(
            100 * (result.max_loss - result.loss) / (1 + result.loss), rel=1e-12)
        assert (result.solver, result.subspace, result.subspace_dim) == (solver, "full", None)
        assert result.num_weights == 47 and result.eval_examples == 40
        assert result.eval_batch_size == 16 and result.bn_mode == "moving"
        assert result.iterations >= 1 and result.function_evals >= 2 and result.seconds > 0
    assert results[0].value > results[1].value
    after = _all_variables(model)
    for a, b in zip(after, before, strict=True):
        np.testing.assert_array_equal(a, b)


class _PeakAtZero(keras.layers.Layer):
    """Logits [0, g(w)] with g(w) = sum(min(w, -w)) = -sum|w| and weights w = 0: the loss
    log(1 + e^g) of label 0 is largest at w = 0, while TensorFlow's gradient of the minimum at
    the tie (+1 per weight) points away from it, so the solvers do move."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(3,), initializer="zeros", name="w")

    def call(self, inputs):
        g = keras.ops.sum(keras.ops.minimum(self.w, -self.w))
        zeros = keras.ops.zeros_like(inputs[:, 0])
        return keras.ops.stack([zeros, zeros + g], axis=1)


@pytest.mark.parametrize("solver", sharpness.SOLVERS)
def test_box_maximum_at_the_centre_gives_exactly_zero(solver):
    model = keras.Sequential([keras.Input((2,)), _PeakAtZero()])
    features, labels = np.zeros((8, 2), np.float32), np.zeros(8, np.int64)
    [result] = sharpness.sharpness(model, features, labels, epsilons=(1e-2,), solver=solver,
                                   max_iter=5, eval_batch_size=8)
    assert result.loss == pytest.approx(np.log(2.0), rel=1e-6)  # log(1 + e^0)
    assert result.function_evals >= 2  # The solver evaluated points away from y = 0 ...
    assert result.max_loss == result.loss and result.value == 0.0  # ... all of them lower.
    np.testing.assert_array_equal(model.get_weights()[0], np.zeros(3, np.float32))


def test_identity_subspace_equals_full_space_and_seed_reproducibility():
    model = ref.build_tiny_model(seed=6)
    x, y = ref.tiny_data(n=30, seed=7)
    problem = sharpness.SharpnessProblem(model, x, y, eval_batch_size=8)
    full = problem.measure((0.02,), solver="lbfgsb")
    identity = problem.measure((0.02,), space=problem.space(matrix=np.eye(problem.num_weights)),
                               solver="lbfgsb")
    assert identity[0].subspace == "matrix" and identity[0].subspace_dim == 47
    assert identity[0].value == pytest.approx(full[0].value, rel=1e-6)
    first = sharpness.sharpness(model, x, y, epsilons=(0.02,), subspace_dim=5, seed=1,
                                eval_batch_size=8, eval_examples=20)
    again = sharpness.sharpness(model, x, y, epsilons=(0.02,), subspace_dim=5, seed=1,
                                eval_batch_size=8, eval_examples=20)
    other = sharpness.sharpness(model, x, y, epsilons=(0.02,), subspace_dim=5, seed=2,
                                eval_batch_size=8, eval_examples=20)
    untimed = [dataclasses.replace(r, seconds=0.0) for r in first + again]
    assert untimed[0] == untimed[1]
    assert first[0].value != other[0].value
    assert first[0].eval_examples == 20 and first[0].subspace == "random"
    assert first[0].value >= 0


def test_batch_statistics_bn_mode_recorded_and_moving_statistics_untouched():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((5,)), keras.layers.Dense(6),
        models.BatchStatisticsNormalization(synchronized=True), keras.layers.ReLU(),
        keras.layers.Dense(3)])
    x, y = ref.tiny_data(n=24, seed=8)
    before = _all_variables(model)
    results = sharpness.sharpness(model, x, y, epsilons=(0.05,), solver="ascent",
                                  eval_batch_size=8)
    assert results[0].bn_mode == "batch" and results[0].value > 0
    for a, b in zip(_all_variables(model), before, strict=True):
        np.testing.assert_array_equal(a, b)
    assert sharpness.detect_bn_mode(keras.Sequential([keras.Input((2,)),
                                                      keras.layers.Dense(2)])) == "none"


@needs_two_cpus
@pytest.mark.parametrize("solver,subspace_dim", [("lbfgsb", None), ("ascent", 4)])
def test_mirrored_equals_one_device(solver, subspace_dim):
    x, y = ref.tiny_data(n=23, seed=9)
    kwargs = dict(epsilons=(0.05,), solver=solver, subspace_dim=subspace_dim,
                  eval_batch_size=5, max_iter=5)
    single = sharpness.sharpness(ref.build_tiny_model(seed=3), x, y, **kwargs)
    strategy = tf.distribute.MirroredStrategy(CPUS[:2])
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        model = ref.build_tiny_model(seed=3)
    before = _all_variables(model)
    mirrored = sharpness.sharpness(model, x, y, strategy=strategy, **kwargs)
    assert mirrored[0].loss == pytest.approx(single[0].loss, rel=1e-6)
    assert mirrored[0].value == pytest.approx(single[0].value, rel=1e-4)
    assert mirrored[0].value > 0
    for a, b in zip(_all_variables(model), before, strict=True):
        np.testing.assert_array_equal(a, b)


# -------------------------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("kwargs,message", [
    (dict(epsilons=(0.0,)), "epsilon must be a finite number > 0"),
    (dict(epsilons=(-1e-3,)), "epsilon must be a finite number > 0"),
    (dict(epsilons=()), "no epsilon"),
    (dict(subspace_dim=0), "subspace_dim must be a positive integer"),
    (dict(subspace_dim=48), "between 1 and the number of trainable weights \\(47\\)"),
    (dict(solver="adam"), "unknown solver 'adam': choose one of lbfgsb, lbfgsb_scaled, ascent"),
    (dict(subspace_dim=3, subspace_distribution="cauchy"), "unknown subspace distribution"),
    (dict(max_iter=0), "max_iter must be a positive integer"),
    (dict(eval_examples=0), "eval_examples must be between 1"),
    (dict(eval_examples=11), "eval_examples must be between 1"),
    (dict(subspace_matrix=np.ones((47, 2))), "linearly independent"),
    (dict(subspace_matrix=np.eye(46)), "46 rows but the model has 47"),
])
def test_bad_arguments(kwargs, message):
    model = ref.build_tiny_model()
    x, y = ref.tiny_data(n=10)
    with pytest.raises(sharpness.SharpnessError, match=message):
        sharpness.sharpness(model, x, y, eval_batch_size=4, **kwargs)


def test_model_without_weights_and_empty_data():
    model = ref.build_tiny_model()
    x, y = ref.tiny_data(n=10)
    with pytest.raises(ValueError, match="evaluation data is empty"):
        sharpness.sharpness(model, x[:0], y[:0], eval_batch_size=4)
    model.trainable = False
    with pytest.raises(sharpness.SharpnessError, match="no trainable weights"):
        sharpness.sharpness(model, x, y, eval_batch_size=4)
    assert issubclass(evaluation.EvaluationError, ValueError)
