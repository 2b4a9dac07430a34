"""The regression gate on hand-made results: passes inside bounds, fails outside them with
messages naming metric, bound and measurement; malformed baselines are clear errors."""

import json
import os

import pytest

from lbgap_tf import gate, train
from tests.gap_rows import make_rows

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETUP = {"device_kind": "CPU: Test CPU", "precision": "float32", "tf_version": "2.21.0"}


def _write(tmp_path, bounds, setup=None, name="b.json"):
    path = tmp_path / name
    path.write_text(json.dumps({"format": gate.FORMAT, "baselines": [
        {"name": "test", "setup": setup if setup is not None else {"device_kind": "CPU"},
         "bounds": bounds}]}))
    return str(path)


@pytest.fixture
def rows():
    # Trial 1 has LB/SB sharpness 3 (< 5); trial 0 has 100.
    return make_rows(sb_test=[0.90, 0.91], lb_test=[0.89, 0.92], sb_sharp=[2.0, 10.0],
                     lb_sharp=[200.0, 30.0])


RATIO = {"model": "F1", "metric": "sharpness_ratio", "subspace": "full", "solver": "lbfgsb",
         "epsilon": 0.001}


def test_passes_inside_the_bounds(tmp_path, rows):
    path = _write(tmp_path, [
        dict(RATIO, min=2.5),
        {"model": "F1", "metric": "test_gap", "min": -2, "max": 2},
        {"model": "F1", "metric": "test_accuracy", "regime": "SB", "min": 89.5},
        {"model": "F1", "metric": "train_accuracy", "regime": "LB", "min": 99},
        {"model": "F1", "metric": "distance_ratio", "min": 3}])
    report = gate.check(path, *rows, SETUP)
    assert report.passed, report.describe()
    assert len(report.checked) == 5
    assert "all hold" in report.describe()


def test_fails_with_every_violated_bound_listed(tmp_path, rows):
    path = _write(tmp_path, [
        dict(RATIO, min=5),
        {"model": "F1", "metric": "test_gap", "min": 0.5, "max": 2},
        {"model": "F1", "metric": "test_accuracy", "regime": "SB", "min": 89.5}])
    report = gate.check(path, *rows, SETUP)
    assert not report.passed
    assert len(report.violations) == 2
    text = report.describe()
    assert "2 violated" in text
    assert "VIOLATED F1 sharpness_ratio[full, lbfgsb, eps 0.001] >= 5: measured mean 51.5" \
        in text
    assert "seed 1: 3" in text
    assert "VIOLATED F1 test_gap in [0.5, 2]" in text


def test_random_subspace_bounds_check_only_rows_of_their_distribution(tmp_path, rows):
    runs, pairs, sharp = rows
    # The same runs measured in a random subspace under two distributions of A: LB/SB 10
    # under N(0, 1) and 0.1 under N(0, 1/p) (the two disagree, as they do on real weights).
    subspace = []
    for distribution, lb_over_sb in (("normal", 10.0), ("normal_1_over_p", 0.1)):
        for row in sharp:
            value = 1.0 * (lb_over_sb if row["regime"] == "LB" else 1.0)
            subspace.append(dict(row, subspace="random", subspace_dim="100",
                                 subspace_seed=row["seed"], subspace_distribution=distribution,
                                 sharpness=str(value)))
    random = dict(RATIO, subspace="random", subspace_dim=100)
    normal = _write(tmp_path, [dict(random, min=5)], name="normal.json")
    default = _write(tmp_path, [dict(random, subspace_distribution="normal", min=5)],
                     name="default.json")
    scaled = _write(tmp_path, [dict(random, subspace_distribution="normal_1_over_p", min=5)],
                    name="scaled.json")
    results = (runs, pairs, sharp + subspace)
    # No distribution named: the default, N(0, 1); its rows hold, the others' never enter.
    assert gate.check(normal, *results, SETUP).passed
    assert gate.check(default, *results, SETUP).passed
    report = gate.check(scaled, *results, SETUP)
    assert not report.passed
    assert "A normal_1_over_p" in report.describe() and "measured mean 0.1" in report.describe()
    derived = gate.derive_baseline(*results, SETUP, name="derived")
    by_distribution = {b.get("subspace_distribution"): b["min"] for b in derived["bounds"]
                       if b.get("subspace") == "random"}
    assert by_distribution == {"normal": 5.0, "normal_1_over_p": 0.05}
    with pytest.raises(gate.GateError, match="subspace_distribution 'cauchy' needs subspace"):
        gate.check(_write(tmp_path, [dict(random, subspace_distribution="cauchy", min=1)],
                          name="bad.json"), *results, SETUP)
    with pytest.raises(gate.GateError, match="needs subspace 'random'"):
        gate.check(_write(tmp_path, [dict(RATIO, subspace_distribution="normal", min=1)],
                          name="bad2.json"), *results, SETUP)


