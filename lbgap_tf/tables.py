"""Paper-shaped tables (Tables 2-4) derived from run rows, never edited by hand.

Inputs are the rows of ``runs.csv`` (one per trained run), ``pairs.csv`` (one per SB/LB pair
of a trial) and ``sharpness.csv`` (one per sharpness measurement) as read by
``results.read_rows``. Every table cell is a mean and a sample standard deviation over trials
(``results.mean_std``) in separate numeric columns, plus a formatted "mean ± std" column, so a
table loads in pandas without parsing.

A row recorded twice (two processes that measured the same thing, a CSV joined from copies)
counts once: pairs are unique by ``PAIR_KEY``, sharpness rows by their measurement key
(``sharpness_rows.row_key``), the first row of a key being kept. The regression gate
(``lbgap_tf.gate``) reads rows through the same functions, so tables and gate see the same
trials.

Table 2 rows are networks (with their data set); its columns are train/test accuracy in percent
for SB and LB, the SB - LB test-accuracy gap and the distance ratio
||x_SB - x0|| / ||x_LB - x0||. Tables 3 (full space) and 4 (random subspace) have one row per
network, distribution of A (random subspace) and solver; columns are the sharpness of SB and LB
at each epsilon, and the LB/SB ratio, each beside the best lower bound over the solvers run.
"""

from __future__ import annotations

import collections
import csv
import io
import math
import os
import tempfile
from collections.abc import Callable, Hashable, Iterable, Sequence

from lbgap_tf import results, sharpness_rows

REGIMES = ("SB", "LB")
# What identifies a pair row (pairs.csv): the experiment's settings and its two runs.
PAIR_KEY = ("gap_id", "sb_run_id", "lb_run_id")


def unique_rows(rows: Iterable[dict], key: Callable[[dict], Hashable]) -> list[dict]:
    """``rows`` without repeats: the first row of each ``key(row)``, in their order."""
    seen, unique = set(), []
    for row in rows:
        identity = key(row)
        if identity not in seen:
            seen.add(identity)
            unique.append(row)
    return unique


def unique_pairs(pair_rows: Iterable[dict]) -> list[dict]:
    """The pair rows, one per ``PAIR_KEY``."""
    return unique_rows(pair_rows, lambda row: tuple(row[column] for column in PAIR_KEY))


def unique_measurements(rows: Iterable[dict]) -> list[dict]:
    """The sharpness rows, one per measurement key (``sharpness_rows.row_key``)."""
    return unique_rows(rows, sharpness_rows.row_key)


def _digits(mean: float) -> int:
    """Two decimals, or more for values below 1 so that small sharpness values stay readable
    (0.0113 -> 4 decimals: "0.0113")."""
    if mean == 0 or abs(mean) >= 1 or not math.isfinite(mean):
        return 2
    return min(8, 2 - math.floor(math.log10(abs(mean))))


def _cells(prefix: str, values: Sequence[float], digits: int | None = None) -> dict:
    """``prefix_mean``, ``prefix_std`` and the formatted ``prefix`` cell; ``digits`` None
    adapts the decimals to the mean's magnitude."""
    if not values:
        return {f"{prefix}_mean": None, f"{prefix}_std": None, prefix: ""}
    mean, std = results.mean_std(values)
    return {f"{prefix}_mean": mean, f"{prefix}_std": std,
            prefix: results.format_mean_std(mean, std, _digits(mean) if digits is None
                                            else digits)}


def _network_key(row: dict) -> tuple[str, str]:
    return row["model"], row["dataset"]


def table2(run_rows: Iterable[dict], pair_rows: Iterable[dict]) -> list[dict]:
    """Accuracy (%) of SB and LB per network, mean ± std over the trials.

    Columns: model, dataset, trials, ``{train,test}_{SB,LB}`` (each with ``_mean``/``_std``),
    ``test_gap`` (SB - LB test accuracy in percentage points, paired per trial: positive
    means SB generalises better, as in the paper) and ``distance_ratio``.
    """
    runs = {row["run_id"]: row for row in run_rows}
    pairs = collections.defaultdict(list)
    for pair in unique_pairs(pair_rows):
        pairs[_network_key(pair)].append(pair)
    table = []
    for (model, dataset), trials in sorted(pairs.items()):
        row = {"model": model, "dataset": dataset, "trials": len(trials)}
        for split in ("train", "test"):
            for regime in REGIMES:
                values = [100 * float(runs[pair[f"{regime.lower()}_run_id"]][f"{split}_accuracy"])
                          for pair in trials]
                row.update(_cells(f"{split}_{regime}", values, 2))
        row.update(_cells("test_gap", [float(pair["test_gap_pp"]) for pair in trials], 2))
        row.update(_cells("distance_ratio", [float(pair["distance_ratio"]) for pair in trials],
                          2))
        table.append(row)
    return table


