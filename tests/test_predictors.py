"""The which-measure-predicts-the-gap report: Kendall's tau against a pair count by hand, the
exact p-value of a perfect ranking, seeds pooled into one measure, verdicts in plain words, and
the CSV-only binary (outputs, bad input, no TensorFlow import)."""

import itertools
import json
import math
import os
import subprocess
import sys

import pytest

from lbgap_tf import results
from lbgap_tf.reporting import predictors
from tests import binaries

# Test accuracies and two measures of six runs: "sharp" ranks the test error perfectly,
# "noise" is a fixed permutation with tau -1/15 to the test error.
ACCURACIES = (0.91, 0.90, 0.89, 0.88, 0.87, 0.86)
SHARP = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
NOISE = (3.0, 6.0, 1.0, 5.0, 2.0, 4.0)


def _run(index: int, *, accuracy: float, regime: str = "SB", stop_reason: str = "target",
         model: str = "F1") -> dict:
    return {"run_id": f"r{index}", "model": model, "dataset": "fashion_mnist",
            "regime": regime, "global_batch_size": 256 if regime == "SB" else 6000,
            "seed": index % 2, "train_accuracy": 0.99, "test_accuracy": accuracy,
            "test_loss": 0.3 + index / 100, "stop_reason": stop_reason}


def _sharpness(run_id: str, value: float, *, solver: str = "lbfgsb", subspace_seed: int = 0,
               eval_seed: int = 0, eval_examples: int = 10000) -> dict:
    return {"run_id": run_id, "subspace": "random", "subspace_dim": 100,
            "subspace_seed": subspace_seed, "subspace_distribution": "normal",
            "epsilon": 1e-3, "solver": solver, "max_iter": 10, "eval_examples": eval_examples,
            "eval_seed": eval_seed, "eval_batch_size": 5000, "bn_mode": "batch",
            "sharpness": value}


def _curvature(run_id: str, value: float, seed: int = 0) -> dict:
    return {"run_id": run_id, "measure": "trace", "value": value,
            "settings": json.dumps({"tol": 0.05, "min_probes": 10, "max_probes": 100,
                                    "seed": seed}),
            "eval_examples": 10000, "eval_batch_size": 5000, "bn_mode": "batch"}


def _stringify(rows):
    """Rows as CSV gives them back: every value a string."""
    return [{k: str(v) for k, v in row.items()} for row in rows]


def _hand_tau(xs, ys) -> float:
    """Kendall's tau-a from counting concordant and discordant pairs (no ties)."""
    signs = [math.copysign(1, (xs[i] - xs[j]) * (ys[i] - ys[j]))
             for i, j in itertools.combinations(range(len(xs)), 2)]
    return sum(signs) / len(signs)


def _groups(measure_values, accuracies=ACCURACIES, curvature=()):
    runs = _stringify(_run(i, accuracy=a) for i, a in enumerate(accuracies))
    sharp = _stringify(_sharpness(f"r{i}", v) for i, v in enumerate(measure_values))
    return predictors.collect(runs, sharp, _stringify(curvature))


def test_tau_matches_a_pair_count_by_hand_and_verdicts_follow_the_p_value():
    groups, measures, notes = _groups(NOISE)
    assert notes == []
    (correlation_error, correlation_gap) = predictors.correlations(groups, measures, 0.05)
    errors = [1 - a for a in ACCURACIES]
    assert correlation_error.tau == pytest.approx(_hand_tau(NOISE, errors), abs=1e-12)
    assert correlation_error.tau == pytest.approx(-1 / 15)
    assert correlation_error.verdict == predictors.NO_EVIDENCE
    assert correlation_error.n == 6
    # The accuracy gap is 0.99 - test accuracy: the same ranking as the test error.
    assert correlation_gap.tau == pytest.approx(correlation_error.tau)
    lines = predictors.findings([correlation_error], groups, 0.05)
    assert "NO measure predicts the test error" in lines[0]


