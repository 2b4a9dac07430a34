"""The six paper networks: exact sizes, shapes, and the two BN modes."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from lbgap_tf import models


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_trainable_parameter_counts_match_table_1(name):
    model = models.build(name)
    assert models.count_trainable(model) == models.spec(name).paper_params
    assert model.output_shape == (None, models.spec(name).num_classes)


def test_paper_counts_are_the_published_ones():
    published = {"F1": 1_462_794, "F2": 2_780_085, "C1": 1_757_834, "C2": 14_991_946,
                 "C3": 1_775_204, "C4": 15_038_116}
    assert {name: models.spec(name).paper_params for name in models.MODEL_NAMES} == published


def test_f1_count_from_its_layer_sizes():
    # 784 -> 5 x [Dense 512 (W, b) -> BN (gamma, beta)] -> Dense 10.
    widths = [784, 512, 512, 512, 512, 512]
    hidden = sum(a * b + b + 2 * b for a, b in zip(widths[:-1], widths[1:], strict=True))
    assert models.count_trainable(models.build("F1")) == hidden + 512 * 10 + 10


@pytest.mark.parametrize(
    "name, input_shape, num_classes",
    [("F1", (20,), 3), ("C1", (28, 28, 1), 10), ("C2", (28, 28, 1), 7)],
)
def test_input_and_class_overrides(name, input_shape, num_classes):
    model = models.build(name, input_shape=input_shape, num_classes=num_classes)
    batch = np.random.default_rng(0).random((4, *input_shape), dtype=np.float32)
    logits = model(batch, training=False)
    assert logits.shape == (4, num_classes)
    assert logits.dtype == "float32"


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="unknown model 'F9'.*F1, F2, C1, C2, C3, C4"):
        models.build("F9")


def test_unknown_bn_mode():
    with pytest.raises(ValueError, match="unknown bn_mode 'mode2'.*moving, batch"):
        models.build("F1", bn_mode="mode2")


@pytest.mark.parametrize(
    "name, input_shape, message",
    [("F1", (28, 28, 1), "flat inputs"), ("C1", (784,), "images")],
)
def test_wrong_input_rank(name, input_shape, message):
    with pytest.raises(ValueError, match=message):
        models.build(name, input_shape=input_shape)


def _first_example_logits(model, batch):
    return keras.ops.convert_to_numpy(model(batch, training=False))[0]


def test_batch_mode_normalises_with_the_batch_at_inference():
    keras.utils.set_random_seed(1)
    model = models.build("F1", input_shape=(6,), num_classes=3, bn_mode="batch")
    rng = np.random.default_rng(0)
    batch = rng.normal(size=(8, 6)).astype(np.float32)
    changed = batch.copy()
    changed[1:] = rng.normal(loc=3.0, size=(7, 6))
    moving_before = [keras.ops.convert_to_numpy(v) for v in model.non_trainable_weights]
    same = _first_example_logits(model, batch)
    other = _first_example_logits(model, changed)
    assert not np.allclose(same, other, atol=1e-4)
    moving_after = [keras.ops.convert_to_numpy(v) for v in model.non_trainable_weights]
    for before, after in zip(moving_before, moving_after, strict=True):
        np.testing.assert_array_equal(before, after)


def test_batch_mode_matches_an_explicit_normalisation():
    """One Dense -> BN step in batch mode equals (h - mean_batch) / sqrt(var_batch + eps)."""
    keras.utils.set_random_seed(2)
    model = models.build("F1", input_shape=(5,), num_classes=2, bn_mode="batch")
    x = np.random.default_rng(3).normal(size=(16, 5)).astype(np.float32)
    dense, bn = model.layers[1], model.layers[2]
    hidden = keras.ops.convert_to_numpy(dense(x))
    expected = (hidden - hidden.mean(0)) / np.sqrt(hidden.var(0) + 1e-3)
    expected = expected * keras.ops.convert_to_numpy(bn.gamma) + keras.ops.convert_to_numpy(
        bn.beta
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(bn(dense(x), training=False)), expected, atol=1e-4
    )


def test_moving_mode_is_independent_of_the_batch_at_inference():
    keras.utils.set_random_seed(1)
    model = models.build("F1", input_shape=(6,), num_classes=3, bn_mode="moving")
    rng = np.random.default_rng(0)
    batch = rng.normal(size=(8, 6)).astype(np.float32)
    changed = batch.copy()
    changed[1:] = rng.normal(loc=3.0, size=(7, 6))
    np.testing.assert_allclose(
        _first_example_logits(model, batch), _first_example_logits(model, changed), atol=1e-6
    )


def test_bn_mode_of():
    assert models.bn_mode_of(models.build("F1", input_shape=(3,), bn_mode="batch")) == "batch"
    assert models.bn_mode_of(models.build("F1", input_shape=(3,))) == "moving"


@pytest.mark.parametrize("bn_mode", models.BN_MODES)
def test_a_model_survives_keras_save_and_load(tmp_path, bn_mode):
    model = models.build("F1", input_shape=(4,), num_classes=2, bn_mode=bn_mode)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert models.bn_mode_of(loaded) == bn_mode
    assert all(layer.synchronized for layer in loaded.layers
               if isinstance(layer, models.ReplicaAwareBatchNormalization))
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x, training=False)),
        keras.ops.convert_to_numpy(model(x, training=False)),
        atol=1e-6,
    )


def _normalised(x):
    """(x - mean) / sqrt(var + eps) per column with two-pass float64 moments (gamma 1, beta 0)."""
    x = x.astype(np.float64)
    return (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-3)


def _columns(mean_to_std, size=512, seed=0):
    """A float32 batch of 4 columns with std 1 and mean ``mean_to_std`` times 1..4."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(size, 4)) + mean_to_std * np.arange(1, 5)).astype(np.float32)


