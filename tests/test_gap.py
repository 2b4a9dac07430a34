"""The generalization-gap experiment end to end on a tiny synthetic task, its resume, and the
binary's gate exit codes."""

import csv
import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from lbgap_tf import data, gap, gate, results, sharpness, train
from tests import binaries

SPEC = data.SyntheticSpec(num_train=256, num_test=64, input_shape=(16,), num_classes=4,
                          seed=0)
RUN_COLUMNS = set(train.RUN_COLUMNS)


def _config(trials=1, subspace_dims=(None, 5), solvers=("lbfgsb", "ascent")):
    shared = dict(model="F1", dataset="synthetic", synthetic=SPEC, epochs=1,
                  eval_batch_size=256, steps_per_call=4)
    return gap.GapConfig(
        models=("F1",), trials=trials, first_seed=3,
        sb=train.TrainConfig(regime="SB", batch_size=64, **shared),
        lb=train.TrainConfig(regime="LB", batch_size=128, **shared),
        sharpness=gap.SharpnessPlan(epsilons=(1e-3,), subspace_dims=subspace_dims,
                                    solvers=solvers, max_iter=2,
                                    eval_examples=128, eval_batch_size=128))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("gap"))
    return output_dir, gap.run(_config(), output_dir=output_dir, quiet=True)


def _csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_every_csv_with_its_columns(finished):
    output_dir, outcome = finished
    runs = _csv(os.path.join(output_dir, gap.RUNS_FILE))
    assert [row["regime"] for row in runs] == ["SB", "LB"]
    assert set(runs[0]) >= RUN_COLUMNS
    assert {row["benchmark"] for row in runs} == {"gap"}
    [pair] = _csv(os.path.join(output_dir, gap.PAIRS_FILE))
    assert list(pair) == list(gap.PAIR_COLUMNS)
    measured = _csv(os.path.join(output_dir, gap.SHARPNESS_FILE))
    assert len(measured) == 2 * 2 * 2  # Regimes x spaces x solvers, one epsilon.
    assert {row["subspace"] for row in measured} == {"full", "random"}
    assert {row["subspace_distribution"] for row in measured if row["subspace"] == "random"} \
        == {sharpness.DEFAULT_SUBSPACE_DISTRIBUTION}
    assert {row["eval_examples"] for row in measured} == {"128"}
    assert {row["eval_seed"] for row in measured} == {"3"}  # The subset of 128 of 256.
    assert all(float(row["sharpness"]) >= 0 for row in measured)
    table2 = _csv(os.path.join(output_dir, "table2.csv"))
    assert [row["model"] for row in table2] == ["F1"]
    for column in ("train_SB_mean", "test_LB_std", "test_gap", "distance_ratio"):
        assert column in table2[0]
    table3 = _csv(os.path.join(output_dir, "table3.csv"))
    assert sorted(row["solver"] for row in table3) == ["ascent", "lbfgsb"]
    assert "eps0.001_ratio" in table3[0]
    table4 = _csv(os.path.join(output_dir, "table4.csv"))
    assert {row["subspace_dim"] for row in table4} == {"5"}
    assert {row["subspace_distribution"] for row in table4} == {
        sharpness.DEFAULT_SUBSPACE_DISTRIBUTION}
    assert "eps0.001_LB_best" in table4[0] and "eps0.001_best_ratio" in table4[0]
    assert len(outcome.sharpness_rows) == 8


def test_pair_row_matches_an_independent_distance(finished):
    output_dir, outcome = finished
    [pair] = outcome.pair_rows
    sb_dir = os.path.join(output_dir, "runs", pair["sb_run_id"])
    lb_dir = os.path.join(output_dir, "runs", pair["lb_run_id"])
    x0 = train.load_x0(os.path.join(sb_dir, train.X0_FILE))
    np.testing.assert_array_equal(  # LB started from SB's x0.
        np.concatenate([a.ravel() for a in x0]),
        np.concatenate([a.ravel() for a in train.load_x0(os.path.join(lb_dir, train.X0_FILE))]))
    import keras

    distances = []
    for run_dir in (sb_dir, lb_dir):
        model = keras.models.load_model(os.path.join(run_dir, train.MODEL_FILE), compile=False)
        distances.append(np.sqrt(sum(
            np.sum((np.asarray(w) - start) ** 2)
            for w, start in zip(model.weights, x0, strict=True) if w.trainable)))
    assert float(pair["sb_distance"]) == pytest.approx(distances[0], rel=1e-6)
    assert float(pair["distance_ratio"]) == pytest.approx(distances[0] / distances[1], rel=1e-6)
    runs = {row["run_id"]: row for row in outcome.run_rows}
    expected_gap = 100 * (float(runs[pair["sb_run_id"]]["test_accuracy"])
                          - float(runs[pair["lb_run_id"]]["test_accuracy"]))
    assert float(pair["test_gap_pp"]) == pytest.approx(expected_gap)


