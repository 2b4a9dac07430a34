"""Data and schedule remedies: ghost BN against per-chunk numpy BN, LR scaling and warm-up,
batch growth (batches visited, exact resume), augmentation, run ids and clear errors."""

import dataclasses
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from lbgap_tf import data, distribute, models, train
from lbgap_tf.train import schedules

SPEC = data.SyntheticSpec(num_train=256, num_test=64, input_shape=(16,), num_classes=4, seed=1)
IMAGES = data.SyntheticSpec(num_train=128, num_test=32, input_shape=(8, 8, 1), num_classes=4,
                            seed=1)
ONE_DEVICE = {"strategy": "default", "replicas": 1, "workers": 1}


def _config(**overrides):
    values = dict(model="F1", dataset="synthetic", synthetic=SPEC, batch_size=64, epochs=2,
                  steps_per_call=3, eval_batch_size=64)
    values.update(overrides)
    return train.TrainConfig(**values)


def _run(config, run_dir, strategy=None, **kwargs):
    return train.train(config, *train.load_data(config), run_dir=str(run_dir),
                       strategy=strategy, quiet=True, **kwargs)


def _numpy_bn(x, gamma, beta, eps):
    """Plain BN of one batch in float64: statistics over every axis but the last."""
    axes = tuple(range(x.ndim - 1))
    mean, var = x.mean(axis=axes), x.var(axis=axes)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta, mean, var


@pytest.mark.parametrize("shape", [(12, 5), (8, 3, 3, 4)])
def test_ghost_bn_normalises_each_chunk_as_numpy_does(shape):
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, size=shape).astype(np.float32)
    ghost = 4
    layer = models.GhostBatchNormalization(ghost, epsilon=1e-3, momentum=0.9)
    layer.build(shape)
    gamma = rng.normal(size=shape[-1]).astype(np.float32)
    beta = rng.normal(size=shape[-1]).astype(np.float32)
    moving_mean = rng.normal(size=shape[-1]).astype(np.float32)
    moving_var = rng.uniform(0.5, 2, size=shape[-1]).astype(np.float32)
    layer.set_weights([gamma, beta, moving_mean, moving_var])
    out = np.asarray(layer(x, training=True))
    chunks = [_numpy_bn(x[i:i + ghost].astype(np.float64), gamma, beta, 1e-3)
              for i in range(0, shape[0], ghost)]
    np.testing.assert_allclose(out, np.concatenate([c[0] for c in chunks]), rtol=1e-4,
                               atol=1e-4)
    # Moving statistics move toward the chunks' average mean and variance.
    mean = np.mean([c[1] for c in chunks], axis=0)
    var = np.mean([c[2] for c in chunks], axis=0)
    np.testing.assert_allclose(np.asarray(layer.moving_mean), 0.9 * moving_mean + 0.1 * mean,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(layer.moving_variance),
                               0.9 * moving_var + 0.1 * var, rtol=1e-5, atol=1e-5)
    # Chunks of 4 are not the whole batch: the result differs from plain BN.
    assert not np.allclose(out, _numpy_bn(x.astype(np.float64), gamma, beta, 1e-3)[0],
                           atol=1e-3)
    # Inference is standard BN with the moving statistics.
    inferred = np.asarray(layer(x, training=False))
    expected = (x - layer.moving_mean) / np.sqrt(np.asarray(layer.moving_variance) + 1e-3)
    np.testing.assert_allclose(inferred, expected * gamma + beta, rtol=1e-4, atol=1e-4)


