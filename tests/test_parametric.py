"""Fig. 3/7 and the landscape slices on a tiny synthetic pair: rows against independent
evaluations, resume, bad input, PNGs and a replot without TensorFlow."""

import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from lbgap_tf import data, evaluation, results, train
from lbgap_tf.experiments import parametric
from lbgap_tf.measures import landscape
from lbgap_tf.reporting import plots
from tests import binaries

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = data.SyntheticSpec(num_train=256, num_test=64, input_shape=(16,), num_classes=4, seed=0)
ALPHAS = (-1.0, 0.0, 0.5, 1.0, 2.0)


def _config(alphas=ALPHAS, sb_batch=64, **overrides):
    shared = dict(model="F1", dataset="synthetic", synthetic=SPEC, epochs=1, seed=2,
                  bn_mode="batch", eval_batch_size=128, steps_per_call=4)
    values = dict(sb=train.TrainConfig(regime="SB", batch_size=sb_batch, **shared),
                  lb=train.TrainConfig(regime="LB", batch_size=128, **shared),
                  alphas=alphas, slice_steps=(-0.5, 0.0, 0.5), slice_directions=1,
                  contour_steps=(0.0, 0.5), landscape_examples=96)
    values.update(overrides)
    return parametric.ParametricConfig(**values)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("parametric"))
    return output_dir, parametric.run(_config(), output_dir=output_dir, quiet=True)


def _point(rows, kind, alpha, center="", beta=""):
    [row] = [r for r in rows if r["kind"] == kind and r["center"] == center
             and float(r["alpha"]) == alpha and r["beta"] == beta]
    return row


@pytest.fixture(scope="module")
def minimizers(finished):
    """The SB and LB models as saved by their runs, loaded independently of the experiment."""
    output_dir, outcome = finished
    found = []
    for run_id in (outcome.rows[0]["sb_run_id"], outcome.rows[0]["lb_run_id"]):
        path = os.path.join(output_dir, "runs", run_id, train.MODEL_FILE)
        found.append(keras.models.load_model(path, compile=False))
    return found


def test_every_point_has_one_row_with_its_settings(finished):
    output_dir, outcome = finished
    rows = outcome.rows
    assert len(rows) == 2 * len(ALPHAS) + 2 * 3 + 2 * 4
    assert {row["figure"] for row in rows} == {"fig3", "fig7", "slice", "contour"}
    assert {row["bn_mode"] for row in rows} == {"batch"}
    assert {row["eval_batch_size"] for row in rows} == {"128"}
    assert {row["train_examples"] for row in rows if row["kind"] in landscape.PATHS} == {"256"}
    assert {row["train_examples"] for row in rows if row["kind"] == "slice"} == {"96"}
    assert all(row["test_loss"] == "" for row in rows if row["kind"] == "contour")
    assert results.read_rows(outcome.csv_path) == rows
    runs = results.read_rows(os.path.join(output_dir, "runs.csv"))
    assert [row["regime"] for row in runs] == ["SB", "LB"]
    assert rows[0]["sb_run_id"] == runs[0]["run_id"] and rows[0]["lb_run_id"] == runs[1]["run_id"]


def test_path_ends_equal_the_evaluations_of_the_two_minimizers_exactly(finished, minimizers):
    output_dir, outcome = finished
    train_data, test_data = train.load_data(_config().sb)
    runs = {row["run_id"]: row for row in results.read_rows(os.path.join(output_dir,
                                                                         "runs.csv"))}
    for alpha, model, run_id in zip((0.0, 1.0), minimizers,
                                    (outcome.rows[0]["sb_run_id"], outcome.rows[0]["lb_run_id"]),
                                    strict=True):
        on_train = evaluation.evaluate(model, train_data.features, train_data.labels,
                                       batch_size=128)
        on_test = evaluation.evaluate(model, test_data.features, test_data.labels,
                                      batch_size=64)
        for kind in landscape.PATHS:
            row = _point(outcome.rows, kind, alpha)
            assert float(row["train_loss"]) == on_train.loss
            assert float(row["train_accuracy"]) == on_train.accuracy
            assert float(row["test_loss"]) == on_test.loss
            assert float(row["test_accuracy"]) == on_test.accuracy
        # The training run's own final evaluation is the same number.
        assert float(runs[run_id]["test_loss"]) == on_test.loss


