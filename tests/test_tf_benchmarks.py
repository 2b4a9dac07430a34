"""The tf.test.Benchmark entry points under TensorFlow's own --benchmarks runner: the smoke
case reports wall time and the gap metrics with the bounds of its baseline file."""

import glob
import json
import os
import subprocess
import sys

import pytest

from lbgap_tf import gap, gate, results

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_smoke_case_reports_metrics_with_baseline_bounds(tmp_path):
    from tensorflow.core.util import test_log_pb2

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               TEST_REPORT_FILE_PREFIX=str(tmp_path / "report_"))
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.tf_benchmarks", "--benchmarks=gap_smoke",
         f"--benchmark_output_dir={tmp_path / 'out'}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    [report] = glob.glob(str(tmp_path / "report_*"))
    entries = test_log_pb2.BenchmarkEntries()
    with open(report, "rb") as handle:
        entries.ParseFromString(handle.read())
    [entry] = entries.entry
    assert entry.name.endswith("gap_smoke") and entry.wall_time > 0
    assert entry.extras["SB_examples_per_s"].double_value > 0
    assert entry.extras["device_kind"].string_value.startswith("CPU")

    # Every bound of the baseline becomes a metric whose value is the trial mean of the rows.
    out = tmp_path / "out" / "gap_smoke"
    runs = results.read_rows(out / gap.RUNS_FILE)
    pairs = results.read_rows(out / gap.PAIRS_FILE)
    measured = results.read_rows(out / gap.SHARPNESS_FILE)
    metrics = {metric.name: metric for metric in entry.metrics}
    with open(os.path.join(REPO, "baselines", "smoke_synthetic.json"), encoding="utf-8") as f:
        bounds = json.load(f)["baselines"][0]["bounds"]
    assert len(metrics) == len(bounds)
    gaps = [float(pair["test_gap_pp"]) for pair in pairs]
    assert metrics["F1/test_gap"].value == pytest.approx(sum(gaps) / len(gaps))
    assert metrics["F1/test_gap"].min_value.value == -100.0
    assert metrics["F1/test_gap"].max_value.value == 100.0
    sb_train = [100 * float(r["train_accuracy"]) for r in runs if r["regime"] == "SB"]
    assert metrics["F1/train_accuracy/SB"].value == pytest.approx(sum(sb_train) / len(sb_train))
    table = gate.measurements(runs, pairs, measured)[("F1", "synthetic")]
    ratio = table[("sharpness_ratio", None, "full", None, None, "ascent", 1e-3)]
    assert metrics["F1/sharpness_ratio/full/ascent/eps0.001"].value == pytest.approx(
        sum(ratio.values()) / len(ratio))
