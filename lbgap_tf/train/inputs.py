"""The training data of a run: its (train, test) splits and the example order of each epoch.

The whole training set stays in memory; every epoch visits it in the order of a permutation
drawn from ``(seed, epoch)`` alone, cut into ``N // batch`` full global batches (the remainder
of the permutation is skipped that epoch; the paper's batches 256/6000 on 60000 examples lose
96/0 examples per epoch). A resumed run therefore sees exactly the batches an uninterrupted one
would.
"""

from __future__ import annotations

import numpy as np

from lbgap_tf import data, models
from lbgap_tf.train.config import TrainConfig


def load_data(config: TrainConfig, *, data_dir: str | None = None,
              tfds_data_dir: str | None = None) -> tuple[data.SplitData, data.SplitData]:
    """The (train, test) splits for ``config``, flattened for the fully connected nets."""
    dataset = config.dataset or models.spec(config.model).dataset
    flatten = models.spec(config.model).flat_input
    splits = tuple(
        data.load_split(dataset, split, data_dir=data_dir, tfds_data_dir=tfds_data_dir,
                        flatten=flatten, synthetic=config.synthetic)
        for split in ("train", "test"))
    return splits


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """The example order of ``epoch`` (1-based): a function of (seed, epoch) only, int32 [N]."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples).astype(np.int32)
