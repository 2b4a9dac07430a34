"""Paths between minimizers and filter-normalised directions, against closed forms (numpy
only, no TensorFlow)."""

import math

import numpy as np
import pytest

from lbgap_tf.measures import landscape

RNG = np.random.default_rng(0)
# model.weights order of a tiny Dense -> BN net: kernel, bias, gamma, beta, moving mean/var,
# and a Conv2D kernel [kh, kw, in, out].
SHAPES = [(5, 7), (7,), (7,), (7,), (7,), (7,), (3, 3, 2, 4)]
TRAINABLE = [True, True, True, True, False, False, True]


def _weights(scale=1.0):
    arrays = [(scale * RNG.standard_normal(shape)).astype(np.float32) for shape in SHAPES]
    arrays[5] = np.abs(arrays[5]) + 0.1  # A moving variance is positive.
    arrays[0][0, 0] = 1e-30  # Where cos(pi/2) * x_SB would not vanish next to x_LB.
    return arrays


def test_path_coefficients_are_exact_at_integers_and_follow_sin_cos_between():
    assert landscape.path_coefficients(0, "linear") == (0.0, 1.0)
    assert landscape.path_coefficients(1, "linear") == (1.0, 0.0)
    assert landscape.path_coefficients(-1, "linear") == (-1.0, 2.0)
    expected = {0: (0.0, 1.0), 1: (1.0, 0.0), 2: (0.0, -1.0), -1: (-1.0, 0.0)}
    for alpha, coefficients in expected.items():
        assert landscape.path_coefficients(alpha, "curvilinear") == coefficients
    c_lb, c_sb = landscape.path_coefficients(0.25, "curvilinear")
    assert c_lb == pytest.approx(math.sin(math.pi / 8)) and c_sb == pytest.approx(
        math.cos(math.pi / 8))
    with pytest.raises(landscape.LandscapeError, match="unknown path"):
        landscape.path_coefficients(0.5, "spline")


@pytest.mark.parametrize("path", landscape.PATHS)
def test_path_ends_are_the_minimizers_bit_for_bit(path):
    x_sb, x_lb = _weights(), _weights(3.0)
    for alpha, expected in ((0.0, x_sb), (1.0, x_lb)):
        point = landscape.path_point(x_sb, x_lb, TRAINABLE, alpha, path)
        for got, want in zip(point, expected, strict=True):
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, want)


def test_path_moves_trainable_weights_and_clips_statistics_to_the_segment():
    x_sb, x_lb = _weights(), _weights(3.0)
    for alpha in (-1.0, 0.5, 2.0):
        linear = landscape.path_point(x_sb, x_lb, TRAINABLE, alpha, "linear")
        curved = landscape.path_point(x_sb, x_lb, TRAINABLE, alpha, "curvilinear")
        t = min(max(alpha, 0.0), 1.0)
        for index, trainable in enumerate(TRAINABLE):
            sb, lb = x_sb[index].astype(np.float64), x_lb[index].astype(np.float64)
            if trainable:
                want_linear = alpha * lb + (1 - alpha) * sb
                want_curved = (math.sin(alpha * math.pi / 2) * lb
                               + math.cos(alpha * math.pi / 2) * sb)
            else:
                want_linear = want_curved = t * lb + (1 - t) * sb
            np.testing.assert_allclose(linear[index], want_linear, rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(curved[index], want_curved, rtol=1e-6, atol=1e-6)
        assert np.all(curved[5] > 0)  # The moving variance stays a variance.


def test_filter_normalised_direction_has_the_weights_filter_norms():
    weights = _weights(0.2)
    direction = landscape.filter_normalized_direction(weights, TRAINABLE, seed=3)
    for weight, d, trainable in zip(weights, direction, TRAINABLE, strict=True):
        assert d.shape == weight.shape
        if trainable and weight.ndim >= 2:
            flat_w = weight.astype(np.float64).reshape(-1, weight.shape[-1])
            flat_d = d.reshape(-1, weight.shape[-1])
            for j in range(weight.shape[-1]):  # Filter j = output unit j (last axis).
                assert np.linalg.norm(flat_d[:, j]) == pytest.approx(
                    np.linalg.norm(flat_w[:, j]), rel=1e-9)
            assert not np.allclose(d, weight)  # A random direction, not the weights.
        else:
            np.testing.assert_array_equal(d, 0.0)  # Bias, BN gamma/beta, moving statistics.
    kept = landscape.filter_normalized_direction(weights, TRAINABLE, seed=3, bias_bn="weights")
    np.testing.assert_array_equal(kept[1], weights[1].astype(np.float64))
    np.testing.assert_array_equal(kept[4], 0.0)  # Non-trainable: never perturbed.


def test_same_seed_slices_two_minimizers_along_the_same_raw_direction():
    x_sb, x_lb = _weights(), _weights(5.0)
    d_sb = landscape.filter_normalized_direction(x_sb, TRAINABLE, seed=1, index=0)
    d_lb = landscape.filter_normalized_direction(x_lb, TRAINABLE, seed=1, index=0)
    other = landscape.filter_normalized_direction(x_sb, TRAINABLE, seed=1, index=1)
    # Per filter, d / ||w_f|| is the unit raw direction, the same for both minimizers.
    for index in (0, 6):
        unit_sb = d_sb[index] / landscape.filter_norms(x_sb[index])
        unit_lb = d_lb[index] / landscape.filter_norms(x_lb[index])
        np.testing.assert_allclose(unit_sb, unit_lb, rtol=1e-9)
        assert not np.allclose(d_sb[index], other[index])


def test_displaced_adds_steps_along_directions():
    weights = _weights()
    d0 = landscape.filter_normalized_direction(weights, TRAINABLE, seed=0, index=0)
    d1 = landscape.filter_normalized_direction(weights, TRAINABLE, seed=0, index=1)
    point = landscape.displaced(weights, [d0, d1], [0.5, -0.25])
    for w, a, b, p in zip(weights, d0, d1, point, strict=True):
        np.testing.assert_allclose(p, w.astype(np.float64) + 0.5 * a - 0.25 * b, rtol=1e-6,
                                   atol=1e-7)
    for got, want in zip(landscape.displaced(weights, [d0], [0.0]), weights, strict=True):
        np.testing.assert_array_equal(got, want)


def test_grids_are_checked_and_the_paper_grid_holds_both_minimizers():
    alphas = landscape.grid(-1, 2, 25)
    assert len(alphas) == 25 and alphas[0] == -1.0 and alphas[-1] == 2.0
    assert 0.0 in alphas and 1.0 in alphas
    assert landscape.check_grid([-1, 0, 1], "alphas") == (-1.0, 0.0, 1.0)
    with pytest.raises(landscape.LandscapeError, match="strictly increasing"):
        landscape.check_grid([0, -1, 1], "alphas")
    with pytest.raises(landscape.LandscapeError, match="strictly increasing"):
        landscape.check_grid([0, 0.5, 0.5], "alphas")
    with pytest.raises(landscape.LandscapeError, match="is empty"):
        landscape.check_grid([], "alphas")
    assert landscape.check_grid([], "contour steps", allow_empty=True) == ()
    with pytest.raises(landscape.LandscapeError, match="same architecture"):
        landscape.path_point(_weights()[:2], _weights()[:3], TRAINABLE[:2], 0.5, "linear")
