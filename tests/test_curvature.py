"""Hessian spectrum and adaptive sharpness against explicit Hessians and closed forms."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from lbgap_tf import sharpness  # noqa: E402
from lbgap_tf.measures import curvature  # noqa: E402
from tests import numpy_reference as ref  # noqa: E402

# tests/conftest.py splits the CPU into two logical devices for the whole session.
CPUS = [d.name for d in tf.config.list_logical_devices("CPU")]
needs_two_cpus = pytest.mark.skipif(len(CPUS) < 2, reason="needs 2 logical CPU devices")
INPUTS, CLASSES, N = 4, 3, 37


def _softmax_regression():
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((INPUTS,)), keras.layers.Dense(CLASSES)])
    rng = np.random.default_rng(5)
    x = rng.normal(size=(N, INPUTS)).astype(np.float32)
    y = rng.integers(0, CLASSES, N).astype(np.int32)
    return model, x, y


def _softmax_regression_hessian(model, x):
    """The closed-form Hessian of the mean cross-entropy of softmax regression, float64:
    (1/N) sum_i kron(xt_i xt_i^T, diag(p_i) - p_i p_i^T), xt_i = [x_i, 1] (kernel rows, then
    the bias, as the flat weight vector orders them)."""
    kernel, bias = (v.numpy().astype(np.float64) for v in model.trainable_variables)
    logits = x.astype(np.float64) @ kernel + bias
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    xt = np.hstack([x.astype(np.float64), np.ones((len(x), 1))])
    return sum(np.kron(np.outer(a, a), np.diag(q) - np.outer(q, q))
               for a, q in zip(xt, p, strict=True)) / len(x)


@pytest.fixture(scope="module")
def regression():
    model, x, y = _softmax_regression()
    problem = curvature.CurvatureProblem(model, x, y, eval_batch_size=16)
    return problem, _softmax_regression_hessian(model, x)


def test_hvps_match_the_closed_form_hessian_and_are_symmetric(regression):
    problem, hessian = regression
    n = problem.num_weights
    assert n == (INPUTS + 1) * CLASSES and set(problem.hvp_costs) == set(curvature.HVP_METHODS)
    assert problem.hvp_method in curvature.HVP_METHODS
    assert all(cost > 0 for cost in problem.hvp_costs.values())
    rng = np.random.default_rng(0)
    u, v = rng.normal(size=n), rng.normal(size=n)
    for method in curvature.HVP_METHODS:
        hv, hu = problem.hvp(v, method), problem.hvp(u, method)
        np.testing.assert_allclose(hv, hessian @ v, rtol=1e-5, atol=1e-6)
        assert u @ hv == pytest.approx(v @ hu, rel=1e-5)


def test_eigenvalues_trace_and_density_of_the_closed_form_hessian(regression):
    problem, hessian = regression
    exact = np.linalg.eigvalsh(hessian)
    config = curvature.CurvatureConfig(k=4, eigen_tol=1e-8, trace_tol=1e-9, trace_min_probes=5,
                                       trace_max_probes=60, lanczos_steps=problem.num_weights,
                                       density_probes=3)
    top = problem.measure("top_eigenvalues", config)
    assert top.converged and len(top.values) == 4
    np.testing.assert_allclose(top.values, exact[::-1][:4], rtol=1e-5)
    assert top.value == pytest.approx(exact[-1], rel=1e-5) and top.hvps > 0
    smallest = problem.measure("min_eigenvalue", config)
    # Softmax regression is invariant to adding one vector to every class: H has a null space.
    assert smallest.converged and smallest.value == pytest.approx(exact[0], abs=1e-6)
    trace = problem.measure("trace", config)
    assert not trace.converged and trace.hvps == 60  # The tolerance is out of reach.
    assert abs(trace.value - np.trace(hessian)) < 4 * trace.standard_error
    assert trace.standard_error > 0 and trace.pass_equivalents > 0
    density = problem.measure("density", config)
    assert sum(density.weights) == pytest.approx(1.0, rel=1e-9)
    # The first moment is Hutchinson's estimate over the same (first three) probes.
    first3 = problem.measure("trace", curvature.CurvatureConfig(
        trace_min_probes=3, trace_max_probes=3))
    assert density.value == pytest.approx(first3.value, rel=1e-5)
    nodes = np.array(density.values)
    assert nodes.min() >= exact[0] - 1e-5 and nodes.max() <= exact[-1] + 1e-5


def _explicit_hessian(model, x, y, batch_size):
    """The Hessian of the mean loss by tf jacobian of the gradient (one device, batch order
    and batch statistics as the evaluation's)."""
    variables = model.trainable_variables
    with tf.GradientTape(persistent=True) as outer:
        with tf.GradientTape() as inner:
            total = 0.0
            for start in range(0, len(y), batch_size):
                logits = model(x[start:start + batch_size], training=False)
                total += tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
                    labels=y[start:start + batch_size], logits=logits))
            loss = total / len(y)
        grad = tf.concat([tf.reshape(g, [-1]) for g in inner.gradient(loss, variables)], 0)
    blocks = outer.jacobian(grad, variables, experimental_use_pfor=False)
    return np.concatenate([tf.reshape(b, [grad.shape[0], -1]).numpy() for b in blocks], 1)


