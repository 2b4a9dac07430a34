"""Training: loss falls, shared x0, replica-count invariance, stopping rules, resume."""

import dataclasses
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from lbgap_tf import data, distribute, results, train
from lbgap_tf.train import rundir

SPEC = data.SyntheticSpec(num_train=256, num_test=64, input_shape=(16,), num_classes=4, seed=1)


@pytest.fixture(scope="module")
def splits():
    config = train.TrainConfig(dataset="synthetic", synthetic=SPEC)
    return train.load_data(config)


def _config(**overrides):
    values = dict(model="F1", dataset="synthetic", synthetic=SPEC, batch_size=64, epochs=2,
                  steps_per_call=3, eval_batch_size=64)
    values.update(overrides)
    return train.TrainConfig(**values)


def _run(config, splits, run_dir, strategy=None, **kwargs):
    return train.train(config, *splits, run_dir=str(run_dir), strategy=strategy, quiet=True,
                       **kwargs)


def _weights(result):
    return [np.asarray(w) for w in result.model.weights]


def test_loss_falls_on_the_synthetic_task(splits, tmp_path):
    result = _run(_config(epochs=3), splits, tmp_path)
    losses = [row["train_loss"] for row in result.history]
    assert losses[0] > losses[1] > losses[2]
    assert losses[0] > 0.5 and losses[2] < 0.1
    assert result.train.accuracy > 0.95 and result.test.accuracy > 0.9
    assert result.epochs_run == 3 and result.stop_reason == "epochs"
    assert [row["steps"] for row in result.history] == [4, 4, 4]  # 256 // 64
    assert (tmp_path / "model.keras").exists() and (tmp_path / "history.csv").exists()


def test_lb_starts_from_the_x0_file_not_from_its_seed(splits, tmp_path):
    """LB gets another seed than SB and a perturbed copy of SB's x0.npz: its initial weights
    must be the file's values (neither its own seed's draw nor SB's)."""
    sb = _run(_config(regime="SB", epochs=1), splits, tmp_path / "sb")
    drawn = train.load_x0(str(tmp_path / "sb" / train.X0_FILE))
    rng = np.random.default_rng(7)
    perturbed = [w + rng.normal(scale=0.1, size=w.shape).astype(w.dtype) for w in drawn]
    x0_path = str(tmp_path / "perturbed.npz")
    np.savez(x0_path, **{f"w{i:04d}": w for i, w in enumerate(perturbed)})
    lb = _run(_config(regime="LB", batch_size=None, epochs=1, seed=1, x0_path=x0_path), splits,
              tmp_path / "lb")
    assert lb.config.batch_size == round(0.1 * SPEC.num_train)  # LB = 10% of the data.
    started = train.load_x0(str(tmp_path / "lb" / train.X0_FILE))  # The model's weights.
    assert len(started) == len(perturbed) == 32  # F1: 5 x (W, b, BN 4) + logits (W, b).
    for a, b in zip(started, perturbed, strict=True):
        np.testing.assert_array_equal(a, b)
    assert lb.x0.startswith(x0_path)
    # Both trained away from their x0, along different paths.
    assert not np.array_equal(_weights(sb)[0], drawn[0])
    assert not np.array_equal(_weights(lb)[0], perturbed[0])


@pytest.fixture(scope="module")
def replica_runs(splits, tmp_path_factory):
    """F1 trained 3 epochs on one device and on 2 mirrored replicas, in both BN modes."""
    runs = {}
    for bn_mode in ("moving", "batch"):
        config = _config(epochs=3, bn_mode=bn_mode)
        root = tmp_path_factory.mktemp(bn_mode)
        runs[bn_mode] = (
            _run(config, splits, root / "one", tf.distribute.get_strategy()),
            _run(config, splits, root / "two", distribute.get_strategy("mirrored")),
        )
    return runs


@pytest.mark.parametrize("bn_mode", ["moving", "batch"])
def test_two_mirrored_replicas_follow_the_one_device_trajectory(replica_runs, bn_mode):
    one, two = replica_runs[bn_mode]
    assert two.strategy["replicas"] == 2 and one.strategy["replicas"] == 1
    # Same global batches, loss averaged over the global batch, BN statistics synchronised:
    # only float reassociation separates the runs (observed ~1e-7 relative).
    np.testing.assert_allclose([r["train_loss"] for r in two.history],
                               [r["train_loss"] for r in one.history], rtol=1e-5)
    # The biases of the Dense layers that feed BN have a zero true gradient (BN subtracts
    # the mean), so ADAM turns their float noise into updates of up to the learning rate:
    # they differ between any two summation orders and do not change the function.
    for weight, a, b in zip(two.model.weights, _weights(two), _weights(one), strict=True):
        if weight.path.startswith("dense") and weight.path.endswith("bias"):
            continue
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=weight.path)
    assert two.test.loss == pytest.approx(one.test.loss, rel=1e-4)


