"""The Markdown summary of a generalization-gap experiment.

It shows Tables 2-4 as measured, puts the paper's numbers beside them when the data set is the
paper's (and says which data set was used when it is not), and states the findings plainly:
the sign of the SB - LB test gap, whether both regimes fit the training set, and the LB/SB
sharpness ratio of every trial (or why it is undefined: an operand is 0).
"""

from __future__ import annotations

import math

from lbgap_tf import gate, models, paper

# Below this training accuracy (%) a regime has not fit the training set, and a test gap may
# be under-training rather than the sharp-minimum effect the paper studies.
FIT_ACCURACY = 99.0


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


def _sharpness_table(table: list[dict], published: dict, paper_dim: int | None = None
                     ) -> list[str]:
    if not table:
        return ["(not measured)"]
    epsilons = sorted({float(key[3:].split("_")[0]) for key in table[0]
                       if key.startswith("eps") and key.endswith("_ratio")}, reverse=True)
    header = ["network", "data", "solver", "trials"]
    for eps in epsilons:
        header += [f"ε={eps:g} SB", f"ε={eps:g} LB", "LB/SB"]
    rows = []
    for row in table:
        cells = [row["model"], row["dataset"], row["solver"], row["trials"]]
        for eps in epsilons:
            ratio = row[f"eps{eps:g}_ratio"]
            cells += [row[f"eps{eps:g}_SB"], row[f"eps{eps:g}_LB"],
                      "" if ratio is None else f"{ratio:.3g}"]
        rows.append(cells)
        same_space = paper_dim is None or str(row["subspace_dim"]) == str(paper_dim)
        if row["solver"] == "lbfgsb" and same_space \
                and _is_paper_data(row["model"], row["dataset"]):
            values = published[row["model"]]
            cells = [f"{row['model']} (paper)", row["dataset"], "lbfgsb", paper.PAPER_TRIALS]
            for eps in epsilons:
                sb, lb = values.get((eps, "SB")), values.get((eps, "LB"))
                cells += [_paper_cell(sb), _paper_cell(lb),
                          f"{lb[0] / sb[0]:.3g}" if sb and lb and sb[0] else ""]
            rows.append(cells)
    return _markdown(header, rows)


def _ratio_cell(value: float) -> str:
    """A trial's ratio: 3 significant digits, or why it is undefined (an operand is 0)."""
    if isinstance(value, gate.UndefinedRatio):
        return f"undefined: {value.reason}"
    return f"{value:.3g}"


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
        metrics = per_trial.get((model, dataset), {})
        for (metric, _, subspace, dim, solver, eps), values in sorted(
                metrics.items(), key=lambda item: str(item[0])):
            if metric != "sharpness_ratio" or not values:
                continue
            space = "full space" if subspace == "full" else f"random subspace p={dim}"
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


def summary(outcome) -> str:
    """The Markdown summary of ``outcome`` (a ``gap.GapOutcome``)."""
    dims = sorted({row["subspace_dim"] for row in outcome.table4})
    lines = ["# Generalization gap: small batch (SB) vs large batch (LB)", ""]
    lines += _setup(outcome) + ["", "## Findings", ""] + _findings(outcome)
    lines += ["", "## Table 2 — accuracy (%), mean ± std over trials", ""]
    lines += _table2(outcome)
    lines += ["", "## Table 3 — sharpness, full space", ""]
    lines += _sharpness_table(outcome.table3, paper.TABLE3)
    lines += ["", f"## Table 4 — sharpness, random subspace (p = {', '.join(dims) or '-'})", ""]
    lines += _sharpness_table(outcome.table4, paper.TABLE4, paper.PAPER_SUBSPACE_DIM)
    return "\n".join(lines) + "\n"
