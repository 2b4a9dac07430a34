"""Which measure predicts the gap? Every measure of every run in a result folder, ranked
against the runs' test error by Kendall's tau.

The runs are the completed rows of ``runs.csv`` (diverged ones dropped: they have no
minimizer); the measures are the rows of ``sharpness.csv`` (Metric 2.1 per space, subspace
distribution, epsilon, solver and budget) and of ``curvature.csv`` (top and smallest Hessian
eigenvalue, Hutchinson trace, the SLQ trace estimate, adaptive sharpness). A measure is its
settings WITHOUT its random seeds: the random subspace, the evaluation subset and the probes
of each trial are draws of the same measure, so trial 0's and trial 1's values land in one
column; a run measured twice with different seeds gets the mean of its values (``n_values``
says how many).

Runs are compared within one population, a (network, data set) group: SB and LB runs, trials
and any batch sizes present. For every measure and target the correlation is
``scipy.stats.kendalltau`` (tau-b, which handles ties) over the runs that have the measure,
with its two-sided p-value (exact for small samples without ties). Targets: the test error
(1 - test accuracy, the question of the paper) and the generalization gap (train accuracy -
test accuracy, the target of Jiang et al., ICLR 2020). A measure PREDICTS a target when
tau > 0 at p < alpha (sharper runs generalize worse), is INVERSE when tau < 0 at p < alpha,
and otherwise shows no evidence; with fewer than ``MIN_RUNS`` runs, or a constant measure or
target, tau is undefined and the verdict says so. The summary says plainly when no measure
predicts the test error. With n runs the smallest attainable p-value is 2 / n! (no ties): 5
runs are needed before any tau can reach p < 0.05, which the summary states when fewer are
present.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence

import scipy.stats

from lbgap_tf import results

RUNS_FILE, SHARPNESS_FILE, CURVATURE_FILE = "runs.csv", "sharpness.csv", "curvature.csv"
DIVERGED = "diverged"
MIN_RUNS = 3
TARGETS = {"test_error": "test error (1 - test accuracy)",
           "accuracy_gap": "generalization gap (train - test accuracy)"}
PREDICTS, INVERSE, NO_EVIDENCE, UNDEFINED = "predicts", "inverse", "no evidence", "undefined"

# Per-run columns carried into the long table (from runs.csv).
RUN_FIELDS = ("run_id", "model", "dataset", "regime", "global_batch_size", "seed",
              "train_accuracy", "test_accuracy", "test_loss")
# What a sharpness measurement is, without its seeds (subspace_seed, eval_seed).
SHARPNESS_SETTINGS = ("subspace", "subspace_dim", "subspace_distribution", "epsilon", "solver",
                      "max_iter", "eval_examples", "eval_batch_size", "bn_mode")
CURVATURE_SETTINGS = ("measure", "settings", "eval_examples", "eval_batch_size", "bn_mode")
CURVATURE_LABELS = {"top_eigenvalues": "top Hessian eigenvalue",
                    "min_eigenvalue": "smallest Hessian eigenvalue",
                    "trace": "Hessian trace (Hutchinson)",
                    "density": "Hessian trace (SLQ)",
                    "adaptive_linf": "adaptive sharpness (L-inf)",
                    "adaptive_l2": "adaptive sharpness (L2)"}


class PredictorsError(ValueError):
    """A result folder that cannot be read as runs with measures; the message names the fix."""


@dataclasses.dataclass(frozen=True)
class Measure:
    """One measure: a short ``label`` for tables and the ``key`` of settings that define it."""

    label: str
    key: tuple


@dataclasses.dataclass
class RunMeasures:
    """One run (its ``runs.csv`` row) and the mean value of each measure taken on it."""

    run: dict
    values: dict = dataclasses.field(default_factory=dict)  # Measure -> list of floats

    def value(self, measure: Measure) -> float | None:
        found = self.values.get(measure)
        return math.fsum(found) / len(found) if found else None

    def target(self, name: str) -> float:
        test = float(self.run["test_accuracy"])
        if name == "test_error":
            return 1.0 - test
        return float(self.run["train_accuracy"]) - test


@dataclasses.dataclass(frozen=True)
class Correlation:
    """Kendall's tau of one measure with one target over the ``n`` runs that have both."""

    group: str
    measure: str
    target: str
    n: int
    tau: float
    p_value: float
    verdict: str
    reason: str = ""


