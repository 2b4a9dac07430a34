"""Independent NumPy reference for the tiny test network used by the evaluation/sharpness tests.

The network: Dense(hidden) -> BatchNormalization (moving statistics at inference) -> ReLU ->
Dense(classes), logits out. Forward pass, mean softmax cross-entropy and its gradient are
written out by hand in float64, so they share no code with TensorFlow.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from lbgap_tf import models  # noqa: E402

BN_EPSILON = 1e-3


def build_tiny_model(seed=0, inputs=5, hidden=4, classes=3, bn_mode="moving"):
    """The Keras twin of the NumPy network, with random non-trivial BN moving statistics.

    bn_mode "batch" uses lbgap_tf.models.BatchStatisticsNormalization (batch statistics at
    inference too, synchronised across replicas).
    """
    keras.utils.set_random_seed(seed)
    bn_class = (models.BatchStatisticsNormalization if bn_mode == "batch"
                else keras.layers.BatchNormalization)
    model = keras.Sequential([
        keras.Input((inputs,)),
        keras.layers.Dense(hidden),
        bn_class(epsilon=BN_EPSILON, synchronized=True),
        keras.layers.ReLU(),
        keras.layers.Dense(classes),
    ])
    rng = np.random.default_rng(seed)
    bn = model.layers[1]
    bn.gamma.assign(rng.uniform(0.5, 1.5, hidden).astype(np.float32))
    bn.beta.assign(rng.normal(0, 0.3, hidden).astype(np.float32))
    bn.moving_mean.assign(rng.normal(0, 0.5, hidden).astype(np.float32))
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, hidden).astype(np.float32))
    model.layers[0].bias.assign(rng.normal(0, 0.1, hidden).astype(np.float32))
    return model


def tiny_params(model):
    """Trainable arrays in model.trainable_variables order plus the BN moving statistics."""
    dense1, bn, _, dense2 = model.layers
    params = {
        "w1": dense1.kernel.numpy(), "b1": dense1.bias.numpy(),
        "gamma": bn.gamma.numpy(), "beta": bn.beta.numpy(),
        "w2": dense2.kernel.numpy(), "b2": dense2.bias.numpy(),
        "mean": bn.moving_mean.numpy(), "var": bn.moving_variance.numpy(),
    }
    return {k: v.astype(np.float64) for k, v in params.items()}


TRAINABLE_ORDER = ("w1", "b1", "gamma", "beta", "w2", "b2")


def flatten(params):
    return np.concatenate([params[k].ravel() for k in TRAINABLE_ORDER])


def unflatten(flat, like):
    out, start = dict(like), 0
    for k in TRAINABLE_ORDER:
        size = like[k].size
        out[k] = np.asarray(flat[start:start + size], np.float64).reshape(like[k].shape)
        start += size
    return out


def forward(params, x):
    h = x @ params["w1"] + params["b1"]
    scale = params["gamma"] / np.sqrt(params["var"] + BN_EPSILON)
    hn = (h - params["mean"]) / np.sqrt(params["var"] + BN_EPSILON)
    z = (h - params["mean"]) * scale + params["beta"]
    r = np.maximum(z, 0.0)
    logits = r @ params["w2"] + params["b2"]
    return logits, (hn, z, r, scale)


def loss_and_accuracy(params, x, y):
    logits, _ = forward(params, x.astype(np.float64))
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -logp[np.arange(len(y)), y].mean()
    accuracy = float(np.mean(np.argmax(logits, axis=1) == y))
    return float(loss), accuracy


def batch_mode_loss_and_accuracy(params, x, y, batch_size):
    """Mean cross-entropy and accuracy when BN normalises every evaluation batch (of
    `batch_size`, the last one partial) with that batch's own mean and biased variance."""
    losses, correct = [], 0
    for start in range(0, len(y), batch_size):
        xb = x[start:start + batch_size].astype(np.float64)
        h = xb @ params["w1"] + params["b1"]
        stats = dict(params, mean=h.mean(axis=0), var=h.var(axis=0))
        loss, accuracy = loss_and_accuracy(stats, xb, y[start:start + batch_size])
        losses.append(loss * len(xb))
        correct += accuracy * len(xb)
    return float(np.sum(losses) / len(y)), float(correct / len(y))


def loss_and_gradient(params, x, y):
    """Mean cross-entropy and its gradient, flattened in TRAINABLE_ORDER."""
    x = x.astype(np.float64)
    logits, (hn, z, r, scale) = forward(params, x)
    shifted = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    n = len(y)
    loss = -np.log(p[np.arange(n), y]).mean()
    dlogits = p.copy()
    dlogits[np.arange(n), y] -= 1.0
    dlogits /= n
    grads = {"w2": r.T @ dlogits, "b2": dlogits.sum(0)}
    dz = (dlogits @ params["w2"].T) * (z > 0)
    grads["gamma"] = (dz * hn).sum(0)
    grads["beta"] = dz.sum(0)
    dh = dz * scale
    grads["w1"] = x.T @ dh
    grads["b1"] = dh.sum(0)
    return float(loss), flatten(grads)


def tiny_data(n=23, inputs=5, classes=3, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, inputs)).astype(np.float32)
    y = rng.integers(0, classes, n).astype(np.int32)
    return x, y
