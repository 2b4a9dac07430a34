"""`python -m benchmarks.curvature` on a run trained by `benchmarks.train`: rows, resume,
the derived spectral density, errors."""

import json

import keras
import pytest

from lbgap_tf import data, results, train
from lbgap_tf.measures import curvature
from lbgap_tf.reporting import curvature_rows, spectral_density
from tests import binaries

TRAIN = ["--model=F1", "--dataset=synthetic", "--synthetic_train_examples=96",
         "--synthetic_test_examples=32", "--batch_size=32", "--eval_batch_size=64",
         "--epochs=1", "--quiet"]
MEASURE = ["--measures=top_eigenvalues,trace,density,adaptive_l2", "--k=2",
           "--eigen_tol=1e-2", "--eigen_max_hvps=40", "--trace_min_probes=2",
           "--trace_max_probes=3", "--lanczos_steps=4", "--density_probes=2",
           "--ascent_steps=2", "--eval_batch_size=32", "--quiet"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An output directory holding one completed F1 run on a small synthetic task."""
    out_dir = tmp_path_factory.mktemp("curvature_binary")
    code, _, err = binaries.run("benchmarks.train", *TRAIN, f"--output_dir={out_dir}")
    assert code == 0, err
    (row,) = results.read_rows(out_dir / "runs.csv")
    return out_dir, row


@pytest.mark.slow
def test_rows_match_the_library_a_rerun_resumes_and_the_density_is_derived(trained):
    out_dir, run_row = trained
    args = [f"--output_dir={out_dir}", *MEASURE]
    code, out, err = binaries.run("benchmarks.curvature", *args)
    assert code == 0, err
    rows = results.read_rows(out_dir / "curvature.csv")
    assert "4 new curvature row(s)" in out
    assert [row["measure"] for row in rows] == ["top_eigenvalues", "trace", "density",
                                                "adaptive_l2"]
    for row in rows:
        assert tuple(row) == curvature_rows.CURVATURE_COLUMNS
        assert row["run_id"] == run_row["run_id"] and row["benchmark"] == "curvature"
        assert row["eval_examples"] == "96" and row["eval_batch_size"] == "32"
        assert row["subset_seed"] == "" and row["num_weights"] == "1462794"
        assert float(row["pass_equivalents"]) > 0
    top, trace, density, adaptive = rows
    assert len(json.loads(top["values"])) <= 2 and json.loads(top["settings"])["k"] == 2
    assert int(trace["hvps"]) in (2, 3) and float(trace["standard_error"]) > 0
    assert sum(json.loads(density["weights"])) == pytest.approx(1.0, rel=1e-6)
    assert float(adaptive["value"]) >= 0 and adaptive["hvps"] == "0"

    # The same trace through the library, on the run's saved model and data.
    run_dir = out_dir / "runs" / run_row["run_id"]
    config = json.loads((run_dir / train.CONFIG_FILE).read_text())["config"]
    split = data.load_split("synthetic", "train", flatten=True,
                            synthetic=data.SyntheticSpec(**config["synthetic"]))
    model = keras.models.load_model(run_dir / train.MODEL_FILE, compile=False)
    problem = curvature.CurvatureProblem(model, split.features, split.labels,
                                         eval_batch_size=32, hvp_method="double_backprop")
    expected = problem.measure("trace", curvature.CurvatureConfig(
        trace_min_probes=2, trace_max_probes=int(trace["hvps"])))
    assert float(trace["loss"]) == pytest.approx(problem.loss, rel=1e-6)
    assert float(trace["value"]) == pytest.approx(expected.value, rel=1e-3)

    density_rows = results.read_rows(out_dir / "spectral_density.csv")
    assert len(density_rows) == spectral_density.POINTS
    assert (out_dir / "spectral_density.png").stat().st_size > 0

    code, out, err = binaries.run("benchmarks.curvature", *args)
    assert code == 0, err
    assert "0 new curvature row(s)" in out
    assert len(results.read_rows(out_dir / "curvature.csv")) == 4


@pytest.mark.slow
def test_bad_input_is_one_line_and_no_row(trained, tmp_path):
    out_dir, _ = trained
    cases = {
        "--k=1462794": (1, "k=1462794 eigenvalues asked for, but the model has only 1462794"),
        "--rho=0": (2, "--rho must be > 0"),
        "--trace_max_probes=0": (2, "--trace_max_probes must be > 0"),
        "--runs=no-such-run": (1, "run no-such-run is not a completed run"),
    }
    before = results.read_rows(out_dir / "curvature.csv")
    processes = {arg: binaries.start("benchmarks.curvature", f"--output_dir={out_dir}", arg)
                 for arg in cases}
    empty = tmp_path / "empty"
    processes["(no runs)"] = binaries.start("benchmarks.curvature", f"--output_dir={empty}")
    cases["(no runs)"] = (1, "no completed runs in")
    for arg, process in processes.items():
        code, out, err = binaries.finish(process)
        status, message = cases[arg]
        assert code == status, (arg, err)
        assert message in binaries.error_message(err, "curvature.py"), (arg, err)
        assert out == ""
    assert results.read_rows(out_dir / "curvature.csv") == before
    assert not (empty / "curvature.csv").exists()
