"""Step remedies: conservative (proximal), adversarial (FGSM), SAM and ASAM.

Each rule is checked against an independent computation that a no-op would fail: closed forms
on a quadratic, hand-written softmax gradients, NumPy finite differences of a BN network.
Multi-replica runs of every remedy are compared with one device, and the config plumbing
(run ids, bad values) with hard numbers.
"""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from lbgap_tf import data, distribute, train
from lbgap_tf.train import steps
from lbgap_tf.train.remedies import (
    AdversarialStep,
    ConservativeStep,
    SharpnessAwareStep,
    adversarial,
    step_rule,
)
from tests import numpy_reference as ref

# --- config and run ids -------------------------------------------------------------------

PLAIN = {"strategy": "default", "replicas": 1, "workers": 1}


def test_plain_configs_keep_their_run_ids():
    # The ids of plain configs since the run key holds the run-defining fields only (not
    # steps_per_call, deterministic; adam_epsilon in: BUILD.md, "What defines a run"); the
    # step remedy fields keep them.
    spec = data.SyntheticSpec(num_train=256, num_test=64, input_shape=(784,), num_classes=10)
    expected = {
        train.TrainConfig(model="F1", dataset="fashion_mnist", batch_size=256):
            "F1-fashion_mnist-SB-b256-s0-4ed04aea3306",
        train.TrainConfig(model="C1", dataset="cifar10", regime="LB", batch_size=5000,
                          bn_mode="batch", epochs=40, seed=3):
            "C1-cifar10-LB-b5000-s3-e11075ec67be",
        train.TrainConfig(model="F1", dataset="synthetic", synthetic=spec, batch_size=64,
                          epochs=2): "F1-synthetic-SB-b64-s0-2750cac3eb66",
    }
    for config, run_id in expected.items():
        assert train.run_id(config, PLAIN) == run_id
        # Parameters of a remedy not chosen change nothing.
        assert train.run_id(dataclasses.replace(config, sam_rho=0.3), PLAIN) == run_id


def test_a_step_remedy_is_part_of_the_run_id_with_its_own_parameters_only():
    base = train.TrainConfig(dataset="mnist", batch_size=256)
    sam = dataclasses.replace(base, step_remedy="sam")
    assert set(train.config_dict(sam)) - set(train.config_dict(base)) == {"step_remedy",
                                                                            "sam_rho"}
    asam = dataclasses.replace(base, step_remedy="asam")
    assert {"sam_rho", "asam_eta"} <= set(train.config_dict(asam))
    conservative = dataclasses.replace(base, step_remedy="conservative")
    assert train.config_dict(conservative)["conservative_iterations"] == 3
    ids = {train.run_id(c, PLAIN) for c in (
        base, sam, asam, conservative, dataclasses.replace(sam, sam_rho=0.1),
        dataclasses.replace(sam, asam_eta=0.5),
        dataclasses.replace(base, step_remedy="adversarial"))}
    assert len(ids) == 6  # asam_eta does not change a SAM run.
    assert train.run_id(sam, PLAIN).startswith("F1-mnist-SB-b256-s0-sam-")
    # config.json round-trips.
    assert train.TrainConfig(**train.config_dict(asam)) == asam
    assert step_rule(base) is steps.plain_step
    assert step_rule(asam).eta == 0.01 and step_rule(sam).eta is None


@pytest.mark.parametrize("field, value, message", [
    ("conservative_lambda", -1e-3, "conservative_lambda (the proximal weight λ) must be"),
    ("sam_rho", -0.05, "sam_rho (the SAM radius) must be a number >= 0"),
    ("adversarial_eps", -0.1, "adversarial_eps (the FGSM input radius) must be"),
    ("asam_eta", float("nan"), "asam_eta (ASAM's eta) must be"),
    ("conservative_iterations", 0, "conservative_iterations must be a positive integer"),
    ("step_remedy", "mixup", "unknown step_remedy 'mixup'"),
])
def test_bad_remedy_values_are_clear_errors(field, value, message):
    with pytest.raises(train.TrainError, match=message.replace("(", r"\(").replace(")", r"\)")):
        train.TrainConfig(**{field: value})


