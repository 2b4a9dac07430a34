"""Fig. 4 batch-size sweep on a tiny synthetic task: one x0 per trial, rows against
independent evaluations and sharpness, resume, bad input and the PNG."""

import os

import keras
import numpy as np
import pytest

from lbgap_tf import data, evaluation, gap, results, sharpness, train
from lbgap_tf.experiments import sweep
from lbgap_tf.reporting import plots

SPEC = data.SyntheticSpec(num_train=256, num_test=64, input_shape=(16,), num_classes=4, seed=0)
PLAN = gap.SharpnessPlan(epsilons=(1e-3,), subspace_dims=(None,), solvers=("ascent",),
                         max_iter=2, eval_examples=128, eval_batch_size=128)


def _config(batch_sizes=(32, 128)):
    base = train.TrainConfig(model="F1", dataset="synthetic", synthetic=SPEC, epochs=1,
                             bn_mode="batch", eval_batch_size=256, steps_per_call=8)
    return sweep.SweepConfig(base=base, batch_sizes=batch_sizes, trials=2, first_seed=4,
                             sharpness=PLAN)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("sweep"))
    return output_dir, sweep.run(_config(), output_dir=output_dir, quiet=True)


def test_one_row_per_trial_and_batch_size_each_from_the_trials_x0(finished):
    output_dir, outcome = finished
    rows = outcome.rows
    assert sorted((row["trial"], row["batch_size"]) for row in rows) == [
        ("0", "128"), ("0", "32"), ("1", "128"), ("1", "32")]
    assert {row["regime"] for row in rows} == {"SB"}  # Both batches are <= 256.
    assert {row["sharpness_epsilon"] for row in rows} == {"0.001"}
    assert {row["sharpness_eval_examples"] for row in rows} == {"128"}
    assert results.read_rows(outcome.csv_path) == rows
    for trial in ("0", "1"):
        x0s = [train.load_x0(os.path.join(output_dir, "runs", row["run_id"], train.X0_FILE))
               for row in rows if row["trial"] == trial]
        for first, second in zip(x0s[0], x0s[1], strict=True):
            np.testing.assert_array_equal(first, second)
    seeds = {row["trial"]: row["seed"] for row in rows}
    assert seeds == {"0": "4", "1": "5"}


def test_rows_match_an_independent_evaluation_and_sharpness(finished):
    output_dir, outcome = finished
    train_data, test_data = train.load_data(_config().base)
    row = next(r for r in outcome.rows if r["trial"] == "1" and r["batch_size"] == "128")
    model = keras.models.load_model(
        os.path.join(output_dir, "runs", row["run_id"], train.MODEL_FILE), compile=False)
    on_test = evaluation.evaluate(model, test_data.features, test_data.labels, batch_size=64)
    assert float(row["test_accuracy"]) == on_test.accuracy
    assert float(row["test_loss"]) == on_test.loss
    [again] = sharpness.sharpness(model, train_data.features, train_data.labels,
                                  epsilons=(1e-3,), solver="ascent", max_iter=2, seed=5,
                                  eval_batch_size=128, eval_examples=128)
    assert float(row["sharpness"]) == pytest.approx(again.value, rel=1e-6)


def test_rerun_trains_and_measures_nothing(finished, monkeypatch):
    output_dir, outcome = finished

    def fail(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr(train, "train", fail)
    monkeypatch.setattr(sharpness.SharpnessProblem, "measure", fail)
    assert sweep.run(_config(), output_dir=output_dir, quiet=True).rows == outcome.rows


def test_bad_batch_sizes_are_refused_before_anything_is_written(tmp_path):
    with pytest.raises(sweep.SweepError, match="strictly increasing"):
        _config(batch_sizes=(128, 32))
    with pytest.raises(sweep.SweepError, match="no batch size"):
        _config(batch_sizes=())
    with pytest.raises(train.TrainError, match="larger than the training set"):
        sweep.run(_config(batch_sizes=(32, 1024)), output_dir=str(tmp_path), quiet=True)
    assert os.listdir(tmp_path) == []


def test_figure_is_drawn_from_the_csv(finished, tmp_path):
    import matplotlib.image

    _, outcome = finished
    path = plots.sweep_plot(results.read_rows(outcome.csv_path), str(tmp_path / "fig4.png"))
    assert os.path.getsize(path) > 20_000
    image = matplotlib.image.imread(path)[..., :3]
    assert np.mean(np.any(image < 0.9, axis=-1)) > 0.03 and image.std() > 0.05
    with pytest.raises(plots.PlotError, match="no batch-sweep rows"):
        plots.sweep_plot([], str(tmp_path / "empty.png"))
    assert not os.path.exists(tmp_path / "empty.png")
