"""The remedies comparison as a table (one row per network and remedy, mean and std over
trials) and as a Markdown summary with plain findings.

``table`` derives the rows from the experiment's rows (``remedies.csv`` joined with the
full-space ``sharpness.csv`` rows of each LB run, and of SB for the reference line); nothing
in it is edited by hand. The first line of each network is SB (plain), the second the plain
LB, then the remedies in list order. Sharpness columns are ``sharpness_<solver>_eps<eps>``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from lbgap_tf import results

# Findings call a remedy's LB "still sharp" when its sharpness stays above this fraction of
# the plain LB's (the paper: augmentation and conservative training close the gap but stay
# sharp).
STILL_SHARP = 0.5


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample std of the finite values; the std is None (no spread is known) for
    fewer than two."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return None, None
    mean, std = results.mean_std(values)
    return mean, (std if len(values) > 1 else None)


def _float(value) -> float | None:
    return None if value in (None, "") else float(value)


def _sharpness_columns(sharpness_rows: Iterable[dict]) -> list[tuple[str, float]]:
    return sorted({(row["solver"], float(row["epsilon"])) for row in sharpness_rows},
                  key=lambda key: (key[0], -key[1]))


def _sharpness_name(solver: str, eps: float) -> str:
    return f"sharpness_{solver}_eps{eps:g}"


def table(remedy_rows: Sequence[dict], sharpness_rows: Sequence[dict],
          run_rows: Sequence[dict]) -> list[dict]:
    """Rows per (model, dataset, remedy), SB and plain LB first; values mean/std over trials."""
    sharp = {}
    for row in sharpness_rows:
        sharp[(row["run_id"], row["solver"], float(row["epsilon"]))] = float(row["sharpness"])
    runs = {row["run_id"]: row for row in run_rows}
    columns = _sharpness_columns(sharpness_rows)
    out = []
    networks = list(dict.fromkeys((row["model"], row["dataset"]) for row in remedy_rows))
    for model, dataset in networks:
        rows = [row for row in remedy_rows if (row["model"], row["dataset"]) == (model, dataset)]
        remedies = list(dict.fromkeys(row["remedy"] for row in rows))
        plain = [row for row in rows if row["remedy"] == "plain"]
        lines = [("SB", plain, "sb_run_id")] + [
            (name, [row for row in rows if row["remedy"] == name], "lb_run_id")
            for name in remedies]
        for label, group, run_column in lines:
            if not group:
                continue
            is_sb = label == "SB"
            line = {"model": model, "dataset": dataset, "run": label if is_sb else "LB",
                    "remedy": "" if is_sb else label, "trials": len(group)}
            prefix = "sb" if is_sb else "lb"
            for metric in ("test_accuracy", "train_accuracy"):
                mean, std = _mean_std([100 * float(row[f"{prefix}_{metric}"]) for row in group])
                line[f"{metric}_pct"], line[f"{metric}_pct_std"] = mean, std
            if is_sb:
                line.update(gap_pp=None, gap_pp_std=None, gap_closed=None, gap_closed_std=None)
            else:
                line["gap_pp"], line["gap_pp_std"] = _mean_std(
                    [float(row["gap_pp"]) for row in group])
                line["gap_closed"], line["gap_closed_std"] = _mean_std(
                    [_float(row["gap_closed"]) for row in group])
            for solver, eps in columns:
                name = _sharpness_name(solver, eps)
                line[name], line[f"{name}_std"] = _mean_std(
                    [sharp.get((row[run_column], solver, eps)) for row in group])
            run_info = [runs.get(row[run_column], {}) for row in group]
            if is_sb:
                line["epochs"] = _mean_std([_float(r.get("epochs_run")) for r in run_info])[0]
                line["updates"] = None
                line["wall_time_s"] = _mean_std(
                    [_float(r.get("wall_time_s")) for r in run_info])[0]
            else:
                line["epochs"] = _mean_std([float(row["lb_epochs"]) for row in group])[0]
                line["updates"] = _mean_std([float(row["lb_updates"]) for row in group])[0]
                line["wall_time_s"] = _mean_std(
                    [float(row["lb_wall_time_s"]) for row in group])[0]
            out.append(line)
    return out


def _cell(mean, std=None, digits=2) -> str:
    if mean is None:
        return "–"
    if std is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _sharp_cell(mean, std) -> str:
    if mean is None:
        return "–"
    text = f"{mean:.3g}"
    return text if std is None else f"{text} ± {std:.2g}"


def markdown(rows: Sequence[dict], *, wall_time_s: float | None = None) -> str:
    """The table per network and the findings, as Markdown."""
    lines = ["# Remedies for the large-batch gap, same x0", ""]
    sharp_names = [key[:-len("_std")] for key in (rows[0] if rows else {})
                   if key.startswith("sharpness_") and key.endswith("_std")]
    networks = list(dict.fromkeys((row["model"], row["dataset"]) for row in rows))
    for model, dataset in networks:
        group = [row for row in rows if (row["model"], row["dataset"]) == (model, dataset)]
        trials = int(group[0]["trials"])
        spread = "mean ± std" if trials > 1 else "no spread known"
        lines += [f"## {model} on {dataset} ({trials} trial(s), {spread})", ""]
        header = (["run", "remedy", "test acc %", "train acc %", "SB − LB test (pp)",
                   "gap closed"] + [name.replace("sharpness_", "sharpness ").replace("_eps",
                                                                                     " ε=")
                                    for name in sharp_names]
                  + ["epochs", "updates", "wall time (s)"])
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for row in group:
            cells = [row["run"], row["remedy"] or "–",
                     _cell(row["test_accuracy_pct"], row["test_accuracy_pct_std"]),
                     _cell(row["train_accuracy_pct"], row["train_accuracy_pct_std"]),
                     _cell(row["gap_pp"], row["gap_pp_std"]),
                     _cell(row["gap_closed"], row["gap_closed_std"])]
            cells += [_sharp_cell(row[name], row[f"{name}_std"]) for name in sharp_names]
            cells += [_cell(row["epochs"], digits=0), _cell(row["updates"], digits=0),
                      _cell(row["wall_time_s"], digits=0)]
            lines.append("| " + " | ".join(cells) + " |")
        lines += [""] + findings(group, sharp_names) + [""]
    if wall_time_s is not None:
        lines.append(f"Wall time of this invocation: {wall_time_s / 60:.1f} min.")
    return "\n".join(lines) + "\n"


def findings(group: Sequence[dict], sharp_names: Sequence[str]) -> list[str]:
    """Plain sentences for one network: the plain gap, then per remedy whether it closes the
    gap and whether its LB stays sharp (first sharpness column)."""
    by_remedy = {row["remedy"]: row for row in group if row["run"] == "LB"}
    plain = by_remedy.get("plain")
    if plain is None:
        return []
    sharp = sharp_names[0] if sharp_names else None
    out = [f"- Plain LB: SB − LB test gap {plain['gap_pp']:+.2f} pp."]
    if int(plain["trials"]) < 2:
        out.append("- ONE trial: the gaps below have no error bar, and test accuracy moves by "
                   "tenths of a point from one seed to the next, so read each verdict as a "
                   "hint; run --trials=3 or more before trusting a difference that small.")
    if not plain["gap_pp"] or plain["gap_pp"] <= 0:
        out.append("- The plain gap is not positive here, so no remedy has a gap to close; "
                   "the fractions are left empty.")
    for name, row in by_remedy.items():
        if name == "plain":
            continue
        text = f"- {name}: gap {row['gap_pp']:+.2f} pp"
        if row["gap_closed"] is not None:
            verdict = ("closes it" if row["gap_closed"] >= 0.75 else
                       "closes part of it" if row["gap_closed"] >= 0.25 else
                       "widens it" if row["gap_closed"] < 0 else "leaves it about unchanged")
            text += f", {100 * row['gap_closed']:.0f}% of the plain gap closed ({verdict})"
        if sharp and row[sharp] is not None and plain[sharp]:
            ratio = row[sharp] / plain[sharp]
            text += (f"; sharpness {row[sharp]:.3g} vs plain LB {plain[sharp]:.3g} "
                     f"({ratio:.2f}x: {'still sharp' if ratio >= STILL_SHARP else 'flatter'})")
        if row["epochs"] is not None:
            text += f"; {row['epochs']:.0f} epochs, {row['updates']:.0f} updates"
        out.append(text + ".")
    return out
