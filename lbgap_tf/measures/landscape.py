"""Points in weight space for loss-landscape figures: SB-LB paths and filter-normalised slices.

Weights are lists of numpy arrays in ``model.weights`` order (the order of ``get_weights()``
and of an ``x0.npz``), with a parallel list of trainable flags; nothing here runs TensorFlow.

Paths between two minimizers (Keskar et al. 2017, Fig. 3 and appendix Fig. 7), for alpha in
e.g. 25 points of [-1, 2]:

- ``"linear"``: x(alpha) = alpha x_LB + (1 - alpha) x_SB;
- ``"curvilinear"``: x(alpha) = sin(alpha pi / 2) x_LB + cos(alpha pi / 2) x_SB.

Both give x_SB at alpha = 0 and x_LB at alpha = 1 exactly (the curvilinear coefficients are
exact at integer alphas, where float sin/cos are not: cos(pi / 2) is 6e-17, not 0). The path
applies to the trainable weights. Non-trainable weights (BN moving statistics, read only by
moving-average BN) take the convex combination (1 - t) s_SB + t s_LB with t = alpha clipped to
[0, 1]: exact at both ends, and a variance never turns negative (the curvilinear path at
alpha = -1 is -x_LB, which no variance can be). Batch-statistics BN ignores them.

Random directions follow the loss-landscape convention of Li et al. (2018), "Visualizing the
loss landscape of neural nets" (their ``--dir_type weights --xnorm filter --xignore biasbn``):
a Gaussian direction d over the trainable weights, each filter of d rescaled to the norm of the
same filter of the weights, ||d_f|| = ||w_f||; biases and BN gamma/beta (1-D weights) get a zero
direction, and BN moving statistics are not perturbed. A filter is one output unit: Keras
stores kernels as [..., inputs, outputs] (Dense [in, out], Conv2D [kh, kw, in, out]), so
filter j is ``kernel[..., j]`` (PyTorch's ``weight[j]``). Filter normalisation removes the
scale invariance of ReLU+BN networks, so slices of two minimizers with different weight
norms are comparable. The slice at step t (and the contour at (t, u)) is x + t d (+ u e).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

PATHS = ("linear", "curvilinear")
BIAS_BN_CHOICES = ("zero", "weights")
_FILTER_EPS = 1e-10  # Li et al.'s guard against a zero direction filter.


class LandscapeError(ValueError):
    """Bad input to a path or direction (unknown path, mismatched weights, ...)."""


def path_coefficients(alpha: float, path: str) -> tuple[float, float]:
    """(c_LB, c_SB) with x(alpha) = c_LB x_LB + c_SB x_SB on ``path`` (``PATHS``).

    Exact at integer alphas for the curvilinear path (sin and cos of multiples of pi / 2).
    """
    alpha = float(alpha)
    if path == "linear":
        return alpha, 1.0 - alpha
    if path == "curvilinear":
        if alpha.is_integer():
            quarter = int(alpha) % 4
            return ((0.0, 1.0), (1.0, 0.0), (0.0, -1.0), (-1.0, 0.0))[quarter]
        angle = alpha * math.pi / 2
        return math.sin(angle), math.cos(angle)
    raise LandscapeError(f"unknown path {path!r}: choose one of {', '.join(PATHS)}")


def _check_same_layout(first: Sequence[np.ndarray], second: Sequence[np.ndarray],
                       trainable: Sequence[bool]) -> None:
    if not len(first) == len(second) == len(trainable):
        raise LandscapeError(
            f"weight lists differ in length ({len(first)}, {len(second)}, {len(trainable)} "
            "trainable flags): pass the weights of two models of the same architecture")
    for index, (a, b) in enumerate(zip(first, second, strict=True)):
        if np.shape(a) != np.shape(b):
            raise LandscapeError(
                f"weight {index} has shapes {np.shape(a)} and {np.shape(b)}: pass the weights "
                "of two models of the same architecture")


def path_point(x_sb: Sequence[np.ndarray], x_lb: Sequence[np.ndarray],
               trainable: Sequence[bool], alpha: float, path: str) -> list[np.ndarray]:
    """The weights at ``alpha`` on ``path`` from x_SB (alpha 0) to x_LB (alpha 1).

    Trainable arrays follow the path, non-trainable ones the clipped convex combination (see
    the module docstring). Computed in float64, returned in each array's own dtype.
    """
    _check_same_layout(x_sb, x_lb, trainable)
    c_lb, c_sb = path_coefficients(alpha, path)
    t = min(max(float(alpha), 0.0), 1.0)
    point = []
    for sb, lb, is_trainable in zip(x_sb, x_lb, trainable, strict=True):
        sb64, lb64 = np.asarray(sb, np.float64), np.asarray(lb, np.float64)
        value = c_lb * lb64 + c_sb * sb64 if is_trainable else t * lb64 + (1.0 - t) * sb64
        point.append(value.astype(np.asarray(sb).dtype))
    return point


def filter_norms(array: np.ndarray) -> np.ndarray:
    """The Euclidean norm of each filter (last axis) of a kernel: float64 [filters]."""
    array = np.asarray(array, np.float64)
    if array.ndim < 2:
        raise LandscapeError(f"filters are defined for kernels of rank >= 2, got {array.shape}")
    return np.sqrt(np.sum(array.reshape(-1, array.shape[-1]) ** 2, axis=0))


def filter_normalized_direction(weights: Sequence[np.ndarray], trainable: Sequence[bool], *,
                                seed: int, index: int = 0, bias_bn: str = "zero"
                                ) -> list[np.ndarray]:
    """A random direction (float64 arrays shaped like ``weights``), filter-normalised.

    Entries are N(0, 1) from ``numpy.random.default_rng([seed, index])`` (the same draw for
    any weights of the same shapes, so the SB and LB minimizers are sliced along the same raw
    direction); each filter of a kernel (rank >= 2) is then rescaled to the norm of that
    filter of ``weights``. ``bias_bn`` sets the 1-D trainable weights (biases, BN gamma and
    beta): ``"zero"`` (not perturbed, Li et al.'s ``--xignore biasbn``) or ``"weights"`` (the
    direction equals the weights, their default). Non-trainable weights get zeros.
    """
    if bias_bn not in BIAS_BN_CHOICES:
        raise LandscapeError(
            f"unknown bias_bn {bias_bn!r}: choose one of {', '.join(BIAS_BN_CHOICES)}")
    if len(weights) != len(trainable):
        raise LandscapeError(
            f"{len(weights)} weights but {len(trainable)} trainable flags: pass one per weight")
    rng = np.random.default_rng([int(seed), int(index)])
    direction = []
    for weight, is_trainable in zip(weights, trainable, strict=True):
        weight = np.asarray(weight, np.float64)
        raw = rng.standard_normal(weight.shape)  # Drawn for every weight: a fixed stream.
        if not is_trainable:
            direction.append(np.zeros_like(weight))
        elif weight.ndim <= 1:
            direction.append(np.zeros_like(weight) if bias_bn == "zero" else weight.copy())
        else:
            scale = filter_norms(weight) / (filter_norms(raw) + _FILTER_EPS)
            direction.append(raw * scale)  # Broadcasts over the last (filter) axis.
    return direction


def displaced(weights: Sequence[np.ndarray], directions: Sequence[Sequence[np.ndarray]],
              steps: Sequence[float]) -> list[np.ndarray]:
    """weights + sum_k steps[k] directions[k], computed in float64, in each array's dtype."""
    if len(directions) != len(steps):
        raise LandscapeError(f"{len(directions)} directions but {len(steps)} steps")
    point = []
    for index, weight in enumerate(weights):
        value = np.asarray(weight, np.float64)
        for direction, step in zip(directions, steps, strict=True):
            if step:
                value = value + float(step) * direction[index]
        point.append(value.astype(np.asarray(weight).dtype))
    return point


