"""lbgap_tf.evaluation against an independent NumPy computation, on one device and mirrored."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from lbgap_tf import evaluation  # noqa: E402
from tests import numpy_reference as ref  # noqa: E402

# tests/conftest.py splits the CPU into two logical devices for the whole session.
CPUS = [d.name for d in tf.config.list_logical_devices("CPU")]
needs_two_cpus = pytest.mark.skipif(len(CPUS) < 2, reason="needs 2 logical CPU devices")


def _all_variables(model):
    return [v.numpy().copy() for v in model.variables]


def _assert_unchanged(model, before):
    after = _all_variables(model)
    assert len(after) == len(before)
    for a, b in zip(after, before, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("batch_size", [5, 23, 100])
def test_evaluate_matches_numpy(batch_size):
    model = ref.build_tiny_model()
    x, y = ref.tiny_data(n=23)
    before = _all_variables(model)
    result = evaluation.evaluate(model, x, y, batch_size=batch_size)
    loss, accuracy = ref.loss_and_accuracy(ref.tiny_params(model), x, y)
    assert result.num_examples == 23
    assert result.loss == pytest.approx(loss, rel=1e-6)
    assert result.accuracy == pytest.approx(accuracy, abs=1e-12)
    _assert_unchanged(model, before)


@pytest.mark.parametrize("batch_size", [5, 8, 30])
def test_evaluate_batch_statistics_bn_matches_numpy(batch_size):
    model = ref.build_tiny_model(bn_mode="batch")
    x, y = ref.tiny_data(n=23)
    before = _all_variables(model)
    result = evaluation.evaluate(model, x, y, batch_size=batch_size)
    loss, accuracy = ref.batch_mode_loss_and_accuracy(ref.tiny_params(model), x, y, batch_size)
    assert result.loss == pytest.approx(loss, rel=1e-5)
    assert result.accuracy == pytest.approx(accuracy, abs=1e-12)
    _assert_unchanged(model, before)


@needs_two_cpus
@pytest.mark.parametrize("bn_mode", ["moving", "batch"])
@pytest.mark.parametrize("n", [23, 21])
def test_evaluate_mirrored_equals_one_device(bn_mode, n):
    x, y = ref.tiny_data(n=n)
    single = evaluation.evaluate(ref.build_tiny_model(bn_mode=bn_mode), x, y, batch_size=5)
    strategy = tf.distribute.MirroredStrategy(CPUS[:2])
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        model = ref.build_tiny_model(bn_mode=bn_mode)
    before = _all_variables(model)
    # The last global batch (3 or 1 examples) splits 2 + 1 or 1 + 0 over the replicas.
    mirrored = evaluation.evaluate(model, x, y, batch_size=5, strategy=strategy)
    assert mirrored.num_examples == single.num_examples == n
    assert mirrored.loss == pytest.approx(single.loss, rel=1e-6)
    assert mirrored.accuracy == single.accuracy
    _assert_unchanged(model, before)


def test_evaluator_repeated_calls_follow_weights():
    model = ref.build_tiny_model()
    x, y = ref.tiny_data(n=17)
    evaluator = evaluation.Evaluator(model, x, y, batch_size=4)
    first = evaluator()
    assert evaluator() == first
    model.layers[3].bias.assign([3.0, -1.0, 0.5])
    loss, accuracy = ref.loss_and_accuracy(ref.tiny_params(model), x, y)
    second = evaluator()
    assert second.loss == pytest.approx(loss, rel=1e-6)
    assert second.accuracy == pytest.approx(accuracy)
    assert second.loss != first.loss


def test_loss_and_gradient_matches_numpy_and_restores_weights():
    model = ref.build_tiny_model()
    x, y = ref.tiny_data(n=23)
    params = ref.tiny_params(model)
    fn = evaluation.LossAndGradient(model, x, y, batch_size=6)
    assert fn.num_weights == ref.flatten(params).size == 5 * 4 + 4 + 4 + 4 + 4 * 3 + 3
    np.testing.assert_array_equal(fn.flat_weights().numpy(),
                                  ref.flatten(params).astype(np.float32))
    before = _all_variables(model)
    rng = np.random.default_rng(3)
    point = ref.flatten(params) + rng.normal(0, 0.2, fn.num_weights)
    value, grad = fn(point.astype(np.float32))
    expected_value, expected_grad = ref.loss_and_gradient(
        ref.unflatten(point.astype(np.float32), params), x, y)
    assert value.dtype == tf.float64
    assert float(value) == pytest.approx(expected_value, rel=1e-6)
    np.testing.assert_allclose(grad.numpy(), expected_grad, rtol=1e-4, atol=1e-6)
    assert float(fn.value_only(point.astype(np.float32))) == pytest.approx(expected_value,
                                                                          rel=1e-6)
    _assert_unchanged(model, before)


def test_loss_and_gradient_traces_into_an_outer_function():
    model = ref.build_tiny_model()
    x, y = ref.tiny_data(n=11)
    fn = evaluation.LossAndGradient(model, x, y, batch_size=4)
    x0 = fn.flat_weights()

    @tf.function
    def two_points(step):
        value0, grad0 = fn(x0)
        value1, _ = fn(x0 - step * grad0)
        return value0, value1

    value0, value1 = two_points(tf.constant(0.1, tf.float32))
    expected0, grad0 = ref.loss_and_gradient(ref.tiny_params(model), x, y)
    assert float(value0) == pytest.approx(expected0, rel=1e-6)
    point = (x0.numpy() - np.float32(0.1) * grad0.astype(np.float32)).astype(np.float32)
    expected1, _ = ref.loss_and_gradient(ref.unflatten(point, ref.tiny_params(model)), x, y)
    assert float(value1) == pytest.approx(expected1, rel=1e-5)
    assert float(value1) < float(value0)


@needs_two_cpus
@pytest.mark.parametrize("bn_mode", ["moving", "batch"])
def test_loss_and_gradient_mirrored_equals_one_device(bn_mode):
    x, y = ref.tiny_data(n=21)
    single = evaluation.LossAndGradient(ref.build_tiny_model(bn_mode=bn_mode), x, y,
                                        batch_size=5)
    strategy = tf.distribute.MirroredStrategy(CPUS[:2])
    with strategy.scope():
        model = ref.build_tiny_model(bn_mode=bn_mode)
    mirrored = evaluation.LossAndGradient(model, x, y, batch_size=5, strategy=strategy)
    point = single.flat_weights() * 1.1
    value1, grad1 = single(point)
    value2, grad2 = mirrored(point)
    assert float(value2) == pytest.approx(float(value1), rel=1e-6)
    assert np.all(np.isfinite(grad2.numpy()))
    np.testing.assert_allclose(grad2.numpy(), grad1.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("features,labels,batch_size,message", [
    (np.zeros((0, 5), np.float32), np.zeros((0,), np.int32), 4, "empty"),
    (np.zeros((3, 5), np.float32), np.zeros((2,), np.int32), 4, "one label per example"),
    (np.zeros((3, 5), np.float32), np.zeros((3, 3), np.int32), 4, "one-hot"),
    (np.zeros((3, 5), np.float32), np.zeros((3,), np.float32), 4, "integers"),
    (np.zeros((3, 5), np.float32), -np.ones((3,), np.int32), 4, ">= 0"),
    (np.zeros((3, 5), np.float32), np.zeros((3,), np.int32), 0, "batch_size"),
])
def test_bad_inputs(features, labels, batch_size, message):
    model = ref.build_tiny_model()
    with pytest.raises(evaluation.EvaluationError, match=message):
        evaluation.evaluate(model, features, labels, batch_size=batch_size)
    with pytest.raises(ValueError, match=message):
        evaluation.LossAndGradient(model, features, labels, batch_size=batch_size)


def test_model_without_trainable_weights_is_rejected():
    model = ref.build_tiny_model()
    model.trainable = False
    x, y = ref.tiny_data(n=4)
    with pytest.raises(evaluation.EvaluationError, match="no trainable weights"):
        evaluation.LossAndGradient(model, x, y, batch_size=2)
    # Evaluation itself does not need trainable weights.
    assert evaluation.evaluate(model, x, y, batch_size=2).num_examples == 4


def test_keras_default_model_has_expected_order():
    model = ref.build_tiny_model()
    names = [v.path.split("/")[-1] for v in model.trainable_variables]
    assert names == ["kernel", "bias", "gamma", "beta", "kernel", "bias"]
    assert isinstance(model, keras.Model)


class _Doubler:
    def double(self, x):
        return 2 * x


def test_compiled_methods_keep_retracing_statistics_of_their_own(caplog):
    """Eight instances that each trace once raise no "retracing" warning; one function traced
    for six different shapes still does (the warning is not silenced, only kept per function)."""
    caplog.set_level("WARNING", logger="tensorflow")
    functions = [evaluation.compile_method(_Doubler().double) for _ in range(8)]
    for function in functions:
        for _ in range(2):
            function(tf.constant([1.0, 2.0]))
    assert [f.experimental_get_tracing_count() for f in functions] == [1] * 8
    assert not [r for r in caplog.records if "retracing" in r.getMessage()]

    retracing = evaluation.compile_method(_Doubler().double)
    for size in range(1, 7):
        retracing(tf.zeros([size]))
    assert retracing.experimental_get_tracing_count() == 6
    assert [r for r in caplog.records if "retracing" in r.getMessage()]