# --- conservative training on a quadratic -------------------------------------------------

A = np.array([1.0, 2.0, 4.0])      # f(x) = ½ Σ a_i (x_i - c_i)²
C = np.array([1.0, -2.0, 0.5])
X_K = np.array([0.3, 0.4, -0.2])   # the step's starting point (anchor)


class _Quadratic(steps.Objective):
    """The real Objective with its loss replaced by the quadratic of a model's one weight."""

    def loss(self, x, y):
        (weight,) = self.variables
        distance = weight.value[:, 0] - C.astype(np.float32)
        value = 0.5 * tf.reduce_sum(A.astype(np.float32) * tf.square(distance))
        return value, x


def _quadratic(optimizer):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, use_bias=False)])
    model.layers[0].kernel.assign(X_K[:, None].astype(np.float32))
    optimizer.build(model.trainable_variables)
    return _Quadratic(model, optimizer, global_batch=1), model.layers[0].kernel


def _conservative_step(optimizer, lam, iterations):
    objective, weight = _quadratic(optimizer)
    ConservativeStep(lam, iterations)(objective, tf.zeros((1, 3)), tf.zeros((1,), tf.int32))
    return np.asarray(weight)[:, 0].astype(np.float64)


def test_conservative_sgd_iterations_follow_the_proximal_closed_form():
    # Gradient descent on f + (λ/2)‖x - x_k‖² contracts towards the proximal point
    # x* = (a c + λ x_k) / (a + λ) by (1 - η(a + λ)) per iteration.
    lam, rate = 0.5, 0.2
    proximal_point = (A * C + lam * X_K) / (A + lam)
    for iterations in (3, 60):
        got = _conservative_step(keras.optimizers.SGD(rate), lam, iterations)
        want = proximal_point + (1 - rate * (A + lam)) ** iterations * (X_K - proximal_point)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    # In the limit the step IS the exact proximal step, pulled towards x_k away from c.
    np.testing.assert_allclose(got, proximal_point, atol=1e-6)
    assert np.all(np.abs(got - C) > 0.05)


def _numpy_adam(x, gradient_fn, iterations, rate, beta_1=0.9, beta_2=0.999, eps=1e-7):
    m = v = np.zeros_like(x)
    for t in range(1, iterations + 1):
        g = gradient_fn(x)
        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g * g
        x = x - rate * np.sqrt(1 - beta_2 ** t) / (1 - beta_1 ** t) * m / (np.sqrt(v) + eps)
    return x


def test_conservative_adam_iterations_match_numpy_adam_on_the_proximal_objective():
    lam, rate = 2.0, 0.1
    got = _conservative_step(train.FusedAdam(rate), lam, 3)
    want = _numpy_adam(X_K, lambda x: A * (x - C) + lam * (x - X_K), 3, rate)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    # The pull towards x_k is the difference from λ = 0: 7e-4 to 2e-2 per coordinate here.
    free = _numpy_adam(X_K, lambda x: A * (x - C), 3, rate)
    assert np.all(np.abs(want - free) > 5e-4)
    np.testing.assert_allclose(got - free, want - free, atol=1e-6)


# --- SAM, ASAM and FGSM on a linear softmax model (closed-form gradients) --------------------

N, D, K = 12, 4, 3


def _softmax_data(seed=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, D)).astype(np.float32)
    y = rng.integers(0, K, N).astype(np.int32)
    w = rng.normal(0, 0.5, (D, K)).astype(np.float32)
    b = rng.normal(0, 0.5, K).astype(np.float32)
    return x, y, w, b


def _softmax_gradients(x, y, w, b):
    """(∇_w, ∇_b, ∇_x) of the mean cross-entropy of the linear model x w + b, by hand."""
    logits = x.astype(np.float64) @ w + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(y)), y] -= 1
    p /= len(y)
    return x.T.astype(np.float64) @ p, p.sum(0), p @ w.T


