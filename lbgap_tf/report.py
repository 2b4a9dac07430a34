"""The Markdown summary of a generalization-gap experiment.

It shows Tables 2-4 as measured, puts the paper's numbers beside them when the data set is the
paper's (and says which data set was used when it is not), and states the findings plainly:
the sign of the SB - LB test gap, whether both regimes fit the training set, and the LB/SB
sharpness ratio of every trial (or why it is undefined: an operand is 0). Every solver's value
is a lower bound of Metric 2.1's maximum: Tables 3-4 show the best lower bound beside each
solver's value, a "Solver checks" section says loudly when solvers disagree by more than a
factor or one stalled near y = 0, and a diagnostics table lists, per measurement, the gradient
norm at x, the first-order term, the norm of the perturbation ||A y|| and how far the solver
explored the box.
"""

from __future__ import annotations

import collections
import math

from lbgap_tf import gate, models, paper, tables

# Below this training accuracy (%) a regime has not fit the training set, and a test gap may
# be under-training rather than the sharp-minimum effect the paper studies.
FIT_ACCURACY = 99.0
# Solvers of one measurement whose values differ by more than this factor are reported.
DISAGREEMENT_FACTOR = 10.0
# A solve whose best point has ||y|| / ||r|| below this stayed near y = 0: it stalled.
STALL_FRACTION = 0.01


def _paper_cell(values: tuple[float, float] | None) -> str:
    return "" if values is None else f"{values[0]:.2f} ± {values[1]:.2f}"


def _is_paper_data(model: str, dataset: str) -> bool:
    return models.spec(model).dataset == dataset


def _markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def _table2(outcome) -> list[str]:
    header = ["network", "data", "trials", "train SB", "train LB", "test SB", "test LB",
              "SB − LB test (pp)", "‖x_SB−x0‖ / ‖x_LB−x0‖"]
    rows = []
    for row in outcome.table2:
        rows.append([row["model"], row["dataset"], row["trials"], row["train_SB"],
                     row["train_LB"], row["test_SB"], row["test_LB"], row["test_gap"],
                     row["distance_ratio"]])
        if _is_paper_data(row["model"], row["dataset"]):
            published = paper.TABLE2[row["model"]]
            sb, lb = published[("test", "SB")][0], published[("test", "LB")][0]
            rows.append([f"{row['model']} (paper)", row["dataset"], paper.PAPER_TRIALS,
                         _paper_cell(published[("train", "SB")]),
                         _paper_cell(published[("train", "LB")]),
                         _paper_cell(published[("test", "SB")]),
                         _paper_cell(published[("test", "LB")]), f"{sb - lb:.2f}", "3 – 10"])
    return _markdown(header, rows)


def _sharpness_table(table: list[dict], published: dict, paper_dim: int | None = None,
                     paper_distribution: str | None = None) -> list[str]:
    """Table 3 (``paper_dim`` None) or 4 in Markdown; the paper's row follows the L-BFGS-B
    row of its space (dimension ``paper_dim``, A drawn from ``paper_distribution``)."""
    if not table:
        return ["(not measured)"]
    epsilons = sorted({float(key[3:].split("_")[0]) for key in table[0]
                       if key.startswith("eps") and key.endswith("_ratio")}, reverse=True)
    subspace = paper_dim is not None
    header = ["network", "data"] + (["A"] if subspace else []) + ["solver", "trials"]
    for eps in epsilons:
        header += [f"ε={eps:g} SB", f"ε={eps:g} LB", "LB/SB", "best SB", "best LB",
                   "best LB/SB"]
    rows = []
    for row in table:
        space = [row["subspace_distribution"]] if subspace else []
        cells = [row["model"], row["dataset"], *space, row["solver"], row["trials"]]
        for eps in epsilons:
            ratio, best = row[f"eps{eps:g}_ratio"], row[f"eps{eps:g}_best_ratio"]
            cells += [row[f"eps{eps:g}_SB"], row[f"eps{eps:g}_LB"],
                      "" if ratio is None else f"{ratio:.3g}", row[f"eps{eps:g}_SB_best"],
                      row[f"eps{eps:g}_LB_best"], "" if best is None else f"{best:.3g}"]
        rows.append(cells)
        same_space = not subspace or (
            str(row["subspace_dim"]) == str(paper_dim)
            and row["subspace_distribution"] == paper_distribution)
        if row["solver"] == "lbfgsb" and same_space \
                and _is_paper_data(row["model"], row["dataset"]):
            values = published[row["model"]]
            cells = [f"{row['model']} (paper)", row["dataset"],
                     *(["?"] if subspace else []), "lbfgsb", paper.PAPER_TRIALS]
            for eps in epsilons:
                sb, lb = values.get((eps, "SB")), values.get((eps, "LB"))
                cells += [_paper_cell(sb), _paper_cell(lb),
                          f"{lb[0] / sb[0]:.3g}" if sb and lb and sb[0] else "", "", "", ""]
            rows.append(cells)
    return _markdown(header, rows)