def test_synchronized_bn_on_one_replica_uses_the_two_pass_moments():
    """At mean/std = 1000, E[x^2] - E[x]^2 in float32 loses most of the variance's digits
    (ulp(1.6e7) = 1 against a variance of 1); the one-replica path keeps them."""
    x = _columns(1000.0)
    expected = _normalised(x)
    ours = models.ReplicaAwareBatchNormalization(epsilon=1e-3, synchronized=True)
    keras_sync = keras.layers.BatchNormalization(epsilon=1e-3, synchronized=True)
    error = np.abs(keras.ops.convert_to_numpy(ours(x, training=True)) - expected).max()
    before = np.abs(keras.ops.convert_to_numpy(keras_sync(x, training=True)) - expected).max()
    assert error < 2e-3  # The subtraction x - mean in float32 (ulp(4000) = 5e-4) bounds it.
    assert before > 10 * error, (before, error)


def test_synchronized_bn_on_two_replicas_gives_the_one_replica_values():
    """The global batch split over 2 mirrored replicas is normalised with the global batch's
    statistics (Keras' synchronised moments), as on one replica (two-pass moments)."""
    x = _columns(3.0, size=64, seed=1)
    one = models.ReplicaAwareBatchNormalization(epsilon=1e-3, synchronized=True)
    one_out = keras.ops.convert_to_numpy(one(x, training=True))
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        two = models.ReplicaAwareBatchNormalization(epsilon=1e-3, synchronized=True)
        two.build(x.shape)
    halves = strategy.experimental_distribute_values_from_function(
        lambda context: tf.constant(x[32 * context.replica_id_in_sync_group:][:32]))
    outputs = strategy.run(tf.function(lambda part: two(part, training=True)), args=(halves,))
    two_out = np.concatenate([np.asarray(o) for o in strategy.experimental_local_results(
        outputs)])
    np.testing.assert_allclose(two_out, one_out, rtol=0, atol=1e-4)  # E[x^2] rounding.
    np.testing.assert_allclose(one_out, _normalised(x), rtol=0, atol=2e-5)
    # Each replica alone has other statistics: the agreement is the synchronisation's.
    assert np.abs(_normalised(x[:32]) - one_out[:32]).max() > 1e-2