def test_a_ghost_batch_of_the_whole_batch_is_plain_bn():
    x = np.random.default_rng(1).normal(size=(16, 6)).astype(np.float32)
    ghost = models.GhostBatchNormalization(16, epsilon=1e-3, momentum=0.99)
    plain = keras.layers.BatchNormalization(epsilon=1e-3, momentum=0.99)
    for layer in (ghost, plain):
        layer.build(x.shape)
    np.testing.assert_allclose(np.asarray(ghost(x, training=True)),
                               np.asarray(plain(x, training=True)), rtol=1e-5, atol=1e-5)
    for a, b in zip(ghost.weights, plain.weights, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_ghost_bn_moving_statistics_are_the_global_batch_s_on_every_replica():
    # 2 replicas x 2 ghosts of 4 examples: each replica's copy of the moving statistics moves
    # toward the mean over all 4 ghosts, so the copies agree and the saved (first) is right.
    x = np.random.default_rng(3).normal(loc=2.0, size=(16, 5)).astype(np.float32)
    x[8:] *= 3.0  # Replica 1's slice has other statistics than replica 0's.
    strategy = distribute.get_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        layer = models.GhostBatchNormalization(4, momentum=0.9)
        layer.build((None, 5))
    inputs = strategy.experimental_distribute_values_from_function(
        lambda context: x[8 * context.replica_id_in_sync_group:][:8])
    strategy.run(tf.function(lambda batch: layer(batch, training=True)), args=(inputs,))
    ghosts = x.reshape(4, 4, 5)
    mean = ghosts.mean(axis=1).mean(axis=0)
    variance = ghosts.var(axis=1).mean(axis=0)
    for copy in strategy.experimental_local_results(layer.moving_mean):
        np.testing.assert_allclose(np.asarray(copy), 0.1 * mean, rtol=1e-5)
    for copy in strategy.experimental_local_results(layer.moving_variance):
        np.testing.assert_allclose(np.asarray(copy), 0.9 + 0.1 * variance, rtol=1e-5)


def test_ghost_bn_models_save_and_use_batch_statistics_in_batch_mode(tmp_path):
    model = models.build("F1", input_shape=(16,), num_classes=4, bn_mode="batch",
                         ghost_batch=8)
    assert models.bn_mode_of(model) == "batch"
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path, compile=False)
    x = np.random.default_rng(2).normal(size=(16, 16)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), rtol=1e-6)
    assert loaded.layers[2].ghost_batch == 8


def test_remedy_fields_stay_out_of_plain_run_ids():
    # The ids of plain configs under the run key of run-defining fields (BUILD.md, "What
    # defines a run"): the remedy fields, off, stay out of them.
    plain = train.resolve(_config(), 256, 1)
    assert train.run_id(plain, ONE_DEVICE) == "F1-synthetic-SB-b64-s0-96841ee67466"
    lb = train.resolve(train.TrainConfig(dataset="fashion_mnist", regime="LB", epochs=40,
                                         bn_mode="batch"), 60000, 1)
    assert train.run_id(lb, ONE_DEVICE) == "F1-fashion_mnist-LB-b6000-s0-a3e712508757"
    assert not set(train.config_dict(plain)) & set(train.config.REMEDY_DEFAULTS)
    # A scaling rule at the reference batch changes no rate: the run is the plain run.
    same = train.resolve(_config(batch_size=256, reference_batch=256, lr_scaling="sqrt",
                                 warmup_epochs=1), 256, 1)
    assert same.lr_scaling == "none" and same.warmup_epochs == 0
    ids = {train.run_id(train.resolve(_config(**remedy), 256, 1), ONE_DEVICE) for remedy in (
        {}, {"lr_scaling": "sqrt"}, {"ghost_batch": 16}, {"batch_schedule": ((2, 128),)},
        {"regime_adaptation": True, "reference_batch": 32})}
    assert len(ids) == 5


def test_bad_remedy_settings_are_one_clear_error():
    cases = [
        (dict(augment=True), "needs an image network, and F1 takes flat vectors"),
        (dict(warmup_epochs=1), "pass --lr_scaling=linear or sqrt"),
        (dict(lr_scaling="cube"), "unknown lr_scaling"),
        (dict(batch_schedule=((1, 128),)), "strictly increasing in 2..2"),
    ]
    for overrides, message in cases:
        with pytest.raises(train.TrainError, match=message):
            _config(**overrides)
    resolved = [
        (dict(batch_schedule=((2, 32),)), 1, "each batch must grow"),
        (dict(batch_schedule=((2, 512),)), 1, "at most the training set"),
        (dict(ghost_batch=24), 1, "ghost batch 24 does not divide the per-replica batch 64"),
        (dict(ghost_batch=64), 2, "does not divide the per-replica batch 32"),
        (dict(ghost_batch=32, batch_schedule=((2, 80),)), 1, "per-replica batch 80"),
    ]
    for overrides, replicas, message in resolved:
        with pytest.raises(train.TrainError, match=message):
            train.resolve(_config(**overrides), 256, replicas)


def test_regime_adaptation_trains_as_many_updates_as_the_reference_batch():
    config = train.resolve(_config(regime_adaptation=True, reference_batch=32, epochs=3),
                           256, 1)
    # 3 epochs of batch 32 = 24 updates; batch 64 makes 4 per epoch: 6 epochs.
    assert config.epochs == 6 and not config.regime_adaptation
    assert train.resolve(config, 256, 1) == config