def _applied_gradient(rule, x, y, w, b):
    """The gradient ``rule`` hands the optimizer: SGD with rate 1 moves by exactly it."""
    model = keras.Sequential([keras.Input((D,)), keras.layers.Dense(K)])
    model.layers[0].set_weights([w, b])
    optimizer = keras.optimizers.SGD(1.0)
    optimizer.build(model.trainable_variables)
    rule(steps.Objective(model, optimizer, global_batch=N), tf.constant(x), tf.constant(y))
    after = model.layers[0].get_weights()
    return np.asarray(w, np.float64) - after[0], np.asarray(b, np.float64) - after[1]


@pytest.mark.parametrize("eta", [None, 0.1])
def test_sam_and_asam_apply_the_gradient_at_the_hand_computed_ascent_point(eta):
    rho = 0.5
    x, y, w, b = _softmax_data()
    g_w, g_b, _ = _softmax_gradients(x, y, w, b)
    if eta is None:  # ε = ρ g / ‖g‖
        scale_w, scale_b = np.ones_like(g_w), np.ones_like(g_b)
    else:            # ε = ρ T² g / ‖T g‖, T = |w| + η
        scale_w, scale_b = np.abs(w) + eta, np.abs(b) + eta
    norm = np.sqrt(np.sum((scale_w * g_w) ** 2) + np.sum((scale_b * g_b) ** 2))
    e_w, e_b = rho * scale_w ** 2 * g_w / norm, rho * scale_b ** 2 * g_b / norm
    want_w, want_b, _ = _softmax_gradients(x, y, w + e_w, b + e_b)
    got_w, got_b = _applied_gradient(SharpnessAwareStep(rho, eta), x, y, w, b)
    np.testing.assert_allclose(got_w, want_w, atol=2e-6)
    np.testing.assert_allclose(got_b, want_b, atol=2e-6)
    assert np.abs(want_w - g_w).max() > 0.01  # Not the plain gradient.


def test_fgsm_trains_on_clean_and_sign_perturbed_inputs():
    eps = 0.2
    x, y, w, b = _softmax_data()
    g_w, g_b, g_x = _softmax_gradients(x, y, w, b)
    x_adv = x + eps * np.sign(g_x)   # the inputs FGSM must build
    np.testing.assert_allclose(
        adversarial.fgsm(tf.constant(x), tf.constant(g_x, tf.float32), eps), x_adv, atol=1e-7)
    a_w, a_b, _ = _softmax_gradients(x_adv, y, w, b)
    got_w, got_b = _applied_gradient(AdversarialStep(eps), x, y, w, b)
    np.testing.assert_allclose(got_w, 0.5 * (g_w + a_w), atol=2e-6)
    np.testing.assert_allclose(got_b, 0.5 * (g_b + a_b), atol=2e-6)
    assert np.abs(a_w - g_w).max() > 0.01


# --- SAM on a BN network vs NumPy ---------------------------------------------------------

def _train_mode_loss(params, x, y):
    """Mean cross-entropy of the tiny network in training mode (BN batch statistics)."""
    h = x @ params["w1"] + params["b1"]
    z = (h - h.mean(0)) / np.sqrt(h.var(0) + ref.BN_EPSILON) * params["gamma"] + params["beta"]
    logits = np.maximum(z, 0) @ params["w2"] + params["b2"]
    logits = logits - logits.max(1, keepdims=True)
    return -np.mean(logits[np.arange(len(y)), y] - np.log(np.exp(logits).sum(1)))


def _finite_difference_gradient(params, x, y, step=1e-6):
    flat = ref.flatten(params)
    gradient = np.empty_like(flat)
    for i in range(flat.size):
        up, down = flat.copy(), flat.copy()
        up[i] += step
        down[i] -= step
        gradient[i] = (_train_mode_loss(ref.unflatten(up, params), x, y)
                       - _train_mode_loss(ref.unflatten(down, params), x, y)) / (2 * step)
    return gradient