def test_per_replica_bn_statistics_change_the_trajectory(replica_runs, splits, tmp_path):
    _, synced = replica_runs["batch"]
    ghost = _run(dataclasses.replace(synced.config, bn_sync=False), splits, tmp_path,
                 distribute.get_strategy("mirrored"))
    assert train.run_record(ghost, run_id="g")["bn_sync"] is False
    assert abs(ghost.history[0]["train_loss"] - synced.history[0]["train_loss"]) > 1e-4


def test_per_replica_moving_statistics_on_several_replicas_are_refused(splits, tmp_path):
    # Each replica would keep its own moving statistics and model.keras replica 0's only.
    config = _config(bn_mode="moving", bn_sync=False)
    with pytest.raises(train.TrainError, match=r"--nobn_sync\) with --bn_mode=moving on 2 "):
        _run(config, splits, tmp_path / "two", distribute.get_strategy("mirrored"))
    assert not (tmp_path / "two").exists()
    one = _run(dataclasses.replace(config, epochs=1), splits, tmp_path / "one",
               tf.distribute.get_strategy())  # One replica: nothing to keep apart.
    assert one.epochs_run == 1


def test_batch_not_divisible_by_the_replicas_is_a_clear_error(splits, tmp_path):
    with pytest.raises(train.TrainError, match="not divisible by the 2 replicas"):
        _run(_config(batch_size=63), splits, tmp_path, distribute.get_strategy("mirrored"))
    with pytest.raises(train.TrainError, match="larger than the training set"):
        _run(_config(batch_size=257), splits, tmp_path)
    assert not tmp_path.joinpath("history.csv").exists()


class _Interrupt(Exception):
    pass