def test_learning_rate_follows_the_scaling_rule_and_warm_up():
    config = train.resolve(_config(batch_size=32, epochs=3, lr_scaling="linear",
                                   reference_batch=32, warmup_epochs=2,
                                   batch_schedule=((2, 64), (3, 128))), 256, 1)
    schedule = schedules.learning_rate(config, 256)
    # Epochs of 8, 4 and 2 updates at 1x, 2x and 4x the rate; warm-up over the first 12.
    rates = [float(schedule(step)) for step in range(16)]
    lr = 1e-3
    targets = [lr] * 8 + [2 * lr] * 4 + [4 * lr] * 4
    expected = [lr + (t - lr) * min(1, (s + 1) / 12) for s, t in enumerate(targets)]
    np.testing.assert_allclose(rates, expected, rtol=1e-6)
    # The conservative step's 3 optimizer updates per batch are one step of the schedule.
    proximal = schedules.learning_rate(dataclasses.replace(
        config, step_remedy="conservative", conservative_iterations=3), 256)
    np.testing.assert_allclose([float(proximal(3 * s + 2)) for s in range(16)], expected,
                               rtol=1e-6)
    sqrt = train.resolve(_config(lr_scaling="sqrt", reference_batch=16), 256, 1)
    assert float(schedules.learning_rate(sqrt, 256)(0)) == pytest.approx(lr * math.sqrt(4))
    assert schedules.learning_rate(train.resolve(_config(), 256, 1), 256) == lr


class _Interrupt(Exception):
    pass


def _stop_after(last):
    def stop(epoch, row):
        if epoch == last:
            raise _Interrupt
    return stop


@pytest.mark.slow
def test_batch_growth_visits_its_batches_and_resumes_exactly(tmp_path):
    config = _config(batch_size=32, epochs=3, batch_schedule=((2, 64), (3, 128)),
                     lr_scaling="sqrt", reference_batch=32, warmup_epochs=1)
    straight = _run(config, tmp_path / "straight")
    assert [r["steps"] for r in straight.history] == [8, 4, 2]
    assert [r["examples"] for r in straight.history] == [256] * 3
    with pytest.raises(_Interrupt):
        _run(config, tmp_path / "resumed", on_epoch_end=_stop_after(2))
    seen = []
    resumed = _run(config, tmp_path / "resumed",
                   on_epoch_end=lambda epoch, row: seen.append(epoch))
    assert seen == [3]  # Resumed into the schedule's last batch.
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"]
                                                          for r in straight.history]
    for a, b in zip(resumed.model.variables, straight.model.variables, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_augmentation_changes_training_and_resumes_exactly(tmp_path):
    config = _config(model="C1", synthetic=IMAGES, batch_size=32, epochs=2, augment=True)
    plain = _run(dataclasses.replace(config, augment=False, epochs=1), tmp_path / "plain")
    straight = _run(config, tmp_path / "straight")
    assert abs(straight.history[0]["train_loss"] - plain.history[0]["train_loss"]) > 1e-3
    with pytest.raises(_Interrupt):
        _run(config, tmp_path / "resumed", on_epoch_end=_stop_after(1))
    resumed = _run(config, tmp_path / "resumed")
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"]
                                                          for r in straight.history]
    augmenter = schedules.make_augmenter(0)
    images = np.random.default_rng(0).uniform(size=(4, 8, 8, 1)).astype(np.float32)
    moved = np.asarray(augmenter(images, training=True))
    assert moved.shape == images.shape and not np.allclose(moved, images)
    np.testing.assert_array_equal(np.asarray(augmenter(images, training=False)), images)


@pytest.mark.slow
def test_scaled_growing_ghost_bn_training_on_two_replicas_follows_one_device(tmp_path):
    # LR scaling with warm-up, batch growth 64 -> 128 -> 256 and ghosts of 16 with moving
    # statistics: the same ghosts on 1 and 2 devices (each replica's slice holds whole ghosts),
    # the same rates and batches, and moving statistics all-reduced over the global batch, so
    # the training losses and the evaluation (moving statistics) agree up to float rounding.
    config = _config(batch_size=64, epochs=3, batch_schedule=((2, 128), (3, 256)),
                     lr_scaling="sqrt", reference_batch=64, warmup_epochs=1, ghost_batch=16,
                     bn_mode="moving")
    one = _run(config, tmp_path / "one", tf.distribute.get_strategy())
    two = _run(config, tmp_path / "two", distribute.get_strategy("mirrored"))
    assert [r["steps"] for r in two.history] == [4, 2, 1]
    np.testing.assert_allclose([r["train_loss"] for r in two.history],
                               [r["train_loss"] for r in one.history], rtol=1e-4)
    assert two.test.loss == pytest.approx(one.test.loss, rel=1e-4)