def test_interior_points_match_weights_mixed_by_hand(finished, minimizers):
    _, outcome = finished
    train_data, _ = train.load_data(_config().sb)
    sb_model = keras.models.clone_model(minimizers[0])
    x_sb, x_lb = minimizers[0].get_weights(), minimizers[1].get_weights()
    trainable = [w.trainable for w in sb_model.weights]
    for kind, alpha, c_lb, c_sb in (("linear", 0.5, 0.5, 0.5), ("linear", -1.0, -1.0, 2.0),
                                    ("curvilinear", 0.5, math.sin(math.pi / 4),
                                     math.cos(math.pi / 4)),
                                    ("curvilinear", 2.0, 0.0, -1.0)):
        t = min(max(alpha, 0.0), 1.0)
        sb_model.set_weights([
            (c_lb * b.astype(np.float64) + c_sb * a.astype(np.float64) if is_trainable
             else t * b.astype(np.float64) + (1 - t) * a.astype(np.float64)).astype(a.dtype)
            for a, b, is_trainable in zip(x_sb, x_lb, trainable, strict=True)])
        expected = evaluation.evaluate(sb_model, train_data.features, train_data.labels,
                                       batch_size=128)
        row = _point(outcome.rows, kind, alpha)
        assert float(row["train_loss"]) == pytest.approx(expected.loss, rel=1e-5)
        assert float(row["train_accuracy"]) == pytest.approx(expected.accuracy, abs=1 / 256)


def test_slices_and_contours_pass_through_the_minimizer(finished, minimizers):
    rows = finished[1].rows
    train_data, _ = train.load_data(_config().sb)
    index = np.sort(np.random.default_rng(2).choice(256, size=96, replace=False))
    for center, model in zip(("SB", "LB"), minimizers, strict=True):
        at_minimizer = evaluation.evaluate(model, train_data.features[index],
                                           train_data.labels[index], batch_size=96)
        slice_zero = _point(rows, "slice", 0.0, center)
        assert float(slice_zero["train_loss"]) == at_minimizer.loss
        assert float(_point(rows, "contour", 0.0, center, "0.0")["train_loss"]) \
            == at_minimizer.loss
        for t in (0.0, 0.5):  # The contour's u = 0 line is slice direction 0.
            assert _point(rows, "contour", t, center, "0.0")["train_loss"] \
                == _point(rows, "slice", t, center)["train_loss"]
        assert float(_point(rows, "slice", 0.5, center)["train_loss"]) != at_minimizer.loss


def test_rerun_evaluates_nothing_and_a_finer_grid_only_its_new_points(finished, monkeypatch):
    output_dir, outcome = finished
    calls = []
    real_call = evaluation.Evaluator.__call__

    def counting(self):
        calls.append(self.num_examples)
        return real_call(self)

    def fail(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(evaluation.Evaluator, "__call__", counting)
    monkeypatch.setattr(train, "train", fail)
    again = parametric.run(_config(), output_dir=output_dir, quiet=True)
    assert calls == [] and again.rows == outcome.rows
    finer = parametric.run(_config(alphas=(-1.0, 0.0, 0.5, 0.75, 1.0, 2.0)),
                           output_dir=output_dir, quiet=True)
    assert calls == [256, 64, 256, 64]  # alpha 0.75 on both paths: train and test sets.
    assert len(finer.rows) == len(outcome.rows) + 2


def test_bad_input_is_one_clear_error_and_writes_nothing(tmp_path):
    with pytest.raises(landscape.LandscapeError, match="strictly increasing"):
        _config(alphas=(0.0, -1.0, 1.0))
    with pytest.raises(landscape.LandscapeError, match="empty"):
        _config(alphas=())
    with pytest.raises(train.TrainError, match="larger than the training set"):
        parametric.run(_config(sb_batch=1000), output_dir=str(tmp_path), quiet=True)
    assert os.listdir(tmp_path) == []


def _non_blank(path):
    import matplotlib.image

    image = matplotlib.image.imread(path)[..., :3]
    non_white = np.mean(np.any(image < 0.9, axis=-1))
    return non_white, float(image.std())


def test_figures_are_drawn_from_the_csv_alone_without_tensorflow(finished, tmp_path):
    _, outcome = finished
    script = (
        "import sys\n"
        "sys.modules['tensorflow'] = None\nsys.modules['keras'] = None\n"
        "from lbgap_tf import results\nfrom lbgap_tf.reporting import plots\n"
        f"paths = plots.parametric_figures(results.read_rows({outcome.csv_path!r}), "
        f"{str(tmp_path)!r})\n"
        "print('\\n'.join(paths))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    written = done.stdout.split()
    names = sorted(os.path.basename(path).split("_F1")[0] for path in written)
    assert names == ["contours", "fig3_linear", "fig7_curvilinear", "slices"]
    for path in written:
        assert os.path.getsize(path) > 20_000
        non_white, spread = _non_blank(path)
        assert non_white > 0.03 and spread > 0.05, path
    with pytest.raises(plots.PlotError, match="no parametric rows"):
        plots.parametric_figures([], str(tmp_path))


def test_binary_rejects_bad_alphas_in_one_line_without_writing(tmp_path):
    code, _, err = binaries.run(
        "benchmarks.parametric", "--dataset=synthetic", "--alphas=0,-1,1",
        f"--output_dir={tmp_path}/out", env=binaries.environment(**binaries.NOISY_TENSORFLOW))
    assert code == 1
    message = binaries.error_message(err, "parametric.py")
    assert message.startswith("--alphas") and "strictly increasing" in message
    assert not os.path.exists(tmp_path / "out")
