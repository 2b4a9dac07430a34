"""Fig. 6 sharpness along training on a tiny synthetic task: kept iterates evaluated and
measured, rows against independent computations, resume, bad epochs, the PNG."""

import os

import keras
import numpy as np
import pytest

from lbgap_tf import data, evaluation, gap, results, sharpness, train
from lbgap_tf.experiments import along_training
from lbgap_tf.reporting import plots

SPEC = data.SyntheticSpec(num_train=256, num_test=64, input_shape=(16,), num_classes=4, seed=0)
PLAN = gap.SharpnessPlan(epsilons=(1e-3,), subspace_dims=(None,), solvers=("ascent",),
                         max_iter=2, eval_examples=128, eval_batch_size=128)


def _config(sb_epochs=(1, 2), lb_epochs=(1, 2)):
    shared = dict(model="F1", dataset="synthetic", synthetic=SPEC, bn_mode="batch",
                  eval_batch_size=256, steps_per_call=8, epochs=2, seed=7)
    return along_training.AlongTrainingConfig(
        sb=train.TrainConfig(regime="SB", batch_size=32, **shared),
        lb=train.TrainConfig(regime="LB", batch_size=128, **shared),
        sb_epochs=sb_epochs, lb_epochs=lb_epochs, sharpness=PLAN)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("along"))
    return output_dir, along_training.run(_config(), output_dir=output_dir, quiet=True)


def _row(rows, regime, epoch):
    [row] = [r for r in rows if r["regime"] == regime and r["epoch"] == str(epoch)]
    return row


def test_the_last_kept_iterate_is_the_final_model(finished):
    output_dir, outcome = finished
    train_data, _ = train.load_data(_config().sb)
    runs = {row["regime"]: row for row in results.read_rows(os.path.join(output_dir,
                                                                          "runs.csv"))}
    for regime in ("SB", "LB"):
        point = _row(outcome.rows, regime, 2)
        assert point["run_id"] == runs[regime]["run_id"]
        # The training loop's own final evaluation of the same weights.
        assert float(point["train_loss"]) == float(runs[regime]["train_loss"])
        if regime == "LB":
            continue
        model = keras.models.load_model(os.path.join(output_dir, "runs", point["run_id"],
                                                     train.MODEL_FILE), compile=False)
        [again] = sharpness.sharpness(model, train_data.features, train_data.labels,
                                      epsilons=(1e-3,), solver="ascent", max_iter=2, seed=7,
                                      eval_batch_size=128, eval_examples=128)
        assert float(point["sharpness"]) == pytest.approx(again.value, rel=1e-6)


def test_an_earlier_iterate_matches_an_independent_evaluation(finished):
    output_dir, outcome = finished
    train_data, _ = train.load_data(_config().sb)
    point = _row(outcome.rows, "LB", 1)
    run_dir = os.path.join(output_dir, "runs", point["run_id"])
    model = keras.models.load_model(os.path.join(run_dir, train.MODEL_FILE), compile=False)
    model.set_weights(train.load_x0(train.snapshot_path(run_dir, 1)))
    expected = evaluation.evaluate(model, train_data.features, train_data.labels,
                                   batch_size=256)
    assert float(point["train_loss"]) == expected.loss
    assert float(point["train_loss"]) != float(_row(outcome.rows, "LB", 2)["train_loss"])


def test_rerun_repeats_nothing(finished, monkeypatch):
    output_dir, outcome = finished

    def fail(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr(train, "train", fail)
    monkeypatch.setattr(evaluation.Evaluator, "__call__", fail)
    monkeypatch.setattr(sharpness.SharpnessProblem, "measure", fail)
    assert along_training.run(_config(), output_dir=output_dir, quiet=True).rows == outcome.rows


@pytest.mark.parametrize("sb_epochs, message", [((2, 1), "strictly increasing"),
                                                ((), "no sb epoch"),
                                                ((1, 3), "never kept")])
def test_bad_epochs_are_refused_before_anything_runs(sb_epochs, message):
    with pytest.raises(along_training.AlongTrainingError, match=message):
        _config(sb_epochs=sb_epochs)


def test_figure_is_drawn_from_the_csv(finished, tmp_path):
    import matplotlib.image

    _, outcome = finished
    path = plots.along_training_plot(results.read_rows(outcome.csv_path),
                                     str(tmp_path / "fig6.png"))
    assert os.path.getsize(path) > 20_000
    image = matplotlib.image.imread(path)[..., :3]
    assert np.mean(np.any(image < 0.9, axis=-1)) > 0.03 and image.std() > 0.05