def test_mean_over_trials(tmp_path, rows):
    # Gaps are +1 and -1 pp: each trial is outside [0, 2] once, the mean (0) is inside.
    each = _write(tmp_path, [{"model": "F1", "metric": "test_gap", "min": 0, "max": 2}])
    mean = _write(tmp_path, [{"model": "F1", "metric": "test_gap", "min": 0, "max": 2,
                              "over": "mean"}], name="mean.json")
    assert not gate.check(each, *rows, SETUP).passed
    assert gate.check(mean, *rows, SETUP).passed


def test_missing_measurement_is_a_violation_and_other_networks_are_skipped(tmp_path, rows):
    path = _write(tmp_path, [
        dict(RATIO, solver="ascent", min=1),
        {"model": "C1", "metric": "test_gap", "min": 0}])
    report = gate.check(path, *rows, SETUP)
    assert [v.describe() for v in report.violations] == [
        "F1 sharpness_ratio[full, ascent, eps 0.001] >= 1: not measured"]
    assert len(report.skipped) == 1 and "C1" in report.describe()


def test_baselines_of_other_setups_do_not_apply(tmp_path, rows):
    path = _write(tmp_path, [dict(RATIO, min=1)], setup={"device_kind": "GPU"})
    with pytest.raises(gate.GateError, match="no baseline .* matches this setup"):
        gate.check(path, *rows, SETUP)


def test_setup_prefixes_match_at_separators():
    assert gate.setup_matches({"tf_version": "2.21", "device_kind": "CPU"}, SETUP)
    assert not gate.setup_matches({"tf_version": "2.2"}, SETUP)
    assert not gate.setup_matches({"precision": "mixed_float16"}, SETUP)


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    (json.dumps({"baselines": []}), "lacks \"format\""),
    (json.dumps({"format": gate.FORMAT, "baselines": []}), "no \"baselines\" list"),
    (json.dumps({"format": gate.FORMAT, "baselines": [{"bounds": [
        {"model": "F1", "metric": "sharpness_ratio", "subspace": "full", "solver": "lbfgsb",
         "epsilon": 0.001}]}]}), "needs 'min', 'max' or both"),
    (json.dumps({"format": gate.FORMAT, "baselines": [{"bounds": [
        {"model": "F1", "metric": "loss", "min": 1}]}]}), "unknown metric 'loss'"),
    (json.dumps({"format": gate.FORMAT, "baselines": [{"bounds": [
        {"model": "F1", "metric": "test_accuracy", "min": 1}]}]}), "needs 'regime'"),
    (json.dumps({"format": gate.FORMAT, "baselines": [{"bounds": [
        {"model": "F1", "metric": "test_gap", "min": 3, "max": 1}]}]}), "min 3 is larger"),
    (json.dumps({"format": gate.FORMAT, "baselines": [{"bounds": [
        {"model": "F1", "metric": "test_gap", "min": 1, "typo": 2}]}]}), "unknown key"),
])
def test_malformed_baselines_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(gate.GateError, match=message):
        gate.load_baselines(str(path))


def test_missing_baseline_file(tmp_path):
    with pytest.raises(gate.GateError, match="does not exist.*--write_baseline"):
        gate.load_baselines(str(tmp_path / "none.json"))


