"""The six paper networks: exact sizes, shapes, and the two BN modes."""

import keras
import numpy as np
import pytest

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


def test_batch_mode_model_survives_keras_save_and_load(tmp_path):
    model = models.build("F1", input_shape=(4,), num_classes=2, bn_mode="batch")
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert models.bn_mode_of(loaded) == "batch"
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x, training=False)),
        keras.ops.convert_to_numpy(model(x, training=False)),
        atol=1e-6,
    )
