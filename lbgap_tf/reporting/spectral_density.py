"""The Hessian spectral density of SB and LB minimizers: a CSV derived from ``curvature.csv``
and a PNG drawn from that CSV alone.

A ``density`` row of ``curvature.csv`` keeps the stochastic Lanczos quadrature itself (its
nodes and weights, ``measures.slq``). ``density_rows`` smooths each one with Gaussians of
width sigma = ``SIGMA_FRACTION`` of the spread of its nodes, on ``POINTS`` grid values from
5 sigma below the smallest node to 5 sigma above the largest, giving one row per grid value
(the density integrates to 1 over the grid). ``write_csv`` replaces ``spectral_density.csv``
atomically (it is derived, never appended to), and ``plot`` overlays the runs' densities on a
log scale, SB in blue and LB in red. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from lbgap_tf.measures import slq
from lbgap_tf.reporting import plots

SIGMA_FRACTION = 0.01
POINTS = 400
DENSITY_COLUMNS = ("run_id", "model", "dataset", "regime", "global_batch_size", "seed",
                   "settings", "eval_examples", "eval_batch_size", "bn_mode", "num_weights",
                   "sigma", "eigenvalue", "density")
Row = Mapping[str, str]


def density_rows(curvature_rows: Iterable[Row], *, sigma_fraction: float = SIGMA_FRACTION,
                 points: int = POINTS) -> list[dict]:
    """The smoothed density of every ``density`` row of ``curvature_rows``, in their order."""
    out = []
    for row in curvature_rows:
        if row["measure"] != "density":
            continue
        nodes = np.array(json.loads(row["values"]), np.float64)
        weights = np.array(json.loads(row["weights"]), np.float64)
        spread = float(nodes.max() - nodes.min())
        sigma = sigma_fraction * (spread if spread > 0 else max(abs(float(nodes[0])), 1.0))
        grid = slq.density_grid(nodes, points, sigma)
        values = slq.density(nodes, weights, grid, sigma)
        common = {column: row[column] for column in DENSITY_COLUMNS[:11]}
        out.extend(dict(common, sigma=sigma, eigenvalue=float(t), density=float(d))
                   for t, d in zip(grid, values, strict=True))
    return out


def write_csv(rows: Sequence[Mapping[str, object]], path: str) -> str:
    """Writes ``rows`` (``DENSITY_COLUMNS``) to ``path`` through a temporary file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=directory, suffix=".csv", delete=False,
                                     newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=DENSITY_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    os.chmod(handle.name, 0o644)
    os.replace(handle.name, path)
    return path


def plot(rows: Iterable[Row], path: str) -> str:
    """The densities of ``rows`` (as ``results.read_rows`` gives ``spectral_density.csv``)
    overlaid, one line per run and setting, on a log density axis; writes the PNG."""
    curves: dict[tuple, list[Row]] = {}
    for row in rows:
        curves.setdefault((row["run_id"], row["settings"], row["eval_examples"],
                           row["eval_batch_size"]), []).append(row)
    if not curves:
        raise plots.PlotError("no spectral density rows: measure 'density' with "
                              "benchmarks.curvature first")
    figure, axis = plots.plt.subplots(figsize=(7, 4.5))
    peak = 0.0
    for (run_id, settings, *_), curve in curves.items():
        first = curve[0]
        x = [float(r["eigenvalue"]) for r in curve]
        y = np.array([float(r["density"]) for r in curve])
        peak = max(peak, float(y.max()))
        color = plots.LB_COLOR if first["regime"] == "LB" else plots.SB_COLOR
        steps = json.loads(settings)
        axis.plot(x, y, color=color, linewidth=1.2,
                  label=f"{first['regime']} batch {first['global_batch_size']} "
                        f"({steps['steps']} Lanczos steps x {steps['probes']} probes; "
                        f"{run_id[-12:]})")
    axis.set_yscale("log")
    axis.set_ylim(peak * 1e-7, peak * 2)
    axis.set_xlabel("Hessian eigenvalue")
    axis.set_ylabel("spectral density (Gaussian-smoothed SLQ)")
    first = next(iter(curves.values()))[0]
    axis.set_title(f"{first['model']} on {first['dataset']}: Hessian spectrum of the training "
                   f"loss\n({first['eval_examples']} examples, {plots.bn_text(first)})",
                   fontsize=10)
    axis.legend(fontsize=8)
    return plots.save(figure, path)
