"""Adversarial training on the inputs (Goodfellow et al. 2014), tried by Keskar et al.
(appendix E), as a step rule.

Each step trains on Goodfellow et al.'s objective

    α·f_B(x) + (1 − α)·f_B(x + eps·sign(∇_x f_B(x))),   α = 1/2,

the fast gradient sign method (FGSM) perturbing every input by ``eps`` (L∞) in the direction
that increases the batch loss; the perturbed inputs are constants of the update (no gradient
through the sign) and are not clipped to the data range. The input gradient is the one of the
GLOBAL batch's loss (with synchronised BN, one example's gradient sees the statistics of the
whole global batch, as on one device). Both passes are training passes: the adversarial
examples are training examples of the objective, so they update the BN moving statistics too.
The reported loss is the clean f_B(x).
"""

from __future__ import annotations

import tensorflow as tf

CLEAN_WEIGHT = 0.5  # Goodfellow et al.'s α.


def fgsm(x, input_gradient, eps):
    """The fast-gradient-sign inputs ``x + eps·sign(input_gradient)`` (a constant)."""
    return tf.stop_gradient(x + eps * tf.sign(input_gradient))


class AdversarialStep:
    """The FGSM adversarial-training step rule with L∞ radius ``eps``."""

    def __init__(self, eps: float):
        self.eps = eps

    def __call__(self, objective, x, y):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss, logits = objective.loss(x, y)
            scaled = objective.scale(loss)
        *clean, input_gradient = tape.gradient(scaled, [*objective.variables, x])
        _, _, adversarial = objective.gradients(fgsm(x, input_gradient, self.eps), y)
        objective.apply([CLEAN_WEIGHT * c + (1 - CLEAN_WEIGHT) * a
                         for c, a in zip(clean, adversarial, strict=True)])
        return loss, logits
