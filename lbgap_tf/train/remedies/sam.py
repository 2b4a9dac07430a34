"""Sharpness-aware minimization (SAM, Foret et al. 2021) and its adaptive form (ASAM, Kwon et
al. 2021) as a step rule.

A SAM step descends along the gradient of the loss at the worst nearby weights w + ε, with ε
the first-order maximiser of the loss in a ball of radius rho:

    SAM:   ε = rho · g / ‖g‖
    ASAM:  ε = rho · T_w² g / ‖T_w g‖,   T_w = |w| + eta (elementwise, every trainable
           variable; the official ASAM code leaves biases unscaled)

where g is the batch gradient at w. The update then applies the gradient at w + ε to w.

m-sharpness: g is the gradient of the WHOLE global batch — the replicas' gradients are
all-reduced before the norm is taken — so every replica perturbs by the same ε and SAM's m
(the examples one perturbation is computed from) is the global batch, on any number of
replicas. Foret et al.'s implementation perturbs each device by its own gradient (m = the
per-device batch), which makes the method depend on the device count; here N replicas follow
the one-device trajectory, as plain training does.

The perturbed pass changes no variable (``Objective.gradients_at``): it runs from the model
state the step started with (the same dropout masks as the unperturbed pass) and its BN
moving-statistics updates are discarded, so the statistics are updated once per step, by the
unperturbed pass. A step costs two forward and two backward passes.
"""

from __future__ import annotations

import tensorflow as tf

# Guards the division when the gradient vanishes (as Foret et al.'s implementation).
NORM_FLOOR = 1e-12


def ascent_perturbation(gradients, weights, rho, eta=None):
    """The ascent step ε: ``rho·g/‖g‖`` (SAM, ``eta`` None) or ``rho·T²g/‖Tg‖`` with
    ``T = |w| + eta`` (ASAM); ‖·‖ is the norm over all the variables together."""
    if eta is None:
        norm = tf.linalg.global_norm(gradients)
        return [rho * g / (norm + NORM_FLOOR) for g in gradients]
    scales = [tf.abs(w) + eta for w in weights]
    scaled = [t * g for t, g in zip(scales, gradients, strict=True)]
    norm = tf.linalg.global_norm(scaled)
    return [rho * t * s / (norm + NORM_FLOOR) for t, s in zip(scales, scaled, strict=True)]


class SharpnessAwareStep:
    """The SAM (``eta`` None) or ASAM step rule with radius ``rho``."""

    def __init__(self, rho: float, eta: float | None = None):
        self.rho = rho
        self.eta = eta

    def __call__(self, objective, x, y):
        state = objective.read_state()
        loss, logits, gradients = objective.gradients(x, y)
        # The global batch's gradient: the same perturbation on every replica.
        gradients = tf.distribute.get_replica_context().all_reduce("SUM", gradients)
        weights = [tf.identity(v.value) for v in objective.variables]
        # Scale-free in g, so the loss scale of mixed_float16 does not change ε.
        perturbation = ascent_perturbation(gradients, weights, self.rho, self.eta)
        perturbed = [w + e for w, e in zip(weights, perturbation, strict=True)]
        _, _, sharp = objective.gradients_at(perturbed, state, x, y)
        objective.apply(sharp)
        return loss, logits