def test_rerun_repeats_no_finished_stage(finished, monkeypatch):
    output_dir, outcome = finished
    before = {name: _csv(os.path.join(output_dir, name))
              for name in (gap.RUNS_FILE, gap.PAIRS_FILE, gap.SHARPNESS_FILE)}

    def fail(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr(train, "train", fail)
    monkeypatch.setattr(sharpness.SharpnessProblem, "measure", fail)
    again = gap.run(_config(), output_dir=output_dir, quiet=True)
    for name, rows in before.items():
        assert _csv(os.path.join(output_dir, name)) == rows
    assert again.table2 == outcome.table2


def test_two_experiments_in_one_folder_keep_their_own_pairs_and_tables(finished, tmp_path,
                                                                       monkeypatch):
    source, first = finished
    output_dir = str(tmp_path / "shared")
    shutil.copytree(source, output_dir)
    # The same runs with another sharpness plan: a second experiment (another gap_id).
    other = _config(subspace_dims=(None,), solvers=("ascent",))
    assert other.gap_id("F1") != _config().gap_id("F1")

    def fail(*args, **kwargs):
        raise AssertionError("the second experiment retrained a run")

    monkeypatch.setattr(train, "train", fail)
    second = gap.run(other, output_dir=output_dir, quiet=True)
    pairs = _csv(os.path.join(output_dir, gap.PAIRS_FILE))
    assert [row["gap_id"] for row in pairs] == [_config().gap_id("F1"), other.gap_id("F1")]
    assert pairs[0]["distance_ratio"] == pairs[1]["distance_ratio"]
    [pair] = second.pair_rows
    assert pair["gap_id"] == other.gap_id("F1")
    assert second.table2 == first.table2 and second.table2[0]["trials"] == 1
    # Its sharpness rows are the first experiment's full-space ascent measurements.
    assert len(second.sharpness_rows) == 2 and len(first.sharpness_rows) == 8
    assert [row["solver"] for row in second.table3] == ["ascent"] and second.table4 == []
    assert _csv(os.path.join(output_dir, "table3.csv"))[0]["solver"] == "ascent"
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps({"format": gate.FORMAT, "baselines": [{"setup": {}, "bounds": [
        {"model": "F1", "metric": "test_gap", "min": -100, "max": 100}]}]}))
    report = gate.check(str(path), second.run_rows, second.pair_rows, second.sharpness_rows,
                        gate.setup_of(second.run_rows))
    assert report.passed and len(report.checked) == 1, report.describe()


