"""Fig. 5 warm start on a tiny synthetic task: LB runs start from the SB run's snapshots, rows
against independent evaluations, missing snapshots and bad start epochs, the PNG."""

import os
import shutil

import keras
import numpy as np
import pytest

from lbgap_tf import data, evaluation, gap, results, train
from lbgap_tf.experiments import warm_start
from lbgap_tf.reporting import plots

SPEC = data.SyntheticSpec(num_train=256, num_test=64, input_shape=(16,), num_classes=4, seed=0)
PLAN = gap.SharpnessPlan(epsilons=(1e-3,), subspace_dims=(None,), solvers=("ascent",),
                         max_iter=2, eval_examples=128, eval_batch_size=128)


def _config(start_epochs=(0, 1)):
    shared = dict(model="F1", dataset="synthetic", synthetic=SPEC, bn_mode="batch",
                  eval_batch_size=256, steps_per_call=8)
    return warm_start.WarmStartConfig(
        sb=train.TrainConfig(regime="SB", batch_size=32, epochs=1, **shared),
        lb=train.TrainConfig(regime="LB", batch_size=128, epochs=1, **shared),
        start_epochs=start_epochs, first_seed=6, sharpness=PLAN)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("warm"))
    return output_dir, warm_start.run(_config(), output_dir=output_dir, quiet=True)


def _run_dir(output_dir, run_id):
    return os.path.join(output_dir, "runs", run_id)


def test_lb_runs_start_from_the_sb_iterates(finished):
    output_dir, outcome = finished
    rows = sorted(outcome.rows, key=lambda row: int(row["start_epoch"]))
    assert [row["start_epoch"] for row in rows] == ["0", "1"]
    assert len({row["sb_run_id"] for row in rows}) == 1
    sb_dir = _run_dir(output_dir, rows[0]["sb_run_id"])
    sb_final = keras.models.load_model(os.path.join(sb_dir, train.MODEL_FILE), compile=False)
    expected_starts = (train.load_x0(os.path.join(sb_dir, train.X0_FILE)),
                       sb_final.get_weights())  # After 0 and after the (only) SB epoch.
    for row, expected in zip(rows, expected_starts, strict=True):
        start = train.load_x0(os.path.join(_run_dir(output_dir, row["lb_run_id"]),
                                           train.X0_FILE))
        for got, want in zip(start, expected, strict=True):
            np.testing.assert_array_equal(got, want)
    assert rows[0]["lb_run_id"] != rows[1]["lb_run_id"]


def test_rows_match_an_independent_evaluation(finished):
    output_dir, outcome = finished
    _, test_data = train.load_data(_config().sb)
    for row in outcome.rows:
        model = keras.models.load_model(
            os.path.join(_run_dir(output_dir, row["lb_run_id"]), train.MODEL_FILE),
            compile=False)
        on_test = evaluation.evaluate(model, test_data.features, test_data.labels,
                                      batch_size=64)
        assert float(row["test_accuracy"]) == on_test.accuracy
        assert float(row["sharpness"]) >= 0
    assert results.read_rows(outcome.csv_path) == outcome.rows


def test_an_sb_run_without_the_snapshots_is_one_clear_error(finished, tmp_path):
    output_dir, outcome = finished
    copy = str(tmp_path / "copy")
    shutil.copytree(output_dir, copy)
    os.remove(train.snapshot_path(_run_dir(copy, outcome.rows[0]["sb_run_id"]), 1))
    with pytest.raises(warm_start.WarmStartError, match="kept no weights after epoch"):
        warm_start.run(_config(), output_dir=copy, quiet=True)


@pytest.mark.parametrize("epochs, message", [((2, 0), "strictly increasing"),
                                             ((), "no start epoch"),
                                             ((0, 2), "never keeps it")])
def test_bad_start_epochs_are_refused_before_anything_runs(epochs, message):
    with pytest.raises(warm_start.WarmStartError, match=message):
        _config(start_epochs=epochs)


def test_figure_is_drawn_from_the_csv(finished, tmp_path):
    import matplotlib.image

    _, outcome = finished
    path = plots.warm_start_plot(results.read_rows(outcome.csv_path),
                                 str(tmp_path / "fig5.png"))
    assert os.path.getsize(path) > 20_000
    image = matplotlib.image.imread(path)[..., :3]
    assert np.mean(np.any(image < 0.9, axis=-1)) > 0.03 and image.std() > 0.05
