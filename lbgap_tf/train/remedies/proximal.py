"""Conservative training (Li et al. 2014), the remedy of Keskar et al.'s appendix E, as a step
rule.

Each step approximately solves the proximal problem of its batch B around the current
weights x_k,

    x_{k+1} ≈ argmin_x  f_B(x) + (λ/2)‖x − x_k‖²,

by ``iterations`` updates of the run's optimizer (ADAM in the paper: 3 iterations, λ = 1e-3) on
the same batch, each with the gradient ∇f_B(x) + λ(x − x_k). Every iteration is a training
pass (BN moving statistics updated, fresh dropout masks) and an optimizer iteration. Under N
replicas each adds λ/N (x − x_k), so the summed update is one device's. The reported loss is
f_B(x_k), the plain step's.
"""

from __future__ import annotations

import tensorflow as tf


class ConservativeStep:
    """The conservative (proximal) step rule: ``iterations`` updates on
    f_B + (``lam``/2)‖x − x_k‖²."""

    def __init__(self, lam: float, iterations: int):
        self.lam = lam
        self.iterations = iterations

    def __call__(self, objective, x, y):
        anchor = [tf.identity(v.value) for v in objective.variables]
        # The optimizer sums the replicas' gradients: each carries 1/N of the proximal term.
        weight = self.lam / 2 / tf.distribute.get_replica_context().num_replicas_in_sync

        def penalty():
            return weight * tf.add_n([tf.reduce_sum(tf.square(v.value - a)) for v, a in
                                      zip(objective.variables, anchor, strict=True)])

        first = None
        for _ in range(self.iterations):
            loss, logits, gradients = objective.gradients(x, y, penalty)
            objective.apply(gradients)
            first = first or (loss, logits)
        return first