def _float(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _sharpness_measure(row: Mapping[str, str]) -> Measure:
    space = ("full space" if row["subspace"] == "full" else
             f"subspace {row['subspace_dim']} {row.get('subspace_distribution') or '?'}")
    label = (f"eps-sharpness {space}, eps {float(row['epsilon']):g}, {row['solver']} "
             f"{row['max_iter']} it")
    return Measure(label, ("sharpness",) + tuple(row.get(c, "") for c in SHARPNESS_SETTINGS))


def _curvature_measure(row: Mapping[str, str]) -> Measure:
    settings = json.loads(row["settings"] or "{}")
    settings.pop("seed", None)  # The probes' draw, not the measure.
    shown = ", ".join(f"{name} {value:g}" if isinstance(value, float) else f"{name} {value}"
                      for name, value in sorted(settings.items())
                      if name in ("rho", "k", "steps"))
    label = CURVATURE_LABELS.get(row["measure"], row["measure"]) + (f" ({shown})" if shown
                                                                     else "")
    key = tuple(json.dumps(settings, sort_keys=True) if c == "settings" else row.get(c, "")
                for c in CURVATURE_SETTINGS)
    return Measure(label, ("curvature",) + key)


def _unique_labels(measures: Iterable[Measure]) -> list[Measure]:
    """Measures in first-seen order; a label that two measures share gets the evaluation
    data (examples/batch/BN mode) appended, and when that does not tell them apart either,
    every setting of the measure's key."""
    ordered = list(dict.fromkeys(measures))

    def relabel(measures: list[Measure], detail) -> list[Measure]:
        counts = collections.Counter(m.label for m in measures)
        return [Measure(f"{m.label} [{detail(m)}]", m.key) if counts[m.label] > 1 else m
                for m in measures]

    labelled = relabel(ordered, lambda m: "/".join(str(part) for part in m.key[-3:]))
    return relabel(labelled, lambda m: "/".join(str(part) for part in m.key[1:]))


def collect(runs: Sequence[Mapping[str, str]], sharpness: Sequence[Mapping[str, str]],
            curvature: Sequence[Mapping[str, str]]) -> tuple[dict, list[Measure], list[str]]:
    """Groups runs by (network, data set) and attaches every measured value.

    Returns ({group label: [RunMeasures]}, measures in first-seen order, notes), where a note
    says what was left out and why (diverged runs, rows of runs not in ``runs``, values that
    are not finite).
    """
    notes = []
    by_id = {}
    for row in runs:
        if row.get("stop_reason") == DIVERGED:
            notes.append(f"run {row['run_id']} diverged: left out (no minimizer to measure)")
            continue
        if _float(row.get("test_accuracy")) is None or _float(row.get("train_accuracy")) is None:
            notes.append(f"run {row['run_id']} has no test or train accuracy: left out")
            continue
        by_id[row["run_id"]] = RunMeasures(dict(row))
    raw = [(_sharpness_measure(r), r, r["sharpness"]) for r in sharpness]
    raw += [(_curvature_measure(r), r, r["value"]) for r in curvature]
    ordered = list(dict.fromkeys(m for m, _, _ in raw))
    names = dict(zip(ordered, _unique_labels(ordered), strict=True))  # as found -> labelled
    skipped: dict[str, int] = {}
    for measure, row, text in raw:
        run, value = by_id.get(row["run_id"]), _float(text)
        if run is None or value is None:
            reason = "of runs not in runs.csv (or left out)" if run is None else "not finite"
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        run.values.setdefault(names[measure], []).append(value)
    notes += [f"{count} measurement row(s) {reason}: ignored" for reason, count in
              sorted(skipped.items())]
    groups: dict[str, list[RunMeasures]] = {}
    for run in by_id.values():
        groups.setdefault(f"{run.run['model']} on {run.run['dataset']}", []).append(run)
    return groups, list(names.values()), notes


def kendall(group: str, measure: Measure, target: str, runs: Sequence[RunMeasures],
            alpha: float) -> Correlation:
    """Kendall's tau-b of ``measure`` with ``target`` over the runs that have the measure."""
    values = [(run.value(measure), run) for run in runs]
    pairs = [(value, run.target(target)) for value, run in values if value is not None]
    n = len(pairs)

    def undefined(reason: str) -> Correlation:
        return Correlation(group, measure.label, target, n, math.nan, math.nan, UNDEFINED, reason)

    if n < MIN_RUNS:
        return undefined(f"{n} run(s) measured, tau needs at least {MIN_RUNS}")
    xs, ys = zip(*pairs, strict=True)
    if len(set(xs)) == 1:
        return undefined("the measure is the same on every run")
    if len(set(ys)) == 1:
        return undefined("the target is the same on every run")
    tau, p_value = scipy.stats.kendalltau(xs, ys)
    tau, p_value = float(tau), float(p_value)
    verdict = (PREDICTS if tau > 0 else INVERSE) if p_value < alpha else NO_EVIDENCE
    return Correlation(group, measure.label, target, n, tau, p_value, verdict)


def correlations(groups: Mapping[str, Sequence[RunMeasures]], measures: Sequence[Measure],
                 alpha: float) -> list[Correlation]:
    """Every (group, measure, target) correlation, for the measures present in the group."""
    found = []
    for group, runs in groups.items():
        for measure in measures:
            if any(run.value(measure) is not None for run in runs):
                found += [kendall(group, measure, target, runs, alpha) for target in TARGETS]
    return found


def run_rows(groups: Mapping[str, Sequence[RunMeasures]], measures: Sequence[Measure]
             ) -> list[dict]:
    """The long table: one row per (run, measure) with the run's accuracies and targets."""
    rows = []
    for group, runs in groups.items():
        for run in runs:
            base = {"group": group, **{f: run.run.get(f, "") for f in RUN_FIELDS},
                    "test_error": run.target("test_error"),
                    "accuracy_gap": run.target("accuracy_gap")}
            for measure in measures:
                value = run.value(measure)
                if value is not None:
                    rows.append({**base, "measure": measure.label, "value": value,
                                 "n_values": len(run.values[measure])})
    return rows


def correlation_rows(found: Sequence[Correlation]) -> list[dict]:
    return [dataclasses.asdict(c) for c in found]


def _cell(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}g}"


