"""Stochastic Lanczos quadrature (NumPy only) against explicit symmetric matrices."""

import math

import numpy as np
import pytest

from lbgap_tf.measures import slq


def _symmetric(n, seed, shift=0.0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, n))
    return (a + a.T) / 2 + shift * np.eye(n)


def test_full_lanczos_recovers_the_spectrum_and_the_rule_is_gaussian():
    matrix = _symmetric(30, 0)
    start = slq.rademacher(30, np.random.default_rng(1))
    tridiagonal = slq.lanczos(lambda v: matrix @ v, start, 30)
    nodes, weights = slq.gauss_quadrature(tridiagonal)
    np.testing.assert_allclose(nodes, np.linalg.eigvalsh(matrix), rtol=1e-9, atol=1e-9)
    assert weights.sum() == pytest.approx(1.0, rel=1e-12) and np.all(weights >= 0)
    # A rule of m nodes integrates polynomials of degree <= 2m - 1 exactly: q^T H^p q.
    q = start / np.linalg.norm(start)
    for steps in (2, 5):
        short = slq.gauss_quadrature(slq.lanczos(lambda v: matrix @ v, start, steps))
        for power in range(2 * steps):
            exact = q @ np.linalg.matrix_power(matrix, power) @ q
            assert slq.moment(*short, power) == pytest.approx(exact, rel=1e-9, abs=1e-9)


def test_lanczos_stops_on_an_invariant_subspace():
    """A matrix with 3 distinct eigenvalues: the Krylov space has dimension 3, the rule is
    exact after 3 steps and the iteration stops there."""
    rng = np.random.default_rng(2)
    basis, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    matrix = basis @ np.diag([1.0] * 4 + [-2.0] * 4 + [5.0] * 4) @ basis.T
    tridiagonal = slq.lanczos(lambda v: matrix @ v, slq.rademacher(12, rng), 10)
    assert tridiagonal.steps == 3
    np.testing.assert_allclose(slq.gauss_quadrature(tridiagonal)[0], [-2.0, 1.0, 5.0],
                               atol=1e-9)


def test_slq_density_integrates_to_one_and_its_moments_estimate_the_trace():
    n, probes = 40, 100
    matrix = _symmetric(n, 3, shift=1.0)
    rules = slq.slq(lambda v: matrix @ v, n, steps=8, probes=probes, seed=4)
    nodes, weights = slq.combine(rules)
    assert weights.sum() == pytest.approx(1.0, rel=1e-12)
    # The first moment is exactly the Hutchinson estimate with the same probes ...
    rng = np.random.default_rng(4)
    samples = [z @ matrix @ z for z in (slq.rademacher(n, rng) for _ in range(probes))]
    assert slq.moment(nodes, weights, 1) == pytest.approx(np.mean(samples) / n, rel=1e-10)
    # ... and both are within a few standard errors of tr(H) / n; so is the second moment.
    se = np.std(samples, ddof=1) / math.sqrt(probes) / n
    assert abs(slq.moment(nodes, weights, 1) - np.trace(matrix) / n) < 4 * se
    second = np.trace(matrix @ matrix) / n
    assert slq.moment(nodes, weights, 2) == pytest.approx(second, rel=0.1)
    sigma = 0.05
    grid = slq.density_grid(nodes, 2001, sigma)
    values = slq.density(nodes, weights, grid, sigma)
    assert np.all(values >= 0)
    assert np.trapezoid(values, grid) == pytest.approx(1.0, abs=1e-6)
    assert np.trapezoid(values * grid, grid) == pytest.approx(slq.moment(nodes, weights, 1),
                                                              abs=1e-6)


@pytest.mark.parametrize("call,message", [
    (lambda: slq.lanczos(lambda v: v, np.zeros(3), 2), "finite and non-zero"),
    (lambda: slq.lanczos(lambda v: v, np.ones(3), 0), "steps must be a positive integer"),
    (lambda: slq.slq(lambda v: v, 3, steps=2, probes=0, seed=0), "probes must be a positive"),
    (lambda: slq.density([1.0], [1.0, 2.0], [0.0], 0.1), "one length"),
    (lambda: slq.density([1.0], [1.0], [0.0], 0.0), "sigma must be"),
    (lambda: slq.combine([]), "at least one probe"),
])
def test_bad_input(call, message):
    with pytest.raises(slq.QuadratureError, match=message):
        call()
