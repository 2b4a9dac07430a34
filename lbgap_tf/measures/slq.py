"""Stochastic Lanczos quadrature (SLQ) of a symmetric operator's spectral density; NumPy only.

For a symmetric n x n matrix H, given only as products v -> H v, the spectral density
phi(t) = (1/n) sum_i delta(t - lambda_i) is estimated as in Ghorbani, Krishnan and Xiao
(ICML 2019) and Lin, Saad and Yang (SIAM Review 2016):

1. ``lanczos``: from a unit start vector q_1 = v / |v|, m steps of Lanczos with full
   reorthogonalisation give the m x m tridiagonal T_m = Q_m^T H Q_m (diagonal ``alpha``,
   off-diagonal ``beta``).
2. ``gauss_quadrature``: the eigenvalues tau_j of T_m (Ritz values) are the nodes and the
   squared first components of its eigenvectors the weights w_j (they sum to 1). The rule is
   exact for polynomials p of degree <= 2m - 1: sum_j w_j p(tau_j) = q_1^T p(H) q_1.
3. Over Rademacher probes v (entries +-1, so |v|^2 = n) the mean of q_1^T p(H) q_1 is
   (1/n) tr p(H): averaging the probes' rules, each weighted 1/probes, estimates phi as a sum
   of point masses whose first moment is exactly the Hutchinson estimate of tr(H) / n.
4. ``density``: each point mass is smoothed by a Gaussian of width sigma, so the estimate is
   a density on a grid that integrates to 1.

Nothing here runs TensorFlow: the products come from a callable, so the quadrature is tested
on explicit matrices and runs unchanged on a network's Hessian-vector products.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np

MatVec = Callable[[np.ndarray], np.ndarray]


class QuadratureError(ValueError):
    """Bad input to the quadrature (no steps, a zero start vector, mismatched nodes...)."""


@dataclasses.dataclass(frozen=True)
class Tridiagonal:
    """The Lanczos tridiagonal T_m: ``alpha`` [m] diagonal, ``beta`` [m - 1] off-diagonal.

    m is smaller than the steps asked for when the Krylov space was exhausted (an invariant
    subspace was found: beta fell below the breakdown tolerance), after which the rule is
    exact for every polynomial.
    """

    alpha: np.ndarray
    beta: np.ndarray

    @property
    def steps(self) -> int:
        return int(self.alpha.size)


def rademacher(n: int, rng: np.random.Generator) -> np.ndarray:
    """A float64 vector of n independent +-1 entries."""
    return rng.integers(0, 2, size=n).astype(np.float64) * 2.0 - 1.0


def lanczos(matvec: MatVec, start: np.ndarray, steps: int, *,
            breakdown: float = 1e-10) -> Tridiagonal:
    """``steps`` Lanczos steps on the operator ``matvec`` from ``start``, fully reorthogonalised.

    Every new vector is orthogonalised twice against all previous ones (classical Gram-Schmidt,
    repeated), which keeps the Ritz values free of the spurious copies plain Lanczos produces
    in floating point. Memory: ``steps`` vectors of n float64 values. The iteration stops
    early when beta_j <= breakdown * max(1, |T|) (an invariant subspace).
    """
    start = np.asarray(start, dtype=np.float64)
    if start.ndim != 1 or start.size == 0:
        raise QuadratureError(f"the start vector must be a non-empty vector, got {start.shape}")
    norm = float(np.linalg.norm(start))
    if not math.isfinite(norm) or norm == 0.0:
        raise QuadratureError("the start vector must be finite and non-zero")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise QuadratureError(f"steps must be a positive integer, got {steps!r}")
    n = start.size
    steps = min(int(steps), n)
    basis = np.zeros((steps, n))
    basis[0] = start / norm
    alpha, beta = [], []
    scale = 0.0
    for j in range(steps):
        w = np.asarray(matvec(basis[j]), dtype=np.float64).reshape(n)
        alpha.append(float(basis[j] @ w))
        for _ in range(2):  # Full reorthogonalisation, twice is enough (Parlett's rule).
            w -= basis[:j + 1].T @ (basis[:j + 1] @ w)
        scale = max(scale, abs(alpha[-1]), *(abs(b) for b in beta[-1:]))
        if j + 1 == steps:
            break
        b = float(np.linalg.norm(w))
        if b <= breakdown * max(1.0, scale):
            break
        beta.append(b)
        basis[j + 1] = w / b
    return Tridiagonal(np.array(alpha), np.array(beta))


def gauss_quadrature(tridiagonal: Tridiagonal) -> tuple[np.ndarray, np.ndarray]:
    """(nodes, weights) of the Gauss rule of T_m: its eigenvalues, ascending, and the squared
    first components of its unit eigenvectors (non-negative, summing to 1)."""
    m = tridiagonal.steps
    matrix = np.diag(tridiagonal.alpha)
    if m > 1:
        matrix += np.diag(tridiagonal.beta, 1) + np.diag(tridiagonal.beta, -1)
    nodes, vectors = np.linalg.eigh(matrix)
    weights = vectors[0] ** 2
    return nodes, weights / weights.sum()


def slq(matvec: MatVec, n: int, *, steps: int, probes: int, seed: int
        ) -> list[tuple[np.ndarray, np.ndarray]]:
    """The Gauss rules (nodes, weights) of ``probes`` Rademacher probes drawn with ``seed``,
    one per probe, each from ``steps`` Lanczos steps (`combine` averages them)."""
    if isinstance(probes, bool) or not isinstance(probes, (int, np.integer)) or probes < 1:
        raise QuadratureError(f"probes must be a positive integer, got {probes!r}")
    rng = np.random.default_rng(seed)
    return [gauss_quadrature(lanczos(matvec, rademacher(n, rng), steps))
            for _ in range(probes)]


def combine(rules: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """The SLQ estimate of the density from per-probe rules: their nodes concatenated, each
    weight divided by the number of probes, so the weights sum to 1 and sum(weights * nodes)
    is the Hutchinson estimate of tr(H) / n over the probes."""
    if not rules:
        raise QuadratureError("no quadrature rule to combine: use at least one probe")
    nodes = np.concatenate([np.asarray(r[0], np.float64) for r in rules])
    weights = np.concatenate([np.asarray(r[1], np.float64) / len(rules) for r in rules])
    return nodes, weights


def moment(nodes: Sequence[float], weights: Sequence[float], power: int) -> float:
    """sum_j weights_j nodes_j^power: the estimate of tr(H^power) / n."""
    nodes, weights = np.asarray(nodes, np.float64), np.asarray(weights, np.float64)
    return float(np.sum(weights * nodes ** power))


def density(nodes: Sequence[float], weights: Sequence[float], grid: Sequence[float],
            sigma: float) -> np.ndarray:
    """The point masses (nodes, weights) smoothed by Gaussians of width ``sigma``, on ``grid``.

    Integrates to sum(weights) (1 for an SLQ estimate) over the real line; on a grid that
    extends a few sigma beyond the extreme nodes the trapezoid sum is that to within rounding.
    """
    nodes, weights = np.asarray(nodes, np.float64), np.asarray(weights, np.float64)
    grid = np.asarray(grid, np.float64)
    if nodes.shape != weights.shape or nodes.ndim != 1 or nodes.size == 0:
        raise QuadratureError(
            f"nodes and weights must be vectors of one length, got {nodes.shape} and "
            f"{weights.shape}")
    if not math.isfinite(sigma) or sigma <= 0:
        raise QuadratureError(f"sigma must be a finite number > 0, got {sigma!r}")
    z = (grid[:, None] - nodes[None, :]) / sigma
    return (np.exp(-0.5 * z * z) @ weights) / (sigma * math.sqrt(2.0 * math.pi))


def density_grid(nodes: Sequence[float], points: int, sigma: float) -> np.ndarray:
    """``points`` evenly spaced values from min(nodes) - 5 sigma to max(nodes) + 5 sigma."""
    nodes = np.asarray(nodes, np.float64)
    if points < 2:
        raise QuadratureError(f"a density grid needs at least 2 points, got {points}")
    return np.linspace(nodes.min() - 5.0 * sigma, nodes.max() + 5.0 * sigma, int(points))