def test_a_perfect_ranking_has_the_exact_p_value_two_over_n_factorial():
    accuracies = ACCURACIES[:5]
    groups, measures, _ = _groups(SHARP[:5], accuracies)
    found = predictors.correlations(groups, measures, 0.05)
    error = next(c for c in found if c.target == "test_error")
    assert error.tau == pytest.approx(1.0)
    assert error.p_value == pytest.approx(2 / math.factorial(5))
    assert error.verdict == predictors.PREDICTS
    # Reversed: the sharper run tests better, significant the wrong way.
    groups, measures, _ = _groups(tuple(reversed(SHARP[:5])), accuracies)
    error = next(c for c in predictors.correlations(groups, measures, 0.05)
                 if c.target == "test_error")
    assert (error.tau, error.verdict) == (pytest.approx(-1.0), predictors.INVERSE)
    assert "wrong way" in "\n".join(predictors.findings([error], groups, 0.05))


def test_four_runs_can_never_reach_five_percent_and_the_report_says_so():
    groups, measures, _ = _groups(SHARP[:4], ACCURACIES[:4])
    found = predictors.correlations(groups, measures, 0.05)
    error = next(c for c in found if c.target == "test_error")
    assert error.tau == pytest.approx(1.0)
    assert error.p_value == pytest.approx(2 / math.factorial(4))  # 0.083 > 0.05
    assert error.verdict == predictors.NO_EVIDENCE
    text = "\n".join(predictors.findings(found, groups, 0.05))
    assert "NO measure predicts" in text and "2/n!" in text


def test_too_few_or_constant_values_are_undefined_not_a_verdict():
    groups, measures, _ = _groups(SHARP[:2], ACCURACIES[:2])
    (error, _) = predictors.correlations(groups, measures, 0.05)
    assert error.verdict == predictors.UNDEFINED and math.isnan(error.tau)
    assert "at least 3" in error.reason
    groups, measures, _ = _groups((2.0,) * 5, ACCURACIES[:5])
    (error, _) = predictors.correlations(groups, measures, 0.05)
    assert error.verdict == predictors.UNDEFINED and "same on every run" in error.reason


def test_seeds_of_trials_pool_into_one_measure_and_repeats_average():
    runs = _stringify([_run(0, accuracy=0.9), _run(1, accuracy=0.8),
                       _run(2, accuracy=0.7, stop_reason="diverged")])
    sharp = _stringify([
        _sharpness("r0", 1.0, subspace_seed=0, eval_seed=0),
        _sharpness("r1", 3.0, subspace_seed=1, eval_seed=1),  # trial 1's draws
        _sharpness("r1", 5.0, subspace_seed=7, eval_seed=1),  # remeasured with another A
        _sharpness("r0", 2.0, solver="ascent"),
        _sharpness("r2", 9.0),  # the diverged run
        _sharpness("elsewhere", 9.0),
    ])
    curvature = _stringify([_curvature("r0", 10.0, seed=0), _curvature("r1", 20.0, seed=3)])
    groups, measures, notes = predictors.collect(runs, sharp, curvature)
    labels = [m.label for m in measures]
    assert len(labels) == 3, labels  # lbfgsb subspace, ascent subspace, trace
    (runs_measured,) = groups.values()
    by_id = {run.run["run_id"]: run for run in runs_measured}
    assert set(by_id) == {"r0", "r1"}
    lbfgsb, ascent, trace = measures
    assert by_id["r1"].value(lbfgsb) == pytest.approx(4.0)  # mean of 3 and 5
    assert by_id["r1"].value(ascent) is None
    assert by_id["r1"].value(trace) == 20.0 and "Hutchinson" in trace.label
    assert any("r2 diverged" in note for note in notes)
    assert any("2 measurement row(s) of runs not in runs.csv" in note for note in notes)
    long_rows = predictors.run_rows(groups, measures)
    assert {(r["run_id"], r["measure"], r["n_values"]) for r in long_rows} >= {
        ("r1", lbfgsb.label, 2), ("r0", trace.label, 1)}


