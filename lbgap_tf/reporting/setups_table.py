"""The setups comparison as a CSV (long format, one row per shown value) and as Markdown.

``rows`` turns a ``comparison.Comparison`` into CSV rows with a ``section`` column (speed,
science, native_sharpness, to_target, performance_model, verdict, skipped, unmatched,
overhead), so ``pandas.read_csv(...).query("section == 'speed'")`` is all a notebook needs;
``markdown`` renders the same content for people; ``write`` writes ``NAME.csv`` and
``NAME.md`` atomically.
"""

from __future__ import annotations

import json
import os

from lbgap_tf import results, tables
from lbgap_tf.reporting import comparison

FLAG = "⚑"


def _number(value, digits=3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if abs(value) >= 10 ** digits:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def _mean_std(values: dict) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return results.mean_std(list(values.values()))


def rows(result: comparison.Comparison, overhead: dict | None = None) -> list[dict]:
    """The CSV rows of ``result`` (see the module docstring)."""
    out = []
    for row in result.speed:
        out.append({"section": "speed", **row})
    for metric in result.science:
        mean, std = _mean_std(metric.values)
        ref_mean, ref_std = _mean_std(metric.reference_values)
        out.append({"section": "science", "setup": metric.setup, "metric": metric.metric,
                    "scale": metric.scale, "trials": len(metric.values), "mean": mean,
                    "std": std, "reference": result.reference, "reference_mean": ref_mean,
                    "reference_std": ref_std, "difference": metric.difference,
                    "limit": metric.limit, "status": metric.status, "note": metric.note,
                    "values": json.dumps(metric.values, sort_keys=True),
                    "reference_values": json.dumps(metric.reference_values, sort_keys=True)})
    out += [{"section": "native_sharpness", **row} for row in result.native_sharpness]
    out += [{"section": "to_target", **row} for row in result.to_target]
    out += [{"section": "performance_model", **row} for row in result.performance_model]
    out += [{"section": "verdict", "setup": label, "verdict": text,
             "reference": result.reference} for label, text in result.verdicts.items()]
    out += [{"section": status, "setup": label, "note": reason}
            for label, status, reason in result.skipped]
    out += [{"section": "unmatched", "note": text} for text in result.unmatched]
    out += [{"section": "overhead", "metric": key, "mean": value}
            for key, value in (overhead or {}).items()]
    return out


def _table(header: list[str], body: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in body]


def _science_cell(metric: comparison.MetricComparison | None, values: dict, reference: bool
                  ) -> str:
    mean, std = _mean_std(values)
    if mean is None:
        return "–"
    digits = 2 if (metric is None or metric.scale == "pp") else 3
    cell = f"{mean:.{digits}f} ± {std:.{digits}f}" if digits == 2 else \
        f"{_number(mean)} ± {_number(std, 2)}"
    if reference or metric is None or metric.difference is None:
        return cell
    if metric.scale == "ratio":
        cell += f" (x{metric.difference:.2f})"
    else:
        cell += f" ({metric.difference:+.2f})"
    return cell + (f" {FLAG}" if metric.status == comparison.DIFFERS else "")


def markdown(result: comparison.Comparison, overhead: dict | None = None,
             title: str = "Accelerator setups", appendix: str = "") -> str:
    """The comparison for people (see the module docstring); ``appendix`` is Markdown added
    at the end."""
    tol = result.tolerances
    lines = [f"# {title}: speed and science side by side", "",
             f"- Experiment: {result.experiment}.",
             f"- Reference setup: **{result.reference}**. Every setup trains from the same x0 "
             "per seed with the same data order.",
             f"- Verdict rule: a metric agrees when |mean − reference mean| ≤ tolerance + "
             f"{tol.spread_sigmas:g} standard errors of the difference (over trials); "
             f"tolerance {tol.accuracy_pp:g} pp for accuracies and the gap, a factor "
             f"{tol.ratio_factor:g} for ratios (compared as logarithms). Fewer than 2 trials: "
             "undetermined. Sharpness is measured in float32 for every setup."]
    if overhead:
        lines.append("- Time of this invocation: "
                     + ", ".join(f"{k} {v:.1f} s" for k, v in overhead.items()) + ".")
    lines += ["", "## Verdicts", ""]
    lines += _table(["setup", "verdict against " + result.reference],
                    [[label, text] for label, text in result.verdicts.items()]
                    + [[label, f"{status}: {reason}"] for label, status, reason
                       in result.skipped])
    lines += ["", "## Speed (training; first epoch of each run excluded as warm-up)", ""]
    body = []
    for row in result.speed:
        rate = _number(row["examples_per_s"])
        if row["examples_per_s_se"] is not None:
            rate += f" ± {_number(row['examples_per_s_se'], 2)}"
        body.append([row["setup"], row["regime"], row["replicas"],
                     f"{rate} ({row['timed_epochs']})", _number(row["examples_per_cpu_s"]),
                     _number(row["startup_s"], 2), _number(row["first_epoch_extra_s"], 2),
                     _number(row["peak_rss_mb"]),
                     _number(row["device_peak_mb"]) if row["device_peak_mb"] is not None
                     else "n/a", _number(row["scaling_efficiency"], 2),
                     _number(row["max_load_average"], 2)])
    lines += _table(["setup", "regime", "replicas", "examples/s, mean ± SE (epochs)",
                     "examples per CPU-s", "startup s", "1st-epoch extra s", "peak RSS MB",
                     "device peak MB", "scaling efficiency", "load ≤"], body)
    lines += ["", f"## Science (mean ± std over trials; (Δ) or (x factor) against "
              f"{result.reference}; {FLAG} beyond tolerance)", ""]
    names = sorted({m.metric for m in result.science}, key=_metric_order)
    by_key = {(m.setup, m.metric): m for m in result.science}
    reference_values = {m.metric: m.reference_values for m in result.science}
    body = [[f"{result.reference} (reference)"]
            + [_science_cell(None, reference_values.get(n, {}), True) for n in names]]
    for label in result.labels:
        if label == result.reference:
            continue
        body.append([label] + [_science_cell(by_key.get((label, n)),
                                             by_key[(label, n)].values
                                             if (label, n) in by_key else {}, False)
                               for n in names])
    lines += _table(["setup"] + names, body)
    if result.native_sharpness:
        lines += ["", "## Sharpness in the run's own precision (what float32 measurement "
                  "avoids; never used for verdicts)", ""]
        lines += _table(["setup", "metric", "measured in float32", "measured in the run's "
                         "precision"],
                        [[row["setup"], row["metric"], _number(row["float32"]),
                          f"{_number(row['native'])} ({row['precision']})"]
                         for row in result.native_sharpness])
    lines += ["", "## Distributed training: updates and training time to a target", ""]
    targets = result.targets
    lines.append(f"Targets: training loss ≤ {_number(targets['train_loss'])}, test accuracy ≥ "
                 f"{_number(targets['test_accuracy_pct'], 4)} % (running training loss of "
                 "an epoch; test accuracy needs evaluation every epoch).")
    lines.append("")
    lines += _table(["setup", "regime", "target", "reached / runs", "updates", "training s"],
                    [[row["setup"], row["regime"], row["target"],
                      f"{row['reached']} / {row['runs']}" + (
                          "" if row["evaluated"] == row["runs"] else
                          f" ({row['evaluated']} evaluated)"),
                      _number(row["updates"]), _number(row["seconds"])]
                     for row in result.to_target])
    lines += ["", "## Appendix C performance model with measured throughputs", ""]
    lines.append(f"LB on each setup against SB on {result.reference}: LB is faster when it "
                 "needs fewer than (update-ratio threshold) times SB's updates; the threshold "
                 "is t_SB / t_LB from the measured per-update times (the paper's example: "
                 f"{comparison.PAPER_UPDATE_RATIO:g}). Required efficiency: the parallel "
                 "efficiency LB on N replicas would need to reach the target sooner than SB.")
    lines.append("")
    lines += _table(["setup", "target", "SB updates / s", "LB updates / s", "LB/SB updates",
                     "threshold", "LB sooner", "required efficiency", "measured efficiency"],
                    [[row["setup"], row["target"],
                      f"{_number(row['sb_updates'])} / {_number(row['sb_seconds'])}",
                      f"{_number(row['lb_updates'])} / {_number(row['lb_seconds'])}",
                      _number(row["update_ratio"]), _number(row["update_ratio_threshold"]),
                      _number(row["lb_sooner"]), _number(row["required_efficiency"], 2),
                      _number(row["measured_efficiency"], 2)]
                     for row in result.performance_model] or [["–"] * 9])
    if result.unmatched:
        lines += ["", "## Unmatched experiments (not compared)", ""]
        lines += [f"- {text}" for text in result.unmatched]
    return "\n".join(lines) + "\n" + appendix


def _metric_order(name: str) -> tuple:
    order = ("train_accuracy SB", "train_accuracy LB", "test_accuracy SB", "test_accuracy LB",
             "test_gap", "distance_ratio")
    return (order.index(name) if name in order else len(order), name)


def write(result: comparison.Comparison, output_dir: str, name: str, text: str,
          overhead: dict | None = None) -> tuple[str, str]:
    """Writes ``NAME.csv`` (``rows``) and ``NAME.md`` (``text``, from ``markdown``) into
    ``output_dir``; returns their paths."""
    csv_path = os.path.join(output_dir, f"{name}.csv")
    md_path = os.path.join(output_dir, f"{name}.md")
    tables.write_table(csv_path, rows(result, overhead))
    tables.write_text_atomic(md_path, text)
    return csv_path, md_path
