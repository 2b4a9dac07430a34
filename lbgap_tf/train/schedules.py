"""The data and schedule remedies of a run: batch growth, learning-rate scaling with warm-up,
and data augmentation.

- Batch growth (``TrainConfig.batch_schedule``, "dynamic sampling" in the paper, Smith et al.
  2018): epochs 1.. use ``batch_size``; from each scheduled epoch on, the global batch is that
  entry's. Every epoch still visits the training set in the order of ``(seed, epoch)``, cut
  into ``N // batch`` full batches of that epoch's size, so a run resumed after any epoch sees
  exactly the batches of an uninterrupted one.
- Learning-rate scaling (``lr_scaling``): the rate of an epoch is ``learning_rate`` times 1
  ("none"), ``B / reference_batch`` ("linear", Goyal et al. 2017) or
  ``sqrt(B / reference_batch)`` ("sqrt", Hoffer et al. 2017), B that epoch's global batch;
  ``learning_rate`` is the reference (SB) batch's rate. With ``warmup_epochs`` = w > 0 the
  rate rises linearly, update by update, from ``learning_rate`` to the scaled rate over the
  updates of the first w epochs (Goyal et al.'s gradual warm-up). The rate is a function of
  the optimizer's update count (``optimizer.iterations``, checkpointed), so resumes are exact;
  a step that makes several optimizer updates per batch (conservative training) counts as one
  training step.
- Augmentation (``augment``, image networks only): Keras preprocessing layers applied to each
  training batch inside the training step: horizontal flips, rotations up to 10 degrees and
  translations up to 0.2 of the image size in each direction (reflected borders), drawn from
  the run's seed (the layers' seed-generator states are checkpointed with the run). Evaluation
  and sharpness see the data unaugmented.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from lbgap_tf.train.config import TrainConfig

MAX_ROTATION_DEGREES = 10.0
MAX_TRANSLATION = 0.2  # of the image height and width


def batch_at(config: TrainConfig, epoch: int) -> int:
    """The global batch of ``epoch`` (1-based) of a resolved config."""
    batch = config.batch_size
    for start, scheduled in config.batch_schedule:
        if epoch >= start:
            batch = scheduled
    return batch


def epoch_batches(config: TrainConfig, num_train: int) -> list[tuple[int, int]]:
    """(global batch, steps) of every epoch 1..``config.epochs`` of a resolved config."""
    return [(batch, num_train // batch)
            for batch in (batch_at(config, epoch) for epoch in range(1, config.epochs + 1))]


def lr_factor(config: TrainConfig, batch: int) -> float:
    """The scaling rule's factor for global batch ``batch`` (1 under "none")."""
    ratio = batch / config.reference_batch
    return {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[config.lr_scaling]


def is_constant_rate(config: TrainConfig) -> bool:
    """Whether the run's learning rate is ``learning_rate`` at every update."""
    return config.lr_scaling == "none"


@keras.saving.register_keras_serializable(package="lbgap_tf")
class EpochRate(keras.optimizers.schedules.LearningRateSchedule):
    """Learning rate per update: the rate of the update's epoch, ramped up from ``base`` over
    the first ``warmup_updates`` updates.

    Args:
      base: the unscaled (reference batch's) rate, where the warm-up starts.
      epoch_ends: cumulative update counts at the end of each epoch (strictly increasing).
      epoch_rates: the scaled rate of each epoch (the last holds past the end).
      warmup_updates: 0 for none; W > 0: update s < W (0-based) uses
        ``base + (rate - base) * (s + 1) / W``.
      updates_per_step: optimizer updates per training step (the conservative step makes
        several); the schedule counts training steps, ``iterations // updates_per_step``.
    """

    def __init__(self, base: float, epoch_ends, epoch_rates, warmup_updates: int = 0,
                 updates_per_step: int = 1):
        self.base = float(base)
        self.epoch_ends = [int(v) for v in epoch_ends]
        self.epoch_rates = [float(v) for v in epoch_rates]
        self.warmup_updates = int(warmup_updates)
        self.updates_per_step = int(updates_per_step)

    def __call__(self, step):
        step = tf.cast(step, tf.int64) // self.updates_per_step
        ends = tf.constant(self.epoch_ends, tf.int64)
        index = tf.minimum(tf.searchsorted(ends, tf.reshape(step, [1]), side="right")[0],
                           len(self.epoch_ends) - 1)
        rate = tf.gather(tf.constant(self.epoch_rates, tf.float32), index)
        if self.warmup_updates:
            fraction = tf.minimum(1.0, tf.cast(step + 1, tf.float32) / self.warmup_updates)
            rate = self.base + (rate - self.base) * fraction
        return rate

    def get_config(self):
        return {"base": self.base, "epoch_ends": self.epoch_ends,
                "epoch_rates": self.epoch_rates, "warmup_updates": self.warmup_updates,
                "updates_per_step": self.updates_per_step}


def learning_rate(config: TrainConfig, num_train: int):
    """The optimizer's learning rate for a resolved config: the float ``learning_rate`` when
    no scaling rule applies (plain runs keep their optimizer state layout), else an
    ``EpochRate``."""
    if is_constant_rate(config):
        return config.learning_rate
    batches = epoch_batches(config, num_train)
    ends = np.cumsum([steps for _, steps in batches])
    rates = [config.learning_rate * lr_factor(config, batch) for batch, _ in batches]
    warmup = int(ends[config.warmup_epochs - 1]) if config.warmup_epochs else 0
    per_step = config.conservative_iterations if config.step_remedy == "conservative" else 1
    return EpochRate(config.learning_rate, ends, rates, warmup, per_step)


def make_augmenter(seed: int) -> keras.Sequential:
    """The augmentation of image batches [batch, height, width, channels], seeded: horizontal
    flip, rotation up to ``MAX_ROTATION_DEGREES`` and translation up to ``MAX_TRANSLATION``
    of the height and width, applied with ``training=True``."""
    return keras.Sequential([
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomRotation(MAX_ROTATION_DEGREES / 360.0, fill_mode="reflect",
                                    seed=seed + 1),
        keras.layers.RandomTranslation(MAX_TRANSLATION, MAX_TRANSLATION, fill_mode="reflect",
                                       seed=seed + 2),
    ], name="augmentation")