def test_derived_baseline_holds_and_a_tightened_one_fails(tmp_path, rows):
    entry = gate.derive_baseline(*rows, SETUP, name="derived", accuracy_tolerance=1.0,
                                 ratio_tolerance=2.0)
    path = str(tmp_path / "derived.json")
    gate.write_baseline(path, entry)
    assert gate.check(path, *rows, SETUP).passed
    ratio = next(b for b in entry["bounds"] if b["metric"] == "sharpness_ratio")
    assert ratio["min"] == pytest.approx(1.5)  # Smallest trial ratio 3, tolerance 2x.
    ratio["min"] = 4.0
    gate.write_baseline(path, entry)  # Same name and setup: replaces the entry.
    with open(path, encoding="utf-8") as handle:
        assert len(json.load(handle)["baselines"]) == 1
    report = gate.check(path, *rows, SETUP)
    assert [v.bound.metric for v in report.violations] == ["sharpness_ratio"]


def test_a_gate_that_checked_no_bound_fails(tmp_path, rows):
    path = _write(tmp_path, [{"model": "C1", "metric": "test_gap", "min": 0}])
    report = gate.check(path, *rows, SETUP)
    assert not report.passed and not report.violations and len(report.skipped) == 1
    assert report.failures == (
        "no bound checked: none of the 1 bound(s) names a network of these results "
        "(F1 on fashion_mnist)",)
    text = report.describe()
    assert text.splitlines()[0] == "regression gate: 0 bound(s) from test: FAILED"
    assert "  FAILED no bound checked" in text
    assert report.reason("b.json").startswith("no bound checked")


def test_a_network_with_runs_but_no_pairs_fails(tmp_path, rows):
    runs, _, sharp = rows
    path = _write(tmp_path, [{"model": "F1", "metric": "test_gap", "min": -100}])
    report = gate.check(path, runs, [], sharp, SETUP)
    assert not report.passed
    assert report.failures[0].startswith(
        "F1 on fashion_mnist: 4 run row(s) but no SB/LB pair row")
    assert [v.describe() for v in report.violations] == [
        "F1 test_gap >= -100: not measured (no SB/LB pair row)"]
    assert report.reason("b.json").startswith(
        "1 bound(s) of b.json violated; F1 on fashion_mnist: 4 run row(s) but no SB/LB pair")


def test_a_diverged_run_fails_the_gate_though_its_other_trials_pass(tmp_path, rows):
    runs, pairs, sharp = rows
    path = _write(tmp_path, [{"model": "F1", "metric": "test_gap", "min": -100}])
    assert gate.check(path, runs, pairs, sharp, SETUP).passed
    diverged = {"run_id": "F1-LB-2", "model": "F1", "dataset": "fashion_mnist", "regime": "LB",
                "stop_reason": "diverged", "epochs_run": "3", "train_accuracy": "",
                "test_accuracy": "", "device_kind": "CPU: Test CPU", "precision": "float32",
                "tf_version": "2.21.0"}
    report = gate.check(path, [*runs, diverged], pairs, sharp, SETUP)
    assert not report.passed and not report.violations
    assert report.failures == ("run F1-LB-2 (F1 LB) diverged at epoch 3: its trial has no "
                               "pair and no sharpness",)
    assert gate.DIVERGED == train.DIVERGED  # The gate reads the rows train writes.


def test_a_ratio_with_a_zero_operand_satisfies_no_bound_and_names_it(tmp_path):
    # Trial 0: both 0 (a solver stuck at y = 0); trial 1: SB 0; trial 2: LB 0.
    rows = make_rows(sb_test=[0.9] * 3, lb_test=[0.9] * 3, sb_sharp=[0.0, 0.0, 2.0],
                     lb_sharp=[0.0, 5.0, 0.0], distance_ratio=[4.0, 4.0, 0.0])
    runs, pairs, sharp = rows
    pairs[2]["lb_distance"], pairs[2]["sb_distance"] = "0.0", "3.0"  # LB never moved.
    pairs[2]["distance_ratio"] = "inf"
    for over in ("each", "mean"):
        path = _write(tmp_path, [dict(RATIO, min=0, over=over),
                                 {"model": "F1", "metric": "distance_ratio", "min": 0,
                                  "over": over}])
        report = gate.check(path, runs, pairs, sharp, SETUP)
        assert len(report.violations) == 2, report.describe()
        text = report.describe()
        assert ("seed 0: undefined, LB and SB sharpness both 0: the solver found nothing "
                "above f(x), stuck at y = 0") in text
        assert "seed 1: undefined, SB sharpness is 0 (LB 5)" in text
        assert "seed 2: undefined, LB sharpness is 0 (SB 2)" in text
        assert "seed 2: undefined, LB distance from x0 is 0 (SB 3)" in text
        assert "measured mean undefined over 3 trial(s)" in text
    table = gate.measurements(*rows)[("F1", "fashion_mnist")]
    assert table[("distance_ratio", None, None, None, None, None, None)][0] == 4.0
    with pytest.raises(gate.GateError, match="seed 2 is undefined, LB distance from x0 is 0"):
        gate.derive_baseline(*rows, SETUP, name="broken")