def _ratio_cell(value: float) -> str:
    """A trial's ratio: 3 significant digits, or why it is undefined (an operand is 0)."""
    if isinstance(value, gate.UndefinedRatio):
        return f"undefined: {value.reason}"
    return f"{value:.3g}"


def _space_label(row: dict) -> str:
    if row["subspace"] == "full":
        return "full space"
    return f"p={row['subspace_dim']} {tables.distribution_of(row)}"


def _run_label(row: dict) -> str:
    return f"{row['model']} {row['regime']} seed {row['seed']}"


def solver_checks(sharpness_rows: list[dict], *, disagreement_factor: float = DISAGREEMENT_FACTOR,
                  stall_fraction: float = STALL_FRACTION) -> list[str]:
    """Loud lines for the measurements whose solvers disagree by more than
    ``disagreement_factor`` (largest / smallest value over the solvers run on the same run,
    space and epsilon; a 0 beside a positive value counts as infinite) and for every solve
    that stalled (best point with ||y|| / ||r|| < ``stall_fraction``). [] when none."""
    lines = []
    by_measurement = collections.defaultdict(dict)
    for row in sharpness_rows:
        by_measurement[(_run_label(row), _space_label(row), float(row["epsilon"]))][
            row["solver"]] = float(row["sharpness"])
        fraction = row.get("radius_fraction")
        if fraction not in (None, "") and float(fraction) < stall_fraction:
            lines.append(
                f"- **STALLED**: {_run_label(row)}, {_space_label(row)}, "
                f"ε={float(row['epsilon']):g}, {row['solver']}: its best point has ‖y‖/‖r‖ = "
                f"{float(fraction):.3g} (< {stall_fraction:g}), value "
                f"{float(row['sharpness']):.4g}: a lower bound that may be far below the "
                "maximum.")
    for (run, space, eps), values in sorted(by_measurement.items()):
        if len(values) < 2:
            continue
        low, high = min(values.values()), max(values.values())
        factor = high / low if low > 0 else (math.inf if high > 0 else 1.0)
        if factor > disagreement_factor:
            listed = ", ".join(f"{solver} {value:.4g}" for solver, value in sorted(values.items()))
            lines.append(f"- **SOLVERS DISAGREE** by {factor:.3g}x (> {disagreement_factor:g}x): "
                         f"{run}, {space}, ε={eps:g}: {listed}; trust the best lower bound.")
    return lines


def _diagnostics(sharpness_rows: list[dict]) -> list[str]:
    """One Markdown line per measurement: the value beside its first-order term, the gradient
    norm at x, ||A y|| and how far the solver explored the box."""
    header = ["run", "space", "ε", "solver", "sharpness", "first-order term", "‖∇f(x)‖",
              "‖A·y‖", "max f / f(x)", "‖y‖/‖r‖", "on a face", "evals"]
    rows = []

    def number(row, column):
        text = row.get(column)
        return "" if text in (None, "") else f"{float(text):.3g}"

    for row in sorted(sharpness_rows, key=lambda r: (
            _run_label(r), r["subspace"], _space_label(r), -float(r["epsilon"]), r["solver"])):
        rows.append([_run_label(row), _space_label(row), f"{float(row['epsilon']):g}",
                     row["solver"], number(row, "sharpness"), number(row, "first_order"),
                     number(row, "gradient_norm"), number(row, "perturbation_norm"),
                     number(row, "loss_ratio"), number(row, "radius_fraction"),
                     number(row, "face_fraction"), row.get("function_evals", "")])
    return _markdown(header, rows)


def _findings(outcome) -> list[str]:
    lines = []
    per_trial = gate.measurements(outcome.run_rows, outcome.pair_rows, outcome.sharpness_rows)
    for row in outcome.table2:
        model, dataset = row["model"], row["dataset"]
        gap = row["test_gap_mean"]
        if gap > 0:
            verdict = "SB generalises better than LB, the paper's sign"
        elif gap < 0:
            verdict = ("LB generalises better than SB: the gap is REVERSED relative to the "
                       "paper")
        else:
            verdict = "no difference"
        lines.append(f"- **{model} on {dataset}**: SB − LB test accuracy = {row['test_gap']} "
                     f"percentage points over {row['trials']} trial(s): {verdict}.")
        fits = {regime: row[f"train_{regime}_mean"] >= FIT_ACCURACY for regime in ("SB", "LB")}
        train_cells = f"SB {row['train_SB']} %, LB {row['train_LB']} %"
        if all(fits.values()):
            lines.append(f"  Both regimes fit the training set ({train_cells}; "
                         f"≥ {FIT_ACCURACY:g} %), so the comparison is between minimizers.")
        else:
            lines.append(f"  Training accuracy {train_cells}: not both ≥ {FIT_ACCURACY:g} %, "
                         "so the test gap may reflect under-training rather than sharpness.")
        ratios = [(key, values) for key, values in per_trial.get((model, dataset), {}).items()
                  if key[0] == "sharpness_ratio" and values]
        for (_, _, subspace, dim, distribution, solver, eps), values in sorted(
                ratios, key=lambda item: str(item[0])):
            space = "full space" if subspace == "full" else \
                f"random subspace p={dim}, A {distribution}"
            trials = ", ".join(_ratio_cell(value) for _, value in sorted(values.items()))
            defined = [value for value in values.values() if math.isfinite(value)]
            smallest = f"smallest {min(defined):.3g}x" if defined else "no trial defined"
            lines.append(f"  LB/SB sharpness, {space}, {solver}, ε={eps:g}: per trial "
                         f"[{trials}], {smallest}.")
        low, high = paper.DISTANCE_RATIO_RANGE
        lines.append(f"  ‖x_SB−x0‖ / ‖x_LB−x0‖ = {row['distance_ratio']} "
                     f"(paper: {low:g} – {high:g}).")
        if not _is_paper_data(model, dataset):
            lines.append(f"  Data: {dataset}, not the paper's {models.spec(model).dataset}; "
                         "the paper's numbers are not shown beside these.")
    return lines


