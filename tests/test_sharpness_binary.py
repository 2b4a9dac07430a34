"""`python -m benchmarks.sharpness` on a run trained by `benchmarks.train`: rows, resume, errors."""

import json

import keras
import numpy as np
import pytest

from lbgap_tf import data, results, sharpness, sharpness_rows, train
from tests import binaries

TRAIN = ["--model=F1", "--dataset=synthetic", "--synthetic_train_examples=96",
         "--synthetic_test_examples=32", "--batch_size=32", "--eval_batch_size=64",
         "--epochs=1", "--quiet"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An output directory holding one completed F1 run on a small synthetic task."""
    out_dir = tmp_path_factory.mktemp("sharpness_binary")
    code, _, err = binaries.run("benchmarks.train", *TRAIN, f"--output_dir={out_dir}")
    assert code == 0, err
    (row,) = results.read_rows(out_dir / "runs.csv")
    return out_dir, row


def test_rows_match_the_library_and_a_rerun_resumes(trained):
    out_dir, run_row = trained
    args = [f"--output_dir={out_dir}", "--subspace_dims=8", "--epsilons=1e-3,5e-4",
            "--solvers=ascent", "--max_iter=4", "--eval_batch_size=32", "--quiet"]
    code, out, err = binaries.run("benchmarks.sharpness", *args)
    assert code == 0, err
    rows = results.read_rows(out_dir / "sharpness.csv")
    assert len(rows) == 2 and "2 new sharpness row(s)" in out
    for row in rows:
        assert tuple(row) == sharpness_rows.SHARPNESS_COLUMNS
        for column in sharpness_rows.RUN_PROVENANCE:
            assert row[column] == run_row[column]
        assert (row["benchmark"], row["subspace"], row["subspace_dim"]) == ("sharpness", "random",
                                                                         "8")
        assert (row["solver"], row["max_iter"], row["function_evals"]) == ("ascent", "4", "5")
        assert row["eval_examples"] == "96" and row["eval_batch_size"] == "32"
        assert row["bn_mode"] == "moving" and float(row["sharpness"]) >= 0

    # The same measurement through the library, on the run's saved model and data.
    run_dir = out_dir / "runs" / run_row["run_id"]
    config = json.loads((run_dir / train.CONFIG_FILE).read_text())["config"]
    split = data.load_split("synthetic", "train", flatten=True,
                            synthetic=data.SyntheticSpec(**config["synthetic"]))
    model = keras.models.load_model(run_dir / train.MODEL_FILE, compile=False)
    expected = sharpness.sharpness(model, split.features, split.labels, epsilons=(1e-3, 5e-4),
                                   subspace_dim=8, solver="ascent", max_iter=4,
                                   eval_batch_size=32)
    for row, result in zip(rows, expected, strict=True):
        assert float(row["epsilon"]) == result.epsilon
        assert float(row["loss"]) == pytest.approx(result.loss, rel=1e-6)
        assert float(row["sharpness"]) == pytest.approx(result.value, rel=1e-4)

    code, out, err = binaries.run("benchmarks.sharpness", *args)
    assert code == 0, err
    assert "0 new sharpness row(s)" in out
    assert len(results.read_rows(out_dir / "sharpness.csv")) == 2


@pytest.mark.slow
def test_bad_input_is_one_line_and_no_row_with_tensorflow_logging_on(trained, tmp_path):
    """The error contract with every native TensorFlow log line enabled: the error is still
    the last stderr line and the binary's only own line."""
    out_dir, run_row = trained
    cases = {
        "--epsilons=0": (2, "--epsilons must be numbers > 0"),
        "--subspace_dims=0": (2, "--subspace_dims must be 'full' and/or positive integers"),
        "--solvers=adam": (2, "--solvers must be among lbfgsb,lbfgsb_scaled,ascent"),
        "--subspace_distributions=cauchy": (2, "--subspace_distributions must be among normal,"),
        "--runs=no-such-run": (1, "run no-such-run is not a completed run"),
        "--subspace_dims=full,99999999": (1, "more than the 1462794 trainable weights"),
    }
    before = results.read_rows(out_dir / "sharpness.csv")
    noisy = binaries.environment(**binaries.NOISY_TENSORFLOW)
    processes = {arg: binaries.start("benchmarks.sharpness", f"--output_dir={out_dir}", arg,
                                     env=noisy)
                 for arg in cases}
    empty = tmp_path / "empty"
    processes["(no runs)"] = binaries.start("benchmarks.sharpness", f"--output_dir={empty}",
                                            env=noisy)
    cases["(no runs)"] = (1, "no completed runs in")
    for arg, process in processes.items():
        code, out, err = binaries.finish(process)
        status, message = cases[arg]
        assert code == status, (arg, err)
        assert message in binaries.error_message(err, "sharpness.py"), (arg, err)
        assert out == ""
    assert results.read_rows(out_dir / "sharpness.csv") == before
    assert not (empty / "sharpness.csv").exists()
    assert np.isfinite(float(run_row["train_loss"]))


@pytest.mark.slow
def test_full_space_rows_name_their_subset_and_another_seed_measures_again(trained, tmp_path):
    out_dir, run_row = trained
    run_dir = out_dir / "runs" / run_row["run_id"]
    args = [f"--runs={run_dir}", f"--output_dir={tmp_path}", "--subspace_dims=full",
            "--epsilons=1e-3", "--solvers=ascent", "--max_iter=2", "--eval_examples=48",
            "--quiet"]
    for seed in (0, 1):
        code, out, err = binaries.run("benchmarks.sharpness", *args, f"--seed={seed}")
        assert code == 0, err
        assert "1 new sharpness row(s)" in out  # Seed 1 is not "measured earlier".
    rows = results.read_rows(tmp_path / "sharpness.csv")
    assert [(row["subspace"], row["subspace_seed"], row["eval_examples"], row["eval_seed"])
            for row in rows] == [("full", "", "48", "0"), ("full", "", "48", "1")]
    # Each row's f(x) is the mean cross-entropy on the 48 examples its eval_seed draws.
    config = json.loads((run_dir / train.CONFIG_FILE).read_text())["config"]
    split = data.load_split("synthetic", "train", flatten=True,
                            synthetic=data.SyntheticSpec(**config["synthetic"]))
    model = keras.models.load_model(run_dir / train.MODEL_FILE, compile=False)
    for row in rows:
        index = np.sort(np.random.default_rng(int(row["eval_seed"])).choice(
            96, size=48, replace=False))
        logits = np.asarray(model(split.features[index], training=False), np.float64)
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        loss = -log_softmax[np.arange(48), split.labels[index]].mean()
        assert float(row["loss"]) == pytest.approx(loss, rel=1e-5)
