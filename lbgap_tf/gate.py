"""The regression gate: measured generalization-gap results against a baseline of bounds.

A baseline file is JSON::

    {"format": "lbgap_tf.baseline/1",
     "baselines": [
       {"name": "F1 Fashion-MNIST, CPU preset",
        "setup": {"device_kind": "CPU", "precision": "float32", "tf_version": "2.21"},
        "bounds": [
          {"model": "F1", "metric": "sharpness_ratio", "subspace": "full",
           "solver": "lbfgsb", "epsilon": 0.001, "min": 5},
          {"model": "F1", "metric": "test_gap", "min": -3, "max": 3, "over": "mean"},
          {"model": "F1", "metric": "train_accuracy", "regime": "SB", "min": 99}]}]}

Several baselines (one per accelerator setup) live side by side; those whose ``setup`` matches
the results apply. A setup value matches when it is equal to the measured one or a prefix of
it at a separator: device_kind "CPU" matches "CPU: AMD EPYC 7B13", tf_version "2.21" matches
"2.21.0".

Metrics, all per trial (one SB/LB pair), in the units of the tables:

- ``train_accuracy``, ``test_accuracy`` (%, needs ``regime``);
- ``test_gap``: SB - LB test accuracy in percentage points;
- ``distance_ratio``: ||x_SB - x0|| / ||x_LB - x0||;
- ``sharpness`` (needs ``regime``) and ``sharpness_ratio`` (LB / SB), both with ``subspace``
  ("full" or "random"), ``solver`` and ``epsilon``, optionally ``subspace_dim`` and, for a
  random subspace, ``subspace_distribution`` (the distribution of A; default "normal", the
  presets' Table 4 choice): a bound only ever checks rows of its own distribution.

``over`` is "each" (default: every trial must lie within [min, max]) or "mean" (the mean over
trials must). A bound on a network that was not run is skipped and listed; a bound whose
measurement is missing for a network that was run is a violation.

A gate that checked nothing fails, never passes: when no bound names a network of the results,
when a network has run rows but no SB/LB pair row (e.g. the pairs of other settings), when a
run diverged (its trial has no pair), or when no baseline of the file matches the setup
(``GateError``). A ratio with an operand that is 0
or not finite (LB and SB sharpness both 0: a solver stuck at y = 0, the false flat minimum) is
undefined and satisfies no bound; the report names the operand. Repeated rows count once
(``tables.unique_pairs``, ``tables.unique_measurements``), as in the tables.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
from collections.abc import Iterable

from lbgap_tf.subspaces import DEFAULT_SUBSPACE_DISTRIBUTION, SUBSPACE_DISTRIBUTIONS
from lbgap_tf.tables import unique_measurements, unique_pairs, write_text_atomic

FORMAT = "lbgap_tf.baseline/1"
METRICS = ("train_accuracy", "test_accuracy", "test_gap", "distance_ratio", "sharpness",
           "sharpness_ratio")
_NEEDS_REGIME = ("train_accuracy", "test_accuracy", "sharpness")
_NEEDS_SPACE = ("sharpness", "sharpness_ratio")
_BOUND_KEYS = {"model", "dataset", "metric", "regime", "subspace", "subspace_dim",
               "subspace_distribution", "solver", "epsilon", "min", "max", "over"}
SETUP_KEYS = ("device_kind", "precision", "tf_version")
DIVERGED = "diverged"  # train.DIVERGED: the stop reason of a run whose loss became NaN/inf.
_NO_SPACE = (None, None, None, None, None)  # subspace, dim, distribution, solver, epsilon


class GateError(ValueError):
    """A baseline file is malformed or does not fit the results; the message says how."""


@dataclasses.dataclass(frozen=True)
class Bound:
    """One bound of a baseline: ``min <= metric <= max`` (either side may be None)."""

    model: str
    metric: str
    min: float | None = None
    max: float | None = None
    over: str = "each"
    dataset: str | None = None
    regime: str | None = None
    subspace: str | None = None
    subspace_dim: int | None = None
    subspace_distribution: str | None = None
    solver: str | None = None
    epsilon: float | None = None

    def describe(self) -> str:
        """E.g. "F1 sharpness_ratio[full, lbfgsb, eps 0.001] >= 5"."""
        details = [value for value in (self.regime, self.subspace) if value]
        if self.subspace_dim:
            details.append(f"p={self.subspace_dim}")
        if self.subspace_distribution:
            details.append(f"A {self.subspace_distribution}")
        if self.solver:
            details.append(self.solver)
        if self.epsilon is not None:
            details.append(f"eps {self.epsilon:g}")
        name = f"{self.model} {self.metric}" + (f"[{', '.join(details)}]" if details else "")
        if self.over == "mean":
            name = f"mean {name}"
        if self.min is not None and self.max is not None:
            return f"{name} in [{self.min:g}, {self.max:g}]"
        if self.min is not None:
            return f"{name} >= {self.min:g}"
        return f"{name} <= {self.max:g}"

    def holds(self, value: float) -> bool:
        """Whether ``value`` lies within the bound; a value that is not finite (an undefined
        ratio, a diverged run) never does."""
        if not math.isfinite(value):
            return False
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


class UndefinedRatio(float):
    """A ratio with an operand that is 0 or not finite: NaN, so it satisfies no bound, with
    ``reason`` naming the operand (e.g. "LB and SB sharpness both 0 ...")."""

    reason: str

    def __new__(cls, reason: str) -> UndefinedRatio:
        value = super().__new__(cls, math.nan)
        value.reason = reason
        return value


def ratio(numerator: float, denominator: float, names: tuple[str, str], quantity: str
          ) -> float:
    """``numerator / denominator``, or an ``UndefinedRatio`` when an operand is 0 or not
    finite; ``names`` name the operands (e.g. ("LB", "SB")) and ``quantity`` what they are."""
    operands = dict(zip(names, (numerator, denominator), strict=True))
    bad = {name: value for name, value in operands.items()
           if value == 0 or not math.isfinite(value)}
    if not bad:
        return numerator / denominator
    if len(bad) == 2 and all(value == 0 for value in bad.values()):
        extra = (": the solver found nothing above f(x), stuck at y = 0 (a false flat minimum)"
                 if quantity == "sharpness" else "")
        return UndefinedRatio(f"{names[0]} and {names[1]} {quantity} both 0{extra}")
    described = ", ".join(f"{name} {quantity} is {value:g}" for name, value in bad.items())
    good = ", ".join(f"{name} {value:g}" for name, value in operands.items() if name not in bad)
    return UndefinedRatio(described + (f" ({good})" if good else ""))


def describe_value(value: float) -> str:
    """A per-trial value for a report: 4 significant digits, or why a ratio is undefined."""
    if isinstance(value, UndefinedRatio):
        return f"undefined, {value.reason}"
    return f"{value:.4g}"


@dataclasses.dataclass(frozen=True)
class Violation:
    """A bound that does not hold: what was measured, per trial seed."""

    bound: Bound
    measured: dict  # trial seed -> value (an empty dict: nothing measured)
    why: str = ""  # Why nothing was measured, when known.

    def describe(self) -> str:
        if not self.measured:
            return f"{self.bound.describe()}: not measured" + (f" ({self.why})" if self.why
                                                               else "")
        values = ", ".join(f"seed {seed}: {describe_value(value)}"
                           for seed, value in self.measured.items())
        mean = sum(self.measured.values()) / len(self.measured)
        mean_text = f"{mean:.4g}" if math.isfinite(mean) else "undefined"
        return (f"{self.bound.describe()}: measured mean {mean_text} over "
                f"{len(self.measured)} trial(s) ({values})")


@dataclasses.dataclass(frozen=True)
class GateReport:
    """The gate's verdict: checked bounds, violations, bounds skipped (network not run) and
    failures of the gate itself (it checked nothing, or a network's pairs are missing)."""

    checked: tuple[Bound, ...]
    violations: tuple[Violation, ...]
    skipped: tuple[Bound, ...]
    baselines: tuple[str, ...]
    failures: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return bool(self.checked) and not self.violations and not self.failures

    def reason(self, baseline_path: str) -> str:
        """Why the gate failed, in one line (for the binary's error line)."""
        parts = [f"{len(self.violations)} bound(s) of {baseline_path} violated"] \
            if self.violations else []
        return "; ".join(parts + list(self.failures))

    def describe(self) -> str:
        verdict = "all hold" if self.passed else ", ".join(
            ([f"{len(self.violations)} violated"] if self.violations else [])
            + (["FAILED"] if self.failures else []))
        lines = [f"regression gate: {len(self.checked)} bound(s) from "
                 f"{', '.join(self.baselines)}: {verdict}"]
        lines += [f"  FAILED {failure}" for failure in self.failures]
        lines += [f"  VIOLATED {violation.describe()}" for violation in self.violations]
        lines += [f"  skipped {bound.describe()} (network not in these results)"
                  for bound in self.skipped]
        return "\n".join(lines)


# --- measurements ---------------------------------------------------------------------------

def measurements(run_rows: Iterable[dict], pair_rows: Iterable[dict],
                 sharpness_rows: Iterable[dict]) -> dict:
    """Per-trial metric values: ``{(model, dataset): {metric_key: {seed: value}}}``.

    ``metric_key`` is ``(metric, regime, subspace, subspace_dim, subspace_distribution,
    solver, epsilon)`` with None where a part does not apply (the distribution of A only
    applies to a random subspace). Ratios (``distance_ratio``, ``sharpness_ratio``) with an
    operand that is 0 or not finite are ``UndefinedRatio``s. Repeated pair and sharpness rows
    count once (the first of each key), as in ``tables``.
    """
    runs = {row["run_id"]: row for row in run_rows}
    values = collections.defaultdict(lambda: collections.defaultdict(dict))
    regime_of_run = {}
    for pair in unique_pairs(pair_rows):
        network, seed = (pair["model"], pair["dataset"]), int(pair["seed"])
        table = values[network]
        for regime in ("SB", "LB"):
            run_id = pair[f"{regime.lower()}_run_id"]
            regime_of_run[run_id] = (network, seed)
            for split in ("train", "test"):
                accuracy = 100 * float(runs[run_id][f"{split}_accuracy"])
                table[(f"{split}_accuracy", regime, *_NO_SPACE)][seed] = accuracy
        table[("test_gap", None, *_NO_SPACE)][seed] = float(pair["test_gap_pp"])
        table[("distance_ratio", None, *_NO_SPACE)][seed] = ratio(
            float(pair["sb_distance"]), float(pair["lb_distance"]), ("SB", "LB"),
            "distance from x0")
    for row in unique_measurements(sharpness_rows):
        if row["run_id"] not in regime_of_run:
            continue
        network, seed = regime_of_run[row["run_id"]]
        dim = int(row["subspace_dim"]) if row["subspace_dim"] else None
        distribution = (row.get("subspace_distribution") or None
                        if row["subspace"] == "random" else None)
        key = ("sharpness", row["regime"], row["subspace"], dim, distribution, row["solver"],
               float(row["epsilon"]))
        values[network][key][seed] = float(row["sharpness"])
    for table in values.values():
        for key in [k for k in table if k[0] == "sharpness" and k[1] == "SB"]:
            lb = table.get(("sharpness", "LB", *key[2:]), {})
            sb = table[key]
            table[("sharpness_ratio", None, *key[2:])] = {
                seed: ratio(lb[seed], sb[seed], ("LB", "SB"), "sharpness")
                for seed in sb if seed in lb}
    return values


def matching_values(bound: Bound, table: dict) -> dict:
    """The per-seed values of ``table`` (one network of ``measurements``) that ``bound``
    bounds; {} when none was measured."""
    for (metric, regime, subspace, dim, distribution, solver, epsilon), per_seed in table.items():
        if metric != bound.metric or regime != bound.regime or subspace != bound.subspace:
            continue
        if bound.subspace_dim is not None and dim != bound.subspace_dim:
            continue
        if subspace == "random" and distribution != bound.subspace_distribution:
            continue
        if solver != bound.solver:
            continue
        if bound.epsilon is not None and not math.isclose(epsilon, bound.epsilon):
            continue
        return per_seed
    return {}


def check(baseline_path: str, run_rows: list[dict], pair_rows: list[dict],
          sharpness_rows: list[dict], setup: dict) -> GateReport:
    """Checks the results against every bound of the baselines in ``baseline_path`` whose
    setup matches ``setup`` (keys ``SETUP_KEYS``)."""
    baselines = [b for b in load_baselines(baseline_path) if setup_matches(b["setup"], setup)]
    if not baselines:
        described = ", ".join(f"{key}={setup.get(key)!r}" for key in SETUP_KEYS)
        raise GateError(
            f"no baseline in {baseline_path} matches this setup ({described}): add one for it, "
            "e.g. derived from these results with --write_baseline")
    table = measurements(run_rows, pair_rows, sharpness_rows)
    run_networks = collections.Counter((row["model"], row["dataset"]) for row in run_rows)
    unpaired = sorted(set(run_networks) - set(table))
    failures = [f"{model} on {dataset}: {run_networks[(model, dataset)]} run row(s) but no "
                "SB/LB pair row, so none of its bounds can be checked (were the pairs "
                "recorded for other settings?)" for model, dataset in unpaired]
    failures += [f"run {row['run_id']} ({row['model']} {row.get('regime', '')}) diverged at "
                 f"epoch {row.get('epochs_run', '?')}: its trial has no pair and no sharpness"
                 for row in run_rows if row.get("stop_reason") == DIVERGED]
    checked, violations, skipped = [], [], []
    for baseline in baselines:
        for bound in baseline["bounds"]:
            networks = [n for n in sorted(set(table) | set(run_networks)) if n[0] == bound.model
                        and (bound.dataset is None or n[1] == bound.dataset)]
            if not networks:
                skipped.append(bound)
                continue
            checked.append(bound)
            for network in networks:
                if network not in table:
                    violations.append(Violation(bound, {}, "no SB/LB pair row"))
                    continue
                per_seed = matching_values(bound, table[network])
                if not per_seed:
                    violations.append(Violation(bound, {}))
                    continue
                if bound.over == "mean":
                    ok = bound.holds(sum(per_seed.values()) / len(per_seed))
                else:
                    ok = all(bound.holds(value) for value in per_seed.values())
                if not ok:
                    violations.append(Violation(bound, dict(sorted(per_seed.items()))))
    if not checked:
        total = sum(len(baseline["bounds"]) for baseline in baselines)
        results_networks = ", ".join(f"{m} on {d}" for m, d in sorted(run_networks)) or "none"
        failures.insert(0, f"no bound checked: none of the {total} bound(s) names a network "
                           f"of these results ({results_networks})")
    return GateReport(tuple(checked), tuple(violations), tuple(skipped),
                      tuple(b["name"] for b in baselines), tuple(failures))


def setup_matches(expected: dict, measured: dict) -> bool:
    """Whether a baseline's ``setup`` applies to the measured setup (equal values, or the
    baseline's a prefix at a separator: "CPU" matches "CPU: AMD EPYC")."""
    for key, want in expected.items():
        have = str(measured.get(key, ""))
        want = str(want)
        if have != want and not any(have.startswith(want + sep) for sep in (":", ".", " ")):
            return False
    return True


# --- baseline files ---------------------------------------------------------------------------

def _bound_from_json(item, where: str) -> Bound:
    if not isinstance(item, dict):
        raise GateError(f"{where} must be a JSON object, got {item!r}")
    unknown = set(item) - _BOUND_KEYS
    if unknown:
        raise GateError(f"{where} has unknown key(s) {sorted(unknown)}: allowed are "
                        f"{sorted(_BOUND_KEYS)}")
    if "model" not in item or "metric" not in item:
        raise GateError(f"{where} needs 'model' and 'metric'")
    metric = item["metric"]
    if metric not in METRICS:
        raise GateError(f"{where} has unknown metric {metric!r}: choose one of "
                        f"{', '.join(METRICS)}")
    if metric in _NEEDS_REGIME and item.get("regime") not in ("SB", "LB"):
        raise GateError(f"{where}: metric {metric} needs 'regime' 'SB' or 'LB'")
    if metric in _NEEDS_SPACE:
        if item.get("subspace") not in ("full", "random"):
            raise GateError(f"{where}: metric {metric} needs 'subspace' 'full' or 'random'")
        if "solver" not in item or "epsilon" not in item:
            raise GateError(f"{where}: metric {metric} needs 'solver' and 'epsilon'")
    distribution = item.get("subspace_distribution")
    if distribution is not None and (item.get("subspace") != "random"
                                     or distribution not in SUBSPACE_DISTRIBUTIONS):
        raise GateError(f"{where}: subspace_distribution {distribution!r} needs subspace "
                        f"'random' and one of {', '.join(SUBSPACE_DISTRIBUTIONS)}")
    if item.get("subspace") == "random" and distribution is None:
        distribution = DEFAULT_SUBSPACE_DISTRIBUTION
    low, high = item.get("min"), item.get("max")
    for name, value in (("min", low), ("max", high)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise GateError(f"{where}: {name} must be a number, got {value!r}")
    if low is None and high is None:
        raise GateError(f"{where} needs 'min', 'max' or both")
    if low is not None and high is not None and low > high:
        raise GateError(f"{where}: min {low} is larger than max {high}")
    over = item.get("over", "each")
    if over not in ("each", "mean"):
        raise GateError(f"{where}: 'over' must be 'each' or 'mean', got {over!r}")
    return Bound(model=item["model"], metric=metric, min=low, max=high, over=over,
                 dataset=item.get("dataset"), regime=item.get("regime"),
                 subspace=item.get("subspace"), subspace_dim=item.get("subspace_dim"),
                 subspace_distribution=distribution, solver=item.get("solver"),
                 epsilon=item.get("epsilon"))


def load_baselines(path: str) -> list[dict]:
    """The baselines of a file as ``{"name", "setup", "bounds": [Bound]}`` dicts.

    Raises:
      GateError: missing file, invalid JSON or a malformed entry (named with its position).
    """
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except FileNotFoundError as error:
        raise GateError(f"baseline file {path} does not exist: pass an existing --baseline, "
                        "or create one with --write_baseline") from error
    except json.JSONDecodeError as error:
        raise GateError(f"baseline file {path} is not valid JSON ({error}): fix the file "
                        "or write it anew with --write_baseline") from error
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise GateError(f"baseline file {path} lacks \"format\": \"{FORMAT}\": it is not a "
                        "baseline of this version; write one with --write_baseline")
    entries = document.get("baselines")
    if not isinstance(entries, list) or not entries:
        raise GateError(f"baseline file {path} has no \"baselines\" list")
    loaded = []
    for index, entry in enumerate(entries):
        where = f"{path}: baselines[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("bounds"), list) \
                or not isinstance(entry.get("setup", {}), dict):
            raise GateError(f"{where} must be an object with a \"bounds\" list and a "
                            "\"setup\" object")
        unknown = set(entry.get("setup", {})) - set(SETUP_KEYS)
        if unknown:
            raise GateError(f"{where}: unknown setup key(s) {sorted(unknown)}: allowed are "
                            f"{', '.join(SETUP_KEYS)}")
        bounds = [_bound_from_json(item, f"{where}.bounds[{i}]")
                  for i, item in enumerate(entry["bounds"])]
        loaded.append({"name": entry.get("name", f"baselines[{index}]"),
                       "setup": entry.get("setup", {}), "bounds": bounds})
    return loaded


def derive_baseline(run_rows: list[dict], pair_rows: list[dict], sharpness_rows: list[dict],
                    setup: dict, *, name: str, accuracy_tolerance: float = 2.0,
                    ratio_tolerance: float = 2.0) -> dict:
    """A baseline entry whose bounds the given results satisfy with stated tolerances.

    Accuracies (train, test, per regime) get a lower bound ``accuracy_tolerance`` percentage
    points below the worst trial; the SB - LB test gap a band ``accuracy_tolerance`` around
    the trials' range; ratios (sharpness LB/SB, distance) a lower bound ``ratio_tolerance``
    times below the smallest trial. Raw sharpness values get no bound: they vary too much
    across solvers and setups to gate on.
    """
    if accuracy_tolerance < 0 or ratio_tolerance < 1:
        raise GateError("tolerances: accuracy_tolerance must be >= 0 and ratio_tolerance >= 1")
    bounds = []
    table = measurements(run_rows, pair_rows, sharpness_rows)
    if not table:
        raise GateError("no finished SB/LB pair in these results to derive a baseline from: "
                        "run the gap benchmark first")
    for (model, dataset), metrics in sorted(table.items()):
        for (metric, regime, subspace, dim, distribution, solver, epsilon), per_seed in sorted(
                metrics.items(), key=lambda item: str(item[0])):
            if not per_seed or metric == "sharpness":
                continue
            undefined = {seed: value for seed, value in per_seed.items()
                         if not math.isfinite(value)}
            if undefined:
                seed, value = next(iter(undefined.items()))
                raise GateError(
                    f"cannot derive a bound on {model} {metric}"
                    f"{f' ({subspace}, {solver}, eps {epsilon:g})' if subspace else ''}: seed "
                    f"{seed} is {describe_value(value)}; fix these results first")
            worst, best = min(per_seed.values()), max(per_seed.values())
            bound = {"model": model, "dataset": dataset, "metric": metric}
            if regime:
                bound["regime"] = regime
            if subspace:
                bound.update(subspace=subspace, solver=solver, epsilon=epsilon)
                if dim:
                    bound["subspace_dim"] = dim
                if distribution:
                    bound["subspace_distribution"] = distribution
            if metric.endswith("accuracy"):
                bound["min"] = round(worst - accuracy_tolerance, 2)
            elif metric == "test_gap":
                bound.update(min=round(worst - accuracy_tolerance, 2),
                             max=round(best + accuracy_tolerance, 2))
            else:
                bound["min"] = round(worst / ratio_tolerance, 3)
            bounds.append(bound)
    return {"name": name, "setup": {key: setup[key] for key in SETUP_KEYS if setup.get(key)},
            "bounds": bounds}


def write_baseline(path: str, entry: dict) -> None:
    """Adds ``entry`` to the baseline file ``path`` (created if missing), replacing an entry
    of the same name and setup; the file is replaced atomically."""
    document = {"format": FORMAT, "baselines": []}
    if os.path.exists(path):
        load_baselines(path)  # Refuse to extend a malformed file.
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    document["baselines"] = [
        b for b in document["baselines"]
        if (b.get("name"), b.get("setup")) != (entry["name"], entry["setup"])] + [entry]
    write_text_atomic(path, json.dumps(document, indent=2) + "\n")


def setup_of(run_rows: list[dict]) -> dict:
    """The setup (``SETUP_KEYS``) the runs were measured on; several setups are an error."""
    setups = {tuple(row.get(key, "") for key in SETUP_KEYS) for row in run_rows}
    if len(setups) != 1:
        raise GateError(
            f"the results mix {len(setups)} setups {sorted(setups)}: gate each setup's "
            "results from its own --output_dir")
    return dict(zip(SETUP_KEYS, setups.pop(), strict=True))

