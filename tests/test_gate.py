"""The regression gate on hand-made results: passes inside bounds, fails outside them with
messages naming metric, bound and measurement; malformed baselines are clear errors."""

import json

import pytest

from lbgap_tf import gate
from tests.gap_rows import make_rows

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