@pytest.mark.slow
def test_crash_between_stages_resumes_without_repeating(tmp_path, monkeypatch, caplog):
    output_dir = str(tmp_path)
    config = _config(subspace_dims=(None,), solvers=("lbfgsb",))
    real_measure = sharpness.SharpnessProblem.measure
    calls = {"measure": 0, "train": 0}

    def crash_on_second_measurement(self, *args, **kwargs):
        calls["measure"] += 1
        if calls["measure"] == 2:
            raise KeyboardInterrupt("killed")
        return real_measure(self, *args, **kwargs)

    monkeypatch.setattr(sharpness.SharpnessProblem, "measure", crash_on_second_measurement)
    with pytest.raises(KeyboardInterrupt):
        gap.run(config, output_dir=output_dir, quiet=True)
    assert len(results.read_rows(os.path.join(output_dir, gap.SHARPNESS_FILE))) == 1

    real_train = train.train

    def counting_train(*args, **kwargs):
        calls["train"] += 1
        return real_train(*args, **kwargs)

    def counting_measure(self, *args, **kwargs):
        calls["measure"] += 1
        return real_measure(self, *args, **kwargs)

    monkeypatch.setattr(sharpness.SharpnessProblem, "measure", counting_measure)
    monkeypatch.setattr(train, "train", counting_train)
    calls["measure"] = 0
    caplog.set_level(logging.INFO, logger="absl")
    gap.run(config, output_dir=output_dir, quiet=True)
    assert calls["train"] == 0  # Both runs had finished before the crash.
    # The resumed experiment's ETA costs the one measurement left at the solve time that
    # sharpness.csv recorded for the finished one.
    stages = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[gap ")]
    assert len(stages) == 5 and stages[-1].startswith("[gap 5/5, ")
    assert "not yet timed" not in stages[-1] and "ETA unknown" not in stages[-1]
    assert calls["measure"] == 1  # Only LB's measurement was left.
    measured = results.read_rows(os.path.join(output_dir, gap.SHARPNESS_FILE))
    assert len(measured) == 2
    keys = [tuple(row[c] for c in ("run_id", "subspace", "solver")) for row in measured]
    assert len(set(keys)) == len(keys)


@pytest.mark.slow
def test_lb_trains_from_the_x0_file_and_its_distance_is_measured_from_it(tmp_path,
                                                                        monkeypatch):
    """A crash before LB, then SB's x0.npz perturbed: LB (whose seed draws SB's x0) must start
    from the file's values, and the pair's LB distance is measured from them."""
    output_dir = str(tmp_path)
    config = _config(subspace_dims=(None,), solvers=("ascent",))
    real_train = train.train

    def crash_before_lb(run_config, *args, **kwargs):
        if run_config.regime == "LB":
            raise KeyboardInterrupt("killed")
        return real_train(run_config, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(train, "train", crash_before_lb)
        with pytest.raises(KeyboardInterrupt):
            gap.run(config, output_dir=output_dir, quiet=True)
    (sb_row,) = results.read_rows(os.path.join(output_dir, gap.RUNS_FILE))
    x0_path = os.path.join(output_dir, "runs", sb_row["run_id"], train.X0_FILE)
    rng = np.random.default_rng(11)
    perturbed = [w + rng.normal(scale=0.05, size=w.shape).astype(w.dtype)
                 for w in train.load_x0(x0_path)]
    np.savez(x0_path, **{f"w{i:04d}": w for i, w in enumerate(perturbed)})

    [pair] = gap.run(config, output_dir=output_dir, quiet=True).pair_rows
    lb_dir = os.path.join(output_dir, "runs", pair["lb_run_id"])
    for started, expected in zip(train.load_x0(os.path.join(lb_dir, train.X0_FILE)), perturbed,
                                 strict=True):
        np.testing.assert_array_equal(started, expected)
    import keras

    model = keras.models.load_model(os.path.join(lb_dir, train.MODEL_FILE), compile=False)
    distance = np.sqrt(sum(np.sum((np.asarray(w, np.float64) - start) ** 2)
                           for w, start in zip(model.weights, perturbed, strict=True)
                           if w.trainable))
    assert float(pair["lb_distance"]) == pytest.approx(distance, rel=1e-6)


def _binary(*args, cwd, env=None):
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.gap", "--models=F1", "--dataset=synthetic",
         "--synthetic_train_examples=256", "--synthetic_test_examples=64", "--trials=1",
         "--sb_batch_size=64", "--lb_batch_size=128", "--sb_epochs=1", "--lb_epochs=1",
         "--epsilons=1e-3", "--subspace_dims=full", "--solvers=lbfgsb",
         "--sharpness_max_iter=2", "--sharpness_examples=128", "--sharpness_batch_size=128",
         "--eval_batch_size=256", "--quiet", f"--output_dir={cwd}/out", *args],
        cwd=binaries.REPO, env=env or binaries.environment(), capture_output=True, text=True,
        timeout=300)


