"""Setups side by side: speed, science with spread-aware verdicts, and what they mean for
distributed training (the paper's Appendix C performance model with measured throughputs).

Input: ``resultsets.SetupResults`` (one per setup; the first, or ``reference``, is the
reference). Experiments are matched by ``resultsets.pair_experiment`` and trials by seed; an
experiment that a setup has and the reference lacks (or the other way round) is listed as
unmatched, never paired with something else.

Speed, per setup and regime (pooled over the trials' runs): training examples/s of the
epochs after the first (the first carries tracing, XLA compilation and oneDNN warm-up) as
mean ± standard error over those epochs, examples per CPU-second (less sensitive to other
load), the startup (build and compile) and the first epoch's extra time apart, the process's
peak resident memory and the devices' peak memory (GPU/TPU; TensorFlow reports none for the
CPU), and the scaling efficiency X_N / (N X_1) against the single-replica setup of the same
device, precision and XLA setting.

Science, per setup against the reference, trial values of: train and test accuracy of SB and
LB, the SB - LB test gap, the distance ratio and the full-space LB/SB sharpness ratio of every
(solver, epsilon). The rule (``Tolerances``) respects the trial-to-trial spread, since one seed
on two machines can give SB sharpness 12.7 and 5.3: a metric agrees when the difference of the
trial means lies within the tolerance PLUS ``spread_sigmas`` standard errors of that
difference (Welch: sqrt(s_a^2/n_a + s_b^2/n_b)). Accuracies and the gap compare in percentage
points; ratios compare as logarithms (a factor), with a tolerance factor. With fewer than 2
trials on either side there is no spread, and the verdict is "undetermined", never "agrees".

Distributed training: updates and training wall time (evaluation excluded) until a target
training loss and a target test accuracy are first reached, per setup and regime; and the
Appendix C question for each setup: does LB there reach the target sooner than SB on the
single-replica reference, which parallel efficiency would LB on N replicas need to, and the
paper's form of the same answer, the update ratio U_LB / U_SB below which LB is faster
(t_SB / t_LB, the per-update times from the measured throughputs; the paper's example with
SB efficiency 0.2 and B_SB/B_LB = 0.1 gives 0.5).
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Sequence

from lbgap_tf import gate, results
from lbgap_tf.reporting import resultsets

AGREES, DIFFERS, UNDETERMINED = "agrees", "differs", "undetermined"
PAPER_UPDATE_RATIO = 0.5  # Appendix C: SB efficiency 0.2, B_SB / B_LB = 0.1.


@dataclasses.dataclass(frozen=True)
class Tolerances:
    """How far a setup may be from the reference and still agree.

    accuracy_pp: percentage points for accuracies and the SB - LB gap.
    ratio_factor: factor for the distance and sharpness ratios (2: half to double).
    spread_sigmas: standard errors of the difference added to each tolerance.
    """

    accuracy_pp: float = 1.0
    ratio_factor: float = 2.0
    spread_sigmas: float = 2.0

    def __post_init__(self):
        if not (self.accuracy_pp >= 0 and self.ratio_factor >= 1 and self.spread_sigmas >= 0):
            raise ValueError("tolerances: accuracy_pp and spread_sigmas must be >= 0 and "
                             "ratio_factor >= 1")


@dataclasses.dataclass(frozen=True)
class Targets:
    """Targets for time-to-target; None derives them from the reference: the training loss
    the slower of its two regimes ends at (both reach it), and its SB test accuracy less
    ``accuracy_slack_pp``."""

    train_loss: float | None = None
    test_accuracy_pct: float | None = None
    accuracy_slack_pp: float = 0.5


@dataclasses.dataclass(frozen=True)
class MetricComparison:
    """One science metric of one setup against the reference."""

    setup: str
    metric: str
    scale: str  # "pp" (additive) or "ratio" (log)
    values: dict  # seed -> value
    reference_values: dict
    status: str  # AGREES, DIFFERS or UNDETERMINED
    difference: float | None  # pp, or a factor for ratios
    limit: float | None  # the same units
    note: str = ""

    def describe(self) -> str:
        if self.difference is None:
            return f"{self.metric}: {self.note}"
        if self.scale == "ratio":
            return (f"{self.metric} x{self.difference:.3g} (allowed x{1 / self.limit:.3g} to "
                    f"x{self.limit:.3g})")
        return f"{self.metric} {self.difference:+.2f} pp (allowed ±{self.limit:.2f})"


@dataclasses.dataclass
class Comparison:
    """Everything the setups table shows; see the module docstring."""

    reference: str
    experiment: str
    tolerances: Tolerances
    targets: dict  # "train_loss", "test_accuracy_pct" -> value or None
    speed: list[dict]
    science: list[MetricComparison]
    native_sharpness: list[dict]
    verdicts: dict  # setup label -> text
    to_target: list[dict]
    performance_model: list[dict]
    unmatched: list[str]
    skipped: list[tuple[str, str, str]]  # (label, status, reason)
    labels: list[str]


# --- science ---------------------------------------------------------------------------------

def _metric_name(key: tuple) -> str | None:
    metric, regime, subspace, _dim, _distribution, solver, epsilon = key
    if metric in ("train_accuracy", "test_accuracy"):
        return f"{metric} {regime}"
    if metric in ("test_gap", "distance_ratio"):
        return metric
    if metric == "sharpness_ratio" and subspace == "full":
        return f"sharpness_ratio[full, {solver}, eps={epsilon:g}]"
    return None  # Raw sharpness and subspace ratios are in the CSVs, not judged here.


def _scale(metric: str) -> str:
    return "ratio" if "ratio" in metric else "pp"


def judge(values: dict, reference: dict, metric: str, setup: str,
          tolerances: Tolerances) -> MetricComparison:
    """The spread-aware rule of the module docstring for one metric."""
    scale = _scale(metric)

    def result(status, difference=None, limit=None, note=""):
        return MetricComparison(setup, metric, scale, dict(values), dict(reference), status,
                                difference, limit, note)

    if not values or not reference:
        side = "this setup" if not values else "the reference"
        return result(UNDETERMINED, note=f"not measured in {side}")
    if len(values) < 2 or len(reference) < 2:
        return result(UNDETERMINED, note=f"{min(len(values), len(reference))} trial(s): no "
                      "spread to judge by; run at least 2 trials")
    own, ref = list(values.values()), list(reference.values())
    if scale == "ratio":
        if any(not (v > 0 and math.isfinite(v)) for v in own + ref):
            return result(UNDETERMINED, note="a ratio is zero or infinite (a sharpness of 0): "
                          "compare the raw sharpness values in setup_runs.csv")
        own, ref = [math.log(v) for v in own], [math.log(v) for v in ref]
    (mean, std), (ref_mean, ref_std) = results.mean_std(own), results.mean_std(ref)
    spread = math.sqrt(std ** 2 / len(own) + ref_std ** 2 / len(ref))
    if scale == "ratio":
        limit = math.log(tolerances.ratio_factor) + tolerances.spread_sigmas * spread
        within = abs(mean - ref_mean) <= limit
        return result(AGREES if within else DIFFERS, math.exp(mean - ref_mean), math.exp(limit))
    limit = tolerances.accuracy_pp + tolerances.spread_sigmas * spread
    within = abs(mean - ref_mean) <= limit
    return result(AGREES if within else DIFFERS, mean - ref_mean, limit)


def _per_trial(group: resultsets.SetupResults, native: bool = False) -> dict:
    """{pair experiment: {metric name: {seed: value}}} of a setup's rows."""
    by_id = {row["run_id"]: row for row in group.runs}
    experiments = collections.defaultdict(list)
    for pair in group.pairs:
        key = resultsets.pair_experiment(pair, by_id)
        if key is not None:
            experiments[key].append(pair)
    measured = group.native_sharpness if native else group.sharpness
    out = {}
    for key, pairs in experiments.items():
        ids = {run_id for pair in pairs for run_id in (pair["sb_run_id"], pair["lb_run_id"])}
        tables = gate.measurements([by_id[i] for i in ids], pairs,
                                   [m for m in measured if m["run_id"] in ids])
        metrics = {}
        for table in tables.values():
            for metric_key, per_seed in table.items():
                name = _metric_name(metric_key)
                if name is not None and per_seed and (not native or "sharpness" in name):
                    metrics[name] = dict(per_seed)
        out[key] = metrics
    return out