def findings(found: Sequence[Correlation], groups: Mapping[str, Sequence[RunMeasures]],
             alpha: float) -> list[str]:
    """The plain-words findings per group, test error first."""
    lines = []
    for group, runs in groups.items():
        mine = [c for c in found if c.group == group and c.target == "test_error"]
        if not mine:
            lines.append(f"- {group}: no measured run, nothing to correlate.")
            continue
        predicts = [c for c in mine if c.verdict == PREDICTS]
        inverse = [c for c in mine if c.verdict == INVERSE]
        most = max(c.n for c in mine)
        if predicts:
            named = "; ".join(f"{c.measure} (tau {c.tau:.2f}, p {c.p_value:.2g}, n {c.n})"
                              for c in sorted(predicts, key=lambda c: -c.tau))
            lines.append(f"- {group}: predicts the test error at p < {alpha:g}: {named}.")
        else:
            lines.append(f"- {group}: NO measure predicts the test error at p < {alpha:g} "
                         f"over these {len(runs)} run(s).")
        if inverse:
            named = "; ".join(f"{c.measure} (tau {c.tau:.2f}, p {c.p_value:.2g})"
                              for c in inverse)
            lines.append(f"  Ranked the wrong way (sharper runs test better): {named}.")
        if most < 5:
            lines.append(f"  With at most {most} runs per measure, no tau can reach p < 0.05 "
                         f"(the smallest two-sided p-value of n runs is 2/n!, "
                         f"{2 / math.factorial(most):.2g} here): measure more runs (trials, "
                         "batch sizes) before reading anything into it.")
    return lines


def markdown(groups, measures, found, notes, alpha: float, folders: Sequence[str]) -> str:
    """The report: per group, the runs x measures table, then the correlations, findings."""
    lines = ["# Which measure predicts the generalization gap?", "",
             f"Folders: {', '.join(folders)}. Kendall's tau-b of each measure with the test "
             f"error and with the train - test accuracy gap, over the runs of each network and "
             f"data set; two-sided p-values, verdicts at alpha {alpha:g}.", "", "## Findings",
             ""]
    lines += findings(found, groups, alpha)
    for group, runs in groups.items():
        present = [m for m in measures if any(run.value(m) is not None for run in runs)]
        lines += ["", f"## {group}: runs", "",
                  "| run | regime | batch | seed | train acc % | test acc % | test loss | "
                  + " | ".join(m.label for m in present) + " |",
                  "|---|---|---|---|---|---|---|" + "---|" * len(present)]
        for run in runs:
            r = run.run
            cells = [r["run_id"], r.get("regime", ""), r.get("global_batch_size", ""),
                     r.get("seed", ""), f"{100 * float(r['train_accuracy']):.2f}",
                     f"{100 * float(r['test_accuracy']):.2f}",
                     _cell(_float(r.get("test_loss")))]
            cells += [_cell(run.value(m)) for m in present]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
        lines += ["", f"## {group}: Kendall tau", "",
                  "| measure | n | tau (test error) | p | verdict | tau (accuracy gap) | p | "
                  "verdict |", "|---|---|---|---|---|---|---|---|"]
        mine = {(c.measure, c.target): c for c in found if c.group == group}
        for measure in present:
            error, gap = mine[(measure.label, "test_error")], mine[(measure.label,
                                                                     "accuracy_gap")]
            lines.append(
                f"| {measure.label} | {error.n} | {_cell(error.tau, 3)} | "
                f"{_cell(error.p_value, 2)} | {error.verdict} | {_cell(gap.tau, 3)} | "
                f"{_cell(gap.p_value, 2)} | {gap.verdict} |")
    if notes:
        lines += ["", "## Left out", ""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def read_folder(folder: str) -> tuple[list[dict], list[dict], list[dict]]:
    """(runs, sharpness rows, curvature rows) of one result folder; a folder without
    ``runs.csv`` is a ``PredictorsError``."""
    runs_csv = os.path.join(folder, RUNS_FILE)
    if not os.path.exists(runs_csv):
        raise PredictorsError(f"{runs_csv} does not exist: pass a result folder of "
                              "benchmarks.gap, benchmarks.train or benchmarks.batch_sweep")
    return (results.read_rows(runs_csv), results.read_rows(os.path.join(folder, SHARPNESS_FILE)),
            results.read_rows(os.path.join(folder, CURVATURE_FILE)))