def test_measures_that_differ_only_in_their_evaluation_data_keep_apart():
    runs = _stringify(_run(i, accuracy=a) for i, a in enumerate(ACCURACIES[:3]))
    sharp = _stringify([_sharpness(f"r{i}", v) for i, v in enumerate(SHARP[:3])]
                       + [_sharpness(f"r{i}", -v, eval_examples=2000)
                          for i, v in enumerate(SHARP[:3])])
    groups, measures, _ = predictors.collect(runs, sharp, [])
    assert [m.label.rsplit("[", 1)[1] for m in measures] == ["10000/5000/batch]",
                                                              "2000/5000/batch]"]
    (runs_measured,) = groups.values()
    assert [run.value(measures[1]) for run in runs_measured] == [-1.0, -2.0, -3.0]
    taus = {c.measure: c.tau for c in predictors.correlations(groups, measures, 0.05)
            if c.target == "test_error"}
    assert sorted(taus.values()) == [pytest.approx(-1.0), pytest.approx(1.0)]


def test_networks_are_separate_populations():
    runs = _stringify([_run(i, accuracy=a, model="F1" if i < 3 else "C1")
                       for i, a in enumerate(ACCURACIES)])
    sharp = _stringify(_sharpness(f"r{i}", v) for i, v in enumerate(SHARP))
    groups, measures, _ = predictors.collect(runs, sharp, [])
    assert sorted(groups) == ["C1 on fashion_mnist", "F1 on fashion_mnist"]
    found = predictors.correlations(groups, measures, 0.05)
    assert {c.n for c in found} == {3}


def _write_folder(folder, accuracies, values) -> None:
    os.makedirs(folder, exist_ok=True)
    for index, (accuracy, value) in enumerate(zip(accuracies, values, strict=True)):
        results.append_row(os.path.join(folder, "runs.csv"), _run(index, accuracy=accuracy))
        results.append_row(os.path.join(folder, "sharpness.csv"), _sharpness(f"r{index}", value))


def test_binary_writes_the_report_and_imports_no_tensorflow(tmp_path):
    folder = str(tmp_path / "gap")
    _write_folder(folder, ACCURACIES[:5], SHARP[:5])
    status, out, err = binaries.run("benchmarks.predictors", f"--results={folder}")
    assert status == 0, err
    assert "predicts the test error at p < 0.05: eps-sharpness subspace 100 normal" in out
    table = results.read_rows(os.path.join(folder, "predictors.csv"))
    error = next(row for row in table if row["target"] == "test_error")
    assert float(error["tau"]) == pytest.approx(1.0)
    assert float(error["p_value"]) == pytest.approx(2 / 120)
    assert len(results.read_rows(os.path.join(folder, "predictors_runs.csv"))) == 5
    for module in ("benchmarks.predictors", "benchmarks.compare"):  # CSV-only binaries
        check = f"import sys; sys.argv = ['x']; import {module}; print('tensorflow' in sys.modules)"
        loaded = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                                check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
        assert loaded.stdout.strip() == "False", module


@pytest.mark.parametrize("args, status, fragment", [
    (("--results={missing}",), 1, "runs.csv does not exist"),
    (("--results={empty}",), 1, "no sharpness.csv or curvature.csv rows"),
    (("--results={empty}", "--alpha=2"), 2, "--alpha must be in (0, 1)"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, status, fragment):
    empty = tmp_path / "empty"
    empty.mkdir()
    results.append_row(str(empty / "runs.csv"), _run(0, accuracy=0.9))
    names = {"missing": str(tmp_path / "missing"), "empty": str(empty)}
    code, _, err = binaries.run("benchmarks.predictors", *(a.format(**names) for a in args))
    assert code == status
    assert fragment in binaries.error_message(err, "predictors.py")
    assert sorted(os.listdir(empty)) == ["runs.csv"]