@pytest.mark.slow
def test_binary_writes_a_baseline_passes_it_and_fails_a_tightened_one(tmp_path):
    baseline = tmp_path / "baseline.json"
    first = _binary(f"--write_baseline={baseline}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    # Every evaluator and sharpness objective compiles once: no retracing warning.
    assert "retracing" not in first.stderr, first.stderr[-2000:]
    assert "## Table 2" in first.stdout
    assert os.path.exists(tmp_path / "out" / "summary.md")
    passed = _binary(f"--baseline={baseline}", cwd=tmp_path)
    assert passed.returncode == 0, passed.stderr[-2000:]
    assert "all hold" in passed.stdout

    document = json.loads(baseline.read_text())
    bounds = document["baselines"][0]["bounds"]
    accuracy = next(b for b in bounds if b["metric"] == "test_accuracy")
    accuracy["min"] = 101.0
    baseline.write_text(json.dumps(document))
    failed = _binary(f"--baseline={baseline}", cwd=tmp_path)
    assert failed.returncode == 1
    assert "VIOLATED F1 test_accuracy" in failed.stdout
    assert ">= 101" in failed.stdout
    assert binaries.error_message(failed.stderr, "gap.py").startswith(
        "regression gate failed: 1 bound(s) of")

    # Another sharpness plan in the same folder against a baseline on another network: the
    # new experiment records its own pair, and a gate that checked nothing fails.
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": gate.FORMAT, "baselines": [{"name": "C1 only",
        "bounds": [{"model": "C1", "metric": "test_gap", "min": -100}]}]}))
    nothing = _binary(f"--baseline={other}", "--solvers=ascent", cwd=tmp_path)
    assert nothing.returncode == 1, nothing.stderr[-2000:]
    assert "regression gate: 0 bound(s) from C1 only: FAILED" in nothing.stdout
    assert binaries.error_message(nothing.stderr, "gap.py").startswith(
        "regression gate failed: no bound checked: none of the 1 bound(s) names a network of "
        "these results (F1 on synthetic)")
    assert len(results.read_rows(tmp_path / "out" / gap.PAIRS_FILE)) == 2


def test_binary_rejects_a_malformed_baseline_before_training(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    result = _binary(f"--baseline={bad}", cwd=tmp_path,
                     env=binaries.environment(**binaries.NOISY_TENSORFLOW))
    assert result.returncode == 1
    assert binaries.error_message(result.stderr, "gap.py").startswith("baseline file")
    assert not os.path.exists(tmp_path / "out" / gap.RUNS_FILE)


@pytest.mark.slow
def test_a_diverged_run_fails_the_binary_and_is_never_paired_or_measured(tmp_path):
    """SGD at learning rate 1000: SB (4 steps per epoch) stops as diverged at its first
    non-finite epoch; the gap binary writes no pair or sharpness row and exits 1 before any
    gate; the sharpness binary refuses the run by name."""
    failed = _binary("--optimizer=sgd", "--learning_rate=1000", "--sb_epochs=3",
                     "--lb_epochs=3", cwd=tmp_path)
    assert failed.returncode == 1, failed.stderr[-3000:]
    message = binaries.error_message(failed.stderr, "gap.py", only_own_line=False)
    rows = results.read_rows(tmp_path / "out" / gap.RUNS_FILE)
    diverged = [row for row in rows if row["stop_reason"] == "diverged"]
    assert [row["regime"] for row in rows] == ["SB", "LB"] and diverged[0] is rows[0]
    assert message.startswith(f"{len(diverged)} run(s) diverged (training loss NaN or inf): ")
    for row in diverged:
        assert f"{row['run_id']} at epoch {row['epochs_run']}" in message
        assert int(row["epochs_run"]) < 3 and row["test_accuracy"] == ""
    for name in (gap.PAIRS_FILE, gap.SHARPNESS_FILE):
        assert not results.read_rows(tmp_path / "out" / name), name
    assert "nan" not in (tmp_path / "out" / "table2.csv").read_text().lower()

    sb = diverged[0]
    refused = subprocess.run(
        [sys.executable, "-m", "benchmarks.sharpness", f"--output_dir={tmp_path / 'out'}",
         f"--runs={sb['run_id']}", "--quiet"], cwd=binaries.REPO,
        env=binaries.environment(), capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1
    assert binaries.error_message(refused.stderr, "sharpness.py") == (
        f"run {sb['run_id']} diverged at epoch {sb['epochs_run']} (training loss NaN or inf): "
        "its weights are no minimizer, so it has no sharpness; drop it from --runs")
    assert not os.path.exists(tmp_path / "out" / gap.SHARPNESS_FILE)