# --- speed -----------------------------------------------------------------------------------

def _float(value) -> float | None:
    return None if value in (None, "") else float(value)


def _mean_se(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean, std = results.mean_std(values)
    return mean, (std / math.sqrt(len(values)) if len(values) > 1 else None)


def _speed(group: resultsets.SetupResults, run_ids: set, regime: str) -> dict:
    runs = [row for row in group.runs if row["run_id"] in run_ids and row["regime"] == regime]
    rates, cpu_rates, first_extra, startups = [], [], [], []
    for run in runs:
        history = group.histories.get(run["run_id"], [])
        timed = history[1:]
        rates += [float(row["examples_per_s"]) for row in timed]
        cpu_rates += [float(row["examples"]) / float(row["epoch_cpu_s"]) for row in timed
                      if _float(row["epoch_cpu_s"])]
        if timed:
            mean_epoch = sum(float(row["epoch_time_s"]) for row in timed) / len(timed)
            first_extra.append(float(history[0]["epoch_time_s"]) - mean_epoch)
        startups.append(float(run["startup_s"]))
    mean, se = _mean_se(rates)
    peaks = [_float(row.get("peak_rss_mb")) for row in group.processes]
    device = [_float(row.get("device_peak_mb")) for row in group.processes]
    loads = [_float(row.get("load_average_1min")) for row in group.processes]
    return {
        "setup": group.label, "regime": regime, "replicas": group.replicas,
        "global_batch_size": runs[0]["global_batch_size"] if runs else None,
        "examples_per_s": mean, "examples_per_s_se": se, "timed_epochs": len(rates),
        "examples_per_cpu_s": _mean_se(cpu_rates)[0],
        "startup_s": _mean_se(startups)[0], "first_epoch_extra_s": _mean_se(first_extra)[0],
        "peak_rss_mb": max((p for p in peaks if p is not None), default=None),
        "device_peak_mb": max((d for d in device if d is not None), default=None),
        "max_load_average": max((v for v in loads if v is not None), default=None),
        "scaling_efficiency": None,
    }


def _single_replica_twin(group, groups):
    for other in groups:
        if other.replicas == 1 and other.status == "ran" and all(
                other.setup.get(f) == group.setup.get(f)
                for f in ("device_kind", "precision", "jit", "tf_version")):
            return other
    return None


# --- time to target ----------------------------------------------------------------------------

def _first_reach(history: list[dict], column: str, target: float, below: bool):
    """(updates, training seconds) when ``column`` first reaches ``target``, or None."""
    updates, seconds = 0, 0.0
    for row in history:
        updates += int(row["steps"])
        seconds += float(row["epoch_time_s"])
        value = _float(row.get(column))
        if value is not None and (value <= target if below else value >= target):
            return updates, seconds
    return None


def _to_target(group, run_ids, regime, column, target, below) -> dict:
    runs = [r for r in group.runs if r["run_id"] in run_ids and r["regime"] == regime]
    evaluated = [r for r in runs if any(_float(h.get(column)) is not None
                                        for h in group.histories.get(r["run_id"], []))]
    reached = [hit for hit in (_first_reach(group.histories.get(r["run_id"], []), column,
                                            target, below) for r in evaluated) if hit]
    return {
        "setup": group.label, "regime": regime, "target": column, "target_value": target,
        "runs": len(runs), "evaluated": len(evaluated), "reached": len(reached),
        "updates": _mean_se([u for u, _ in reached])[0],
        "seconds": _mean_se([s for _, s in reached])[0],
    }


# --- the comparison ------------------------------------------------------------------------------

def compare(groups: Sequence[resultsets.SetupResults], *, reference: int = 0,
            tolerances: Tolerances = Tolerances(), targets: Targets = Targets()
            ) -> Comparison:
    """Compares every setup in ``groups`` with ``groups[reference]`` (see the module
    docstring). Raises ValueError when the reference has no finished SB/LB pair."""
    ran = [g for g in groups if g.status == "ran"]
    skipped = [(g.label, g.status, g.reason) for g in groups if g.status != "ran"]
    ref = groups[reference]
    if ref.status != "ran":
        raise ValueError(f"the reference setup {ref.label} did not run ({ref.reason}): "
                         "choose another reference")
    trials = {g.label: _per_trial(g) for g in ran}
    if not trials[ref.label]:
        raise ValueError(f"the reference {ref.label} has no finished SB/LB pair in "
                         f"{ref.folder}: run the experiment first")
    experiment = max(trials[ref.label], key=lambda key: len(
        next(iter(trials[ref.label][key].values()), {})))
    unmatched = []
    for group in ran:
        for key in trials[group.label]:
            if key != experiment:
                unmatched.append(f"{group.label}: {resultsets.describe_experiment(key)} "
                                 f"(not the compared experiment)")
        if experiment not in trials[group.label] and group is not ref:
            unmatched.append(f"{group.label}: has no run of the compared experiment "
                             f"({resultsets.describe_experiment(experiment)})")
    compared = [g for g in ran if experiment in trials[g.label]]
    reference_metrics = trials[ref.label][experiment]
    ref_seeds = set(next(iter(reference_metrics.values())).keys())
    run_ids = {g.label: _experiment_run_ids(g, experiment) for g in compared}

    science, verdicts, native = [], {}, []
    for group in compared:
        metrics = trials[group.label][experiment]
        seeds = set().union(*(set(v) for v in metrics.values())) if metrics else set()
        if seeds != ref_seeds:
            unmatched.append(f"{group.label}: trial seeds {sorted(seeds)} differ from the "
                             f"reference's {sorted(ref_seeds)}; only common seeds compared")
        common = seeds & ref_seeds
        if group is not ref:
            judged = []
            for name in sorted(set(metrics) | set(reference_metrics)):
                own = {s: v for s, v in metrics.get(name, {}).items() if s in common}
                theirs = {s: v for s, v in reference_metrics.get(name, {}).items()
                          if s in common}
                judged.append(judge(own, theirs, name, group.label, tolerances))
            science += judged
            verdicts[group.label] = _verdict(judged)
        for name, per_seed in _per_trial(group, native=True).get(experiment, {}).items():
            float32 = metrics.get(name, {})
            native.append({"setup": group.label, "metric": name,
                           "native": _mean_se(list(per_seed.values()))[0],
                           "float32": _mean_se(list(float32.values()))[0],
                           "precision": group.setup.get("precision")})

    speed = [_speed(g, run_ids[g.label], regime) for g in compared for regime in ("SB", "LB")]
    by_key = {(row["setup"], row["regime"]): row for row in speed}
    for group in compared:
        twin = _single_replica_twin(group, compared)
        if group.replicas > 1 and twin is not None:
            for regime in ("SB", "LB"):
                mine, one = by_key[(group.label, regime)], by_key[(twin.label, regime)]
                if mine["examples_per_s"] and one["examples_per_s"]:
                    mine["scaling_efficiency"] = mine["examples_per_s"] / (
                        group.replicas * one["examples_per_s"])
                    mine["efficiency_against"] = twin.label

    target_values = _targets(ref, run_ids[ref.label], targets)
    to_target = []
    for group in compared:
        for regime in ("SB", "LB"):
            if target_values["train_loss"] is not None:
                to_target.append(_to_target(group, run_ids[group.label], regime, "train_loss",
                                            target_values["train_loss"], below=True))
            if target_values["test_accuracy_pct"] is not None:
                to_target.append(_to_target(group, run_ids[group.label], regime,
                                            "test_accuracy",
                                            target_values["test_accuracy_pct"] / 100,
                                            below=False))
    model = _performance_model(ref, compared, by_key, to_target)
    return Comparison(
        reference=ref.label, experiment=resultsets.describe_experiment(experiment),
        tolerances=tolerances, targets=target_values, speed=speed, science=science,
        native_sharpness=native, verdicts=verdicts, to_target=to_target,
        performance_model=model, unmatched=unmatched, skipped=skipped,
        labels=[g.label for g in compared])


def _experiment_run_ids(group, experiment) -> set:
    by_id = {row["run_id"]: row for row in group.runs}
    return {run_id for pair in group.pairs
            if resultsets.pair_experiment(pair, by_id) == experiment
            for run_id in (pair["sb_run_id"], pair["lb_run_id"])}


def _verdict(judged: list[MetricComparison]) -> str:
    differs = [m for m in judged if m.status == DIFFERS]
    undetermined = [m for m in judged if m.status == UNDETERMINED]
    agreed = [m for m in judged if m.status == AGREES]
    if differs:
        return f"{DIFFERS}: " + "; ".join(m.describe() for m in differs)
    if undetermined or not agreed:
        reasons = sorted({m.note for m in undetermined}) or ["nothing measured to compare"]
        return f"{UNDETERMINED}: " + "; ".join(reasons)
    return f"{AGREES} within tolerance ({len(agreed)} metrics)"


def _targets(ref, run_ids, targets: Targets) -> dict:
    train_loss, accuracy = targets.train_loss, targets.test_accuracy_pct
    runs = [row for row in ref.runs if row["run_id"] in run_ids]
    if train_loss is None:
        finals = collections.defaultdict(list)
        for run in runs:
            finals[run["regime"]].append(float(run["last_epoch_train_loss"]))
        if finals:
            train_loss = max(sum(v) / len(v) for v in finals.values())
    if accuracy is None:
        sb = [100 * float(r["test_accuracy"]) for r in runs if r["regime"] == "SB"]
        if sb:
            accuracy = sum(sb) / len(sb) - targets.accuracy_slack_pp
    return {"train_loss": train_loss, "test_accuracy_pct": accuracy}


def _performance_model(ref, compared, speed, to_target) -> list[dict]:
    """Appendix C with measured throughputs, per setup and target: LB here against SB on
    the reference (see the module docstring)."""
    reached = {(row["setup"], row["regime"], row["target"]): row for row in to_target}
    rows = []
    for group in compared:
        twin = _single_replica_twin(group, compared) or ref
        for target in sorted({row["target"] for row in to_target}):
            sb = reached.get((ref.label, "SB", target))
            lb = reached.get((group.label, "LB", target))
            if sb is None or lb is None:
                continue
            x_sb = speed[(ref.label, "SB")]["examples_per_s"]
            x_lb = speed[(group.label, "LB")]["examples_per_s"]
            x_lb_one = speed[(twin.label, "LB")]["examples_per_s"]
            b_sb = int(speed[(ref.label, "SB")]["global_batch_size"])
            b_lb = int(speed[(group.label, "LB")]["global_batch_size"])
            row = {"setup": group.label, "target": target, "sb_setup": ref.label,
                   "sb_updates": sb["updates"], "sb_seconds": sb["seconds"],
                   "lb_updates": lb["updates"], "lb_seconds": lb["seconds"],
                   "lb_sooner": None, "update_ratio": None, "update_ratio_threshold": None,
                   "required_efficiency": None, "measured_efficiency": None,
                   "replicas": group.replicas}
            if x_sb and x_lb:
                row["update_ratio_threshold"] = (b_sb / x_sb) / (b_lb / x_lb)
            if sb["updates"] and lb["updates"]:
                row["update_ratio"] = lb["updates"] / sb["updates"]
            if sb["seconds"] is not None and lb["seconds"] is not None:
                row["lb_sooner"] = lb["seconds"] < sb["seconds"]
            if lb["updates"] and sb["seconds"] and x_lb_one:
                row["required_efficiency"] = lb["updates"] * b_lb / (
                    group.replicas * x_lb_one * sb["seconds"])
                if x_lb:
                    row["measured_efficiency"] = x_lb / (group.replicas * x_lb_one)
            rows.append(row)
    return rows
