"""The remedies that change the training STEP, each a step rule for ``steps.TrainSteps``.

A step rule ``rule(objective, x, y) -> (loss, logits)`` does one training step on one
replica's slice of the global batch with the pieces of ``steps.Objective``; ``step_rule``
picks the rule of a config's ``step_remedy``:

  none          ``steps.plain_step``: one gradient, one update
  conservative  ``proximal``: a few optimizer iterations on f_B + (λ/2)‖x − x_k‖²
  adversarial   ``adversarial``: FGSM inputs mixed into the loss (Goodfellow et al.)
  sam, asam     ``sam``: the gradient at the (adaptive) worst point of a rho-ball

Each rule is deterministic given the data order and x0 (dropout aside), and N replicas follow
the one-device trajectory.
"""

from __future__ import annotations

from lbgap_tf.train.config import TrainConfig
from lbgap_tf.train.remedies.adversarial import AdversarialStep
from lbgap_tf.train.remedies.proximal import ConservativeStep
from lbgap_tf.train.remedies.sam import SharpnessAwareStep
from lbgap_tf.train.steps import plain_step


def step_rule(config: TrainConfig):
    """The step rule of ``config.step_remedy`` with the config's parameters."""
    remedy = config.step_remedy
    if remedy == "conservative":
        return ConservativeStep(config.conservative_lambda, config.conservative_iterations)
    if remedy == "adversarial":
        return AdversarialStep(config.adversarial_eps)
    if remedy in ("sam", "asam"):
        return SharpnessAwareStep(config.sam_rho, config.asam_eta if remedy == "asam" else None)
    return plain_step


__all__ = ["AdversarialStep", "ConservativeStep", "SharpnessAwareStep", "step_rule"]