@needs_two_cpus
def test_mirrored_mlp_with_batch_statistics_bn_matches_its_explicit_hessian():
    """Two replicas, uneven last batch, BN with batch statistics, negative curvature."""
    x, y = ref.tiny_data(n=21, inputs=3)
    tiny = {"inputs": 3, "hidden": 3, "bn_mode": "batch"}
    hessian = _explicit_hessian(ref.build_tiny_model(**tiny), x, y, 8).astype(np.float64)
    hessian = (hessian + hessian.T) / 2
    exact = np.linalg.eigvalsh(hessian)
    assert exact[0] < -1e-3  # Random weights: not a minimum.
    strategy = tf.distribute.MirroredStrategy(CPUS[:2])
    with strategy.scope():
        model = ref.build_tiny_model(**tiny)
    before = [v.numpy().copy() for v in model.trainable_variables]
    problem = curvature.CurvatureProblem(model, x, y, eval_batch_size=8, strategy=strategy)
    assert problem.bn_mode == "batch"
    # TensorFlow's forward-mode derivative of the replicas' BN all-reduce is wrong; the
    # problem notices that the two products disagree and keeps double backprop.
    assert problem.hvp_method == "double_backprop" or not problem.hvp_note
    v = np.random.default_rng(1).normal(size=problem.num_weights)
    np.testing.assert_allclose(problem.hvp(v), hessian @ v, rtol=1e-4, atol=1e-5)
    config = curvature.CurvatureConfig(k=3, eigen_tol=1e-8)
    top = problem.measure("top_eigenvalues", config)
    np.testing.assert_allclose(top.values, exact[::-1][:3], rtol=1e-4)
    smallest = problem.measure("min_eigenvalue", config)
    assert smallest.value == pytest.approx(exact[0], rel=1e-4)
    assert "negative curvature" in smallest.message
    for variable, saved in zip(model.trainable_variables, before, strict=True):
        np.testing.assert_array_equal(variable.numpy(), saved)


# ----------------------------------------------------------------------- adaptive sharpness

def _linear(g, x):
    """f(x + delta) = g . (x + delta) and its gradient with respect to delta."""
    g_t, x_t = tf.constant(g), tf.constant(x)

    def fun(delta):
        return tf.reduce_sum(g_t * (x_t + delta)), g_t
    return fun


@pytest.mark.parametrize("steps", [1, 4])
def test_adaptive_sharpness_of_a_linear_loss_has_its_closed_form(steps):
    rng = np.random.default_rng(7)
    w, g = rng.normal(size=40), rng.normal(size=40)
    w[:2] = 0.0  # Zero weights do not move under either norm.
    rho, start = 0.01, g @ w
    box = sharpness.AscentSolver(_linear(g, w), max_iter=steps)(
        curvature.adaptive_radius(w, rho))
    assert box.best_value - start == pytest.approx(np.sum(np.abs(g) * rho * np.abs(w)),
                                                   rel=1e-12)
    ellipsoid = curvature.EllipsoidAscent(_linear(g, w), max_iter=steps)(np.abs(w), rho)
    assert ellipsoid.best_value - start == pytest.approx(rho * np.linalg.norm(g * np.abs(w)),
                                                         rel=1e-12)
    delta = ellipsoid.best_point
    assert np.all(delta[:2] == 0)
    assert np.linalg.norm(delta[2:] / np.abs(w[2:])) == pytest.approx(rho, rel=1e-12)


def _numpy_regression_loss(model, x, y, flat):
    kernel_size = INPUTS * CLASSES
    kernel = flat[:kernel_size].reshape(INPUTS, CLASSES)
    logits = x.astype(np.float64) @ kernel + flat[kernel_size:]
    logits -= logits.max(1, keepdims=True)
    return float(np.mean(np.log(np.exp(logits).sum(1)) - logits[np.arange(len(y)), y]))


def test_adaptive_sharpness_of_a_model_is_the_loss_at_its_first_step(regression):
    """One ascent step goes to the corner rho |w| sign(g) (box) or to rho |w| g_u / |g_u|
    (ellipsoid); the result is the loss there (computed in NumPy) minus the loss at x."""
    problem, _ = regression
    model, x, y = _softmax_regression()
    w = problem.weights
    loss = _numpy_regression_loss(model, x, y, w)
    assert problem.loss == pytest.approx(loss, rel=1e-6)
    g = problem.gradient
    config = curvature.CurvatureConfig(rho_linf=0.05, rho_l2=0.2, ascent_steps=1)
    box = problem.measure("adaptive_linf", config)
    corner = w + 0.05 * np.abs(w) * np.sign(g)
    assert box.value == pytest.approx(_numpy_regression_loss(model, x, y, corner) - loss,
                                      rel=1e-4)
    assert box.value > 0 and box.max_loss == pytest.approx(box.value + problem.loss)
    assert box.settings == {"rho": 0.05, "steps": 1} and box.gradient_evals == 1
    ellipsoid = problem.measure("adaptive_l2", config)
    g_u = np.abs(w) * g
    point = w + np.abs(w) * 0.2 * g_u / np.linalg.norm(g_u)
    assert ellipsoid.value == pytest.approx(_numpy_regression_loss(model, x, y, point) - loss,
                                            rel=1e-4)


@pytest.mark.parametrize("kwargs,message", [
    ({"rho_linf": 0.0}, "rho_linf must be a finite number > 0"),
    ({"rho_l2": -1.0}, "rho_l2 must be a finite number > 0"),
    ({"trace_max_probes": 0}, "trace_max_probes must be a positive integer"),
    ({"density_probes": 0}, "density_probes must be a positive integer"),
    ({"measures": ("top_eigenvalues", "hessian_norm")}, "unknown measure"),
    ({"measures": ()}, "no measure given"),
])
def test_bad_config(kwargs, message):
    with pytest.raises(curvature.CurvatureError, match=message):
        curvature.CurvatureConfig(**kwargs)


def test_k_must_be_below_the_number_of_weights(regression):
    problem, _ = regression
    config = curvature.CurvatureConfig(k=problem.num_weights)
    with pytest.raises(curvature.CurvatureError, match="k=15 eigenvalues asked for, but the "
                                                       "model has only 15 trainable weights"):
        problem.measure("top_eigenvalues", config)