def test_sam_on_a_bn_network_matches_numpy_and_updates_bn_statistics_once():
    rho = 0.3
    model = ref.build_tiny_model(seed=2)
    x, y = ref.tiny_data(n=16)
    params = ref.tiny_params(model)
    x64 = x.astype(np.float64)
    gradient = _finite_difference_gradient(params, x64, y)
    flat = ref.flatten(params)
    perturbed = ref.unflatten(flat + rho * gradient / np.linalg.norm(gradient), params)
    want = _finite_difference_gradient(perturbed, x64, y)

    optimizer = keras.optimizers.SGD(1.0)
    optimizer.build(model.trainable_variables)
    loss, _ = SharpnessAwareStep(rho)(steps.Objective(model, optimizer, global_batch=16),
                                      tf.constant(x), tf.constant(y))
    after = ref.tiny_params(model)
    np.testing.assert_allclose(flat - ref.flatten(after), want, atol=1e-5)
    assert np.abs(want - gradient).max() > 0.01
    assert float(loss) == pytest.approx(_train_mode_loss(params, x64, y), rel=1e-5)
    # Moving statistics: one Keras momentum-0.99 update with the UNPERTURBED batch statistics.
    h = x64 @ params["w1"] + params["b1"]
    np.testing.assert_allclose(after["mean"], 0.99 * params["mean"] + 0.01 * h.mean(0),
                               atol=1e-6)
    np.testing.assert_allclose(after["var"], 0.99 * params["var"] + 0.01 * h.var(0),
                               atol=1e-6)


# --- several replicas follow one device ---------------------------------------------------

@pytest.mark.parametrize("remedy", ["conservative", "adversarial", "sam", "asam"])
def test_two_replicas_take_the_steps_of_one_device(remedy):
    config = train.TrainConfig(step_remedy=remedy, conservative_lambda=0.5,
                               conservative_iterations=2, sam_rho=0.2, adversarial_eps=0.1)
    x, y = ref.tiny_data(n=48)
    finals = []
    for strategy in (tf.distribute.get_strategy(), distribute.get_strategy("mirrored")):
        with strategy.scope():
            model = ref.build_tiny_model(seed=4)
            # The first Dense layer's bias feeds BN, which cancels it: its gradient is float
            # noise that ADAM blows up differently under any two summation orders (see
            # test_train), and the BN moving mean follows it. Held fixed here.
            model.layers[0].bias.trainable = False
            optimizer = train.FusedAdam(0.05)
            optimizer.build(model.trainable_variables)
        start = [np.asarray(v) for v in model.variables]
        train_steps = steps.TrainSteps(model, optimizer, strategy, x, y, jit=False,
                                       rule=step_rule(config))
        losses, _ = train_steps(tf.range(48), 0, 3, global_batch=16)
        finals.append((losses, [np.asarray(v) for v in model.variables],
                       int(np.asarray(optimizer.iterations))))
    (one_losses, one, one_iterations), (two_losses, two, two_iterations) = finals
    assert one_iterations == two_iterations == 3 * (2 if remedy == "conservative" else 1)
    np.testing.assert_allclose(two_losses, one_losses, rtol=1e-5)
    for a, b in zip(two, one, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert max(np.abs(a - s).max() for a, s in zip(one, start, strict=True)) > 0.05


def test_a_training_run_takes_the_steps_of_its_remedy(tmp_path):
    # The loop hands the config's rule to the steps: 2 conservative steps of 3 iterations each
    # leave 6 optimizer iterations in the checkpoint, and the remedy names the run.
    spec = data.SyntheticSpec(num_train=128, num_test=32, input_shape=(16,), num_classes=4)
    config = train.TrainConfig(dataset="synthetic", synthetic=spec, batch_size=64, epochs=1,
                               eval_batch_size=64, step_remedy="conservative")
    result = train.train(config, *train.load_data(config), run_dir=str(tmp_path), quiet=True)
    reader = tf.train.load_checkpoint(str(tmp_path / train.CHECKPOINT_DIR))
    (iterations,) = [reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
                     if name.startswith("optimizer/_iterations/")]
    assert result.history[0]["steps"] == 2 and int(iterations) == 6
    assert train.run_id(result.config, result.strategy).startswith(
        "F1-synthetic-SB-b64-s0-conservative-")