def test_infinite_values_satisfy_no_bound():
    bound = gate.Bound(model="F1", metric="test_gap", min=0)
    assert bound.holds(1.0)
    assert not bound.holds(float("inf")) and not bound.holds(float("nan"))


def test_repeated_rows_count_once_as_in_the_tables(tmp_path, rows):
    from lbgap_tf import tables

    runs, pairs, sharp = rows
    # A second process recorded every pair and measurement again, with other numbers.
    again_pairs = [dict(pair, test_gap_pp="50.0") for pair in pairs]
    again_sharp = [dict(row, sharpness="1e6") for row in sharp]
    doubled = (runs + runs, pairs + again_pairs, sharp + again_sharp)
    assert gate.measurements(*doubled) == gate.measurements(*rows)
    assert tables.table2(*doubled[:2]) == tables.table2(runs, pairs)
    assert tables.sharpness_table(doubled[2], subspace="full") == tables.sharpness_table(
        sharp, subspace="full")
    [row] = tables.sharpness_table(doubled[2], subspace="full")
    per_seed = gate.measurements(*doubled)[("F1", "fashion_mnist")][
        ("sharpness", "LB", "full", None, None, "lbfgsb", 1e-3)]
    assert row["trials"] == len(per_seed) == 2
    assert row["eps0.001_LB_mean"] == pytest.approx(sum(per_seed.values()) / 2) == 115.0


# The flagfile whose results each shipped baseline gates (benchmarks.tf_benchmarks.CASES).
SHIPPED = {"cpu_F1_fmnist.json": "gap_F1_fmnist.flags", "smoke_synthetic.json": "gap_smoke.flags"}


def _flagfile(name):
    values = {}
    with open(os.path.join(REPO, "flags", "cpu", name), encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("--"):
                key, value = line.strip()[2:].split("=", 1)
                values[key] = value.split(",")
    return values


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_baselines_load_and_bound_only_what_their_preset_measures(name):
    assert sorted(os.listdir(os.path.join(REPO, "baselines"))) == sorted(SHIPPED)
    preset = _flagfile(SHIPPED[name])
    baselines = gate.load_baselines(os.path.join(REPO, "baselines", name))
    epsilons = {float(eps) for eps in preset["epsilons"]}
    dims = {int(dim) for dim in preset["subspace_dims"] if dim != "full"}
    metrics = set()
    for baseline in baselines:
        setup = baseline["setup"]
        assert set(setup) <= set(gate.SETUP_KEYS) and setup["device_kind"].startswith("CPU")
        assert gate.setup_matches(setup, {
            "device_kind": setup["device_kind"] + ": some model", "precision": "float32",
            "tf_version": setup.get("tf_version", "2.21") + ".0"})
        for bound in baseline["bounds"]:
            metrics.add(bound.metric)
            assert bound.model in preset["models"] and bound.dataset in preset["dataset"]
            if bound.metric in ("sharpness", "sharpness_ratio"):
                assert bound.solver in preset["solvers"] and bound.epsilon in epsilons, bound
                if bound.subspace == "full":
                    assert "full" in preset["subspace_dims"] and bound.subspace_dim is None
                else:
                    assert bound.subspace_dim in dims, bound
            if bound.metric.endswith("accuracy"):
                assert 0 <= bound.min <= 100 and (bound.max is None or bound.max <= 100)
    # The file gates accuracy, the gap or distance ratio, and the sharpness ratio.
    assert metrics >= {"train_accuracy", "distance_ratio", "sharpness_ratio"}