def _setup(outcome) -> list[str]:
    first = outcome.run_rows[0] if outcome.run_rows else {}
    measured = outcome.sharpness_rows[0] if outcome.sharpness_rows else {}
    settings = [
        f"TensorFlow {first.get('tf_version', '?')}, Keras {first.get('keras_version', '?')}, "
        f"{first.get('device_kind', '?')}, strategy {first.get('strategy', '?')} with "
        f"{first.get('replicas', '?')} replica(s), precision {first.get('precision', '?')}, "
        f"git {first.get('git_revision', '?')}.",
        f"Training: optimizer {first.get('optimizer', '?')}, lr {first.get('learning_rate', '?')}"
        f", BN mode {first.get('bn_mode', '?')}; batch and stopping per regime: "
        + "; ".join(sorted({f"{r['regime']} batch {r['global_batch_size']} "
                            f"({r['stop_rule']}, ran {r['epochs_run']} epochs)"
                            for r in outcome.run_rows})) + ".",
    ]
    if measured:
        settings.append(
            f"Sharpness: f = mean cross-entropy over {measured['eval_examples']} training "
            f"examples, evaluation batch {measured['eval_batch_size']}, BN mode "
            f"{measured['bn_mode']}, {measured['max_iter']} solver iterations.")
    stages = ", ".join(f"{stage} {seconds / 60:.1f}"
                       for stage, seconds in outcome.stage_seconds.items())
    settings.append(f"Wall time of this invocation: {outcome.wall_time_s / 60:.1f} min"
                    + (f" (stages, min: {stages})" if stages else "")
                    + "; finished stages found on disk are not repeated.")
    return [f"- {line}" for line in settings]


def summary(outcome, *, disagreement_factor: float = DISAGREEMENT_FACTOR,
            stall_fraction: float = STALL_FRACTION) -> str:
    """The Markdown summary of ``outcome`` (a ``gap.GapOutcome``); see ``solver_checks`` for
    ``disagreement_factor`` and ``stall_fraction``."""
    dims = sorted({row["subspace_dim"] for row in outcome.table4})
    lines = ["# Generalization gap: small batch (SB) vs large batch (LB)", ""]
    lines += _setup(outcome) + ["", "## Findings", ""] + _findings(outcome)
    checks = solver_checks(outcome.sharpness_rows, disagreement_factor=disagreement_factor,
                           stall_fraction=stall_fraction)
    lines += ["", "## Solver checks", ""]
    lines += checks or [f"- Every measurement's solvers agree within {disagreement_factor:g}x "
                        f"and none stalled (‖y‖/‖r‖ ≥ {stall_fraction:g})."
                        if outcome.sharpness_rows else "- No sharpness measured."]
    lines += ["", "## Table 2 — accuracy (%), mean ± std over trials", ""]
    lines += _table2(outcome)
    lines += ["", "## Table 3 — sharpness, full space", ""]
    lines += _sharpness_table(outcome.table3, paper.TABLE3)
    lines += ["", f"## Table 4 — sharpness, random subspace (p = {', '.join(dims) or '-'})", ""]
    if outcome.table4:
        lines += [f"The paper's row stands beside A = {outcome.table4_distribution} (the "
                  "paper says only that A's columns are \"randomly generated\"; "
                  "normal_1_over_p: N(0, 1/p) entries, normal: N(0, 1), uniform: U[0, 1), "
                  "uniform_unit_columns: U[0, 1) with unit-norm columns).", ""]
    lines += _sharpness_table(outcome.table4, paper.TABLE4, paper.PAPER_SUBSPACE_DIM,
                              outcome.table4_distribution)
    if outcome.sharpness_rows:
        lines += ["", "## Sharpness diagnostics, per measurement", "",
                  "First-order term: 100 ∇f(x)·(A y) / (1 + f(x)); a value close to it measures "
                  "the residual gradient at x rather than curvature. ‖y‖/‖r‖ and the fraction "
                  "of coordinates on a face of the box show how far the solver explored it.", ""]
        lines += _diagnostics(outcome.sharpness_rows)
    return "\n".join(lines) + "\n"