def distribution_of(row: dict) -> str:
    """The distribution of A of a sharpness row ("" for the full space)."""
    return row.get("subspace_distribution") or ""


def sharpness_table(sharpness_rows: Iterable[dict], *, subspace: str) -> list[dict]:
    """Sharpness of SB and LB per network, distribution of A and solver in one kind of space.

    ``subspace`` is "full" (Table 3) or "random" (Table 4). Columns: model, dataset,
    subspace_distribution ("" for the full space), solver, subspace_dim, trials, then for each
    epsilon ``eps{eps:g}_{SB,LB}`` (mean/std/formatted) and ``eps{eps:g}_ratio``: LB/SB, the
    ratio of trial means (blank when SB's mean is 0). Every solver's value is a lower bound of
    the maximum that Metric 2.1 defines, so ``eps{eps:g}_{SB,LB}_best`` and
    ``eps{eps:g}_best_ratio`` give the best lower bound: per run the largest value over the
    solvers run on it, then mean/std over trials (the same in every solver row of a group).
    """
    groups = collections.defaultdict(lambda: collections.defaultdict(list))
    # (model, dataset, distribution, dim) -> {(eps, regime, run_id): best value over solvers}
    best = collections.defaultdict(dict)
    for row in unique_measurements(sharpness_rows):
        if row["subspace"] != subspace:
            continue
        space = (row["model"], row["dataset"], distribution_of(row), row["subspace_dim"])
        value, cell = float(row["sharpness"]), (float(row["epsilon"]), row["regime"])
        groups[(*space, row["solver"])][cell].append(value)
        per_run = (*cell, row["run_id"])
        best[space][per_run] = max(value, best[space].get(per_run, -math.inf))
    table = []
    for (model, dataset, distribution, dim, solver), cells in sorted(groups.items()):
        epsilons = sorted({eps for eps, _ in cells}, reverse=True)
        trials = max(len(values) for values in cells.values())
        row = {"model": model, "dataset": dataset, "subspace_distribution": distribution,
               "solver": solver, "subspace_dim": dim, "trials": trials}
        bests = best[(model, dataset, distribution, dim)]
        for eps in epsilons:
            for regime in REGIMES:
                row.update(_cells(f"eps{eps:g}_{regime}", cells.get((eps, regime), [])))
            row[f"eps{eps:g}_ratio"] = _ratio(row, f"eps{eps:g}")
            for regime in REGIMES:
                row.update(_cells(f"eps{eps:g}_{regime}_best",
                                  [value for (e, r, _), value in sorted(bests.items())
                                   if e == eps and r == regime]))
            row[f"eps{eps:g}_best_ratio"] = _ratio(row, f"eps{eps:g}", "_best")
        table.append(row)
    return table


def _ratio(row: dict, prefix: str, suffix: str = "") -> float | None:
    """LB/SB of the trial means in ``row``; None when SB's mean is 0 or a mean is missing."""
    sb, lb = row[f"{prefix}_SB{suffix}_mean"], row[f"{prefix}_LB{suffix}_mean"]
    return lb / sb if sb and lb is not None else None


def write_table(path: str | os.PathLike, rows: Sequence[dict]) -> None:
    """Writes ``rows`` as a CSV table, replacing ``path`` atomically (temp file + rename).

    A derived table is rebuilt from the run rows on every run, so replacing it loses nothing.
    The columns are the union of the rows' keys in first-seen order.
    """
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if value is None else value for key, value in row.items()})
    write_text_atomic(path, buffer.getvalue())


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Replaces ``path`` with ``text`` atomically: a crash leaves the old file or the new one."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=directory, suffix=".tmp", delete=False,
                                     encoding="utf-8", newline="") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.chmod(out.name, 0o644)
    os.replace(out.name, path)