def test_resume_after_an_interrupt_ends_with_the_uninterrupted_weights(tmp_path):
    # C1 has dropout: its RNG state must come back with the checkpoint too.
    spec = data.SyntheticSpec(num_train=128, num_test=32, input_shape=(8, 8, 1),
                              num_classes=4, seed=1)
    config = _config(model="C1", synthetic=spec, batch_size=32, epochs=4)
    splits = train.load_data(config)
    straight = _run(config, splits, tmp_path / "straight")

    def stop_after_two(epoch, row):
        if epoch == 2:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        _run(config, splits, tmp_path / "resumed", on_epoch_end=stop_after_two)
    seen = []
    resumed = _run(config, splits, tmp_path / "resumed",
                   on_epoch_end=lambda epoch, row: seen.append(epoch))
    assert seen == [3, 4]  # Epochs 1-2 came from the checkpoint.
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"]
                                                          for r in straight.history]
    for a, b in zip(resumed.model.variables, straight.model.variables, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # A finished run rerun trains nothing and reports the same result.
    again = _run(config, splits, tmp_path / "resumed", on_epoch_end=lambda *a: seen.append(0))
    assert seen == [3, 4] and again.epochs_run == 4
    assert again.test == resumed.test


def test_a_moved_run_resumes_with_its_x0_spelled_another_way(splits, tmp_path, monkeypatch):
    """An interrupted run whose x0 file is named by another path (relative, then absolute
    after its folder moved) and whose steps_per_call changed resumes: what defines a run is
    the x0's content and the fields that change results, not a path or a performance field;
    the resumed run ends with the uninterrupted run's weights."""
    old, new = tmp_path / "old", tmp_path / "new"
    x0 = train.make_x0(_config(seed=5), splits[0].info)
    (old / "x").mkdir(parents=True)
    np.savez(old / "x" / "x0.npz", **{f"w{i:04d}": w for i, w in enumerate(x0)})
    monkeypatch.chdir(old)
    config = _config(epochs=3, x0_path="./x/x0.npz")
    straight = _run(config, splits, old / "straight")

    def stop_after_one(epoch, row):
        if epoch == 1:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        _run(config, splits, old / "x" / "run", on_epoch_end=stop_after_one)
    monkeypatch.chdir(tmp_path)
    old.rename(new)
    moved = dataclasses.replace(config, x0_path=str(new / "x" / "x0.npz"), steps_per_call=1)
    description = distribute.describe(tf.distribute.get_strategy())
    assert train.run_id(train.resolve(moved, 256, 1), description) == train.run_id(
        train.resolve(dataclasses.replace(config, x0_path=moved.x0_path), 256, 1), description)
    seen = []
    resumed = _run(moved, splits, new / "x" / "run",
                   on_epoch_end=lambda epoch, row: seen.append(epoch))
    assert seen == [2, 3]  # Epoch 1 came from the checkpoint.
    for a, b in zip(resumed.model.variables, straight.model.variables, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(train.TrainError, match=r"differs in \['x0_path'\]"):
        np.savez(tmp_path / "other.npz", **{f"w{i:04d}": w + 1 for i, w in enumerate(x0)})
        _run(dataclasses.replace(moved, x0_path=str(tmp_path / "other.npz")), splits,
             new / "x" / "run")


def test_a_failed_history_rewrite_leaves_the_old_history(tmp_path, monkeypatch):
    """Resuming after epoch 2 drops the rows of later epochs; the file is replaced
    atomically, so a write that fails midway (here fsync: a full disk) keeps every row."""
    path = tmp_path / train.HISTORY_FILE
    for epoch in (1, 2, 3):
        results.append_row(path, {"epoch": epoch, "train_loss": 1.0 / epoch,
                                  "finished_at": "t"})
    before = path.read_bytes()

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", full_disk)
        with pytest.raises(OSError, match="No space left"):
            rundir.restore_history(str(path), 2)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [train.HISTORY_FILE]  # No leftovers.
    rows = rundir.restore_history(str(path), 2)
    assert [row["train_loss"] for row in rows] == [1.0, 0.5]
    assert path.read_text() == "epoch,train_loss,finished_at\n1,1.0,t\n2,0.5,t\n"


def test_stop_reason_follows_the_plateau_rule():
    fixed = train.TrainConfig(epochs=3)
    assert train.stop_reason([1.0, 0.5], fixed) is None
    assert train.stop_reason([1.0, 0.5, 0.4], fixed) == "epochs"
    plateau = train.TrainConfig(epochs=10, plateau_patience=2, plateau_tol=0.1)
    assert plateau.stop_rule == "plateau(tol=0.1,patience=2,cap=10)"
    # 1.0 -> 0.8 improves by 20% (> 10%); 0.75 and 0.73 improve on 0.8 by < 10%: stop.
    assert train.stop_reason([1.0, 0.8, 0.75], plateau) is None
    assert train.stop_reason([1.0, 0.8, 0.75, 0.73], plateau) == "plateau"
    # 0.71 is 11.25% below the best 0.8: the count restarts.
    assert train.stop_reason([1.0, 0.8, 0.75, 0.71], plateau) is None
    assert train.stop_reason([1.0] * 10, train.TrainConfig(epochs=10, plateau_patience=20)) \
        == "epochs"
    for bad in (float("nan"), float("inf")):
        assert train.stop_reason([1.0, bad], fixed) == "diverged"
        assert train.stop_reason([1.0, 0.8, 0.75, bad], plateau) == "diverged"


def test_a_diverging_run_stops_at_its_first_non_finite_epoch(splits, tmp_path):
    config = _config(optimizer="sgd", learning_rate=1000.0, epochs=4, eval_every_epoch=True)
    seen = []
    result = _run(config, splits, tmp_path, on_epoch_end=lambda epoch, row: seen.append(epoch))
    losses = [row["train_loss"] for row in result.history]
    assert result.stop_reason == "diverged" and result.epochs_run == len(losses) < 4
    assert not np.isfinite(losses[-1]) and np.all(np.isfinite(losses[:-1]))
    assert np.isnan([result.train.loss, result.train.accuracy, result.test.accuracy]).all()
    assert result.history[-1]["test_accuracy"] is None  # NaN weights are never evaluated.
    row = train.run_record(result, run_id="d")
    assert row["stop_reason"] == "diverged" and row["epochs_run"] == len(losses)
    assert [row[c] for c in ("train_loss", "train_accuracy", "test_loss", "test_accuracy")] \
        == [None] * 4  # Never a number: the weights were not evaluated.
    again = _run(config, splits, tmp_path, on_epoch_end=lambda epoch, row: seen.append(epoch))
    assert seen == list(range(1, len(losses) + 1))  # The rerun trained nothing.
    assert again.stop_reason == "diverged" and again.epochs_run == len(losses)


def test_plateau_stopping_is_recorded(splits, tmp_path):
    config = _config(epochs=10, plateau_patience=1, plateau_tol=10.0)  # Nothing is enough.
    result = _run(config, splits, tmp_path)
    assert result.epochs_run == 2 and result.stop_reason == "plateau"
    row = train.run_record(result, run_id="r")
    assert row["stop_rule"] == "plateau(tol=10,patience=1,cap=10)"
    assert row["epochs_run"] == 2 and tuple(row) == train.RUN_COLUMNS
    with pytest.raises(train.TrainError, match=r"another configuration \(differs in \['learning"):
        _run(dataclasses.replace(config, learning_rate=0.01), splits, tmp_path)


def test_eval_every_epoch_matches_an_independent_evaluation(splits, tmp_path):
    result = _run(_config(epochs=1, eval_every_epoch=True), splits, tmp_path)
    row = result.history[0]
    features, labels = splits[1].features, splits[1].labels
    logits = result.model(features, training=False).numpy().astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    assert row["test_loss"] == pytest.approx(-log_probs[np.arange(len(labels)), labels].mean(),
                                             rel=1e-5)
    assert row["test_accuracy"] == pytest.approx(np.mean(logits.argmax(1) == labels))
    assert result.test.loss == pytest.approx(row["test_loss"], rel=1e-6)


@pytest.mark.parametrize("precision,jit", [("mixed_bfloat16", False), ("mixed_float16", False),
                                           ("float32", True)])
def test_precision_policies_and_xla_train(splits, tmp_path, precision, jit):
    result = _run(_config(epochs=2, precision=precision, jit_compile=jit), splits, tmp_path)
    losses = [row["train_loss"] for row in result.history]
    assert np.isfinite(losses).all() and losses[1] < losses[0]
    assert result.model.layers[1].compute_dtype == precision.removeprefix("mixed_")


def test_xla_with_several_replicas_is_a_clear_error(splits, tmp_path):
    with pytest.raises(train.TrainError, match="jit_compile"):
        _run(_config(jit_compile=True), splits, tmp_path, distribute.get_strategy("mirrored"))


def test_bad_configs_and_x0_files_are_clear_errors(splits, tmp_path):
    with pytest.raises(train.TrainError, match="unknown model 'F9'"):
        _config(model="F9")
    with pytest.raises(train.TrainError, match="epochs must be a positive integer"):
        _config(epochs=0)
    with pytest.raises(train.TrainError, match="learning_rate must be positive"):
        _config(learning_rate=0.0)
    with pytest.raises(train.TrainError, match="does not exist"):
        train.load_x0(str(tmp_path / "absent.npz"))
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a numpy archive")
    with pytest.raises(train.TrainError, match="cannot read initial weights"):
        train.load_x0(str(garbage))
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, w0000=np.zeros((3, 3), np.float32))
    with pytest.raises(train.TrainError, match="do not fit F1"):
        _run(_config(x0_path=str(wrong)), splits, tmp_path / "run")


def test_fused_adam_matches_keras_adam():
    rng = np.random.default_rng(0)
    start = rng.normal(size=(40, 6)).astype(np.float32)
    reference, fused = keras.Variable(start), keras.Variable(start)
    keras_adam, fused_adam = keras.optimizers.Adam(1e-2), train.FusedAdam(1e-2)
    keras_adam.build([reference])
    fused_adam.build([fused])

    @tf.function
    def step(gradient):
        keras_adam.apply_gradients([(gradient, reference)])
        fused_adam.apply_gradients([(gradient, fused)])

    for _ in range(25):
        step(tf.constant(rng.normal(size=(40, 6)).astype(np.float32)))
    assert int(fused_adam.iterations) == 25
    moved = np.abs(np.asarray(reference) - start).max()
    assert moved > 0.1  # 25 steps of up to lr = 0.01 each.
    np.testing.assert_allclose(np.asarray(fused), np.asarray(reference), rtol=0, atol=1e-5)


def test_adam_epsilon_reaches_the_optimizer_and_the_run_key(splits):
    """One ADAM step computed by hand with eps = 1e-3, where sqrt(v) <= 3.2e-4 makes eps
    dominate the denominator (the default 1e-7 would move the weights 4-7x further)."""
    config = _config(adam_epsilon=1e-3, learning_rate=0.1)
    gradient, start = np.array([0.01, -0.005], np.float32), np.array([1.0, 2.0], np.float32)
    weight = keras.Variable(start)
    optimizer = train.make_optimizer(config, SPEC.num_train)
    optimizer.build([weight])
    optimizer.apply_gradients([(tf.constant(gradient), weight)])
    g = gradient.astype(np.float64)
    m, v = 0.1 * g, 0.001 * g ** 2  # (1 - beta_1) g, (1 - beta_2) g^2 after one step.
    alpha = 0.1 * np.sqrt(1 - 0.999) / (1 - 0.9)
    expected = start - alpha * m / (np.sqrt(v) + 1e-3)
    np.testing.assert_allclose(np.asarray(weight), expected, rtol=1e-6)
    default_step = alpha * m / (np.sqrt(v) + 1e-7)
    assert np.all(np.abs(default_step) > 3 * np.abs(expected - start))
    description = distribute.describe(tf.distribute.get_strategy())
    ids = {train.run_id(train.resolve(_config(adam_epsilon=eps), 256, 1), description)
           for eps in (1e-7, 1e-8)}
    assert len(ids) == 2
    with pytest.raises(train.TrainError, match="adam_epsilon must be in"):
        _config(adam_epsilon=0.0)