def check_grid(values: Sequence[float], name: str, *, allow_empty: bool = False
               ) -> tuple[float, ...]:
    """``values`` as a tuple of finite floats in strictly increasing order.

    Raises:
      LandscapeError: empty (unless ``allow_empty``), non-finite, repeated or out of order.
    """
    values = tuple(float(v) for v in values)
    if not values and not allow_empty:
        raise LandscapeError(f"{name} is empty: give at least one value, e.g. -1,0,1")
    if not all(math.isfinite(v) for v in values):
        raise LandscapeError(f"{name} must be finite numbers, got {values}")
    if any(b <= a for a, b in zip(values[:-1], values[1:], strict=True)):
        raise LandscapeError(
            f"{name} must be strictly increasing, got {', '.join(f'{v:g}' for v in values)}: "
            "list each value once, smallest first")
    return values


def grid(start: float, stop: float, count: int) -> tuple[float, ...]:
    """``count`` evenly spaced values from ``start`` to ``stop`` (both included), exact at the
    ends: the paper's 25 alphas in [-1, 2] are ``grid(-1, 2, 25)`` (0 and 1 included)."""
    if count < 1:
        raise LandscapeError(f"a grid needs at least one point, got {count}")
    return tuple(float(v) for v in np.linspace(start, stop, count))
