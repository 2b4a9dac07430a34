"""The Keras network of a run, built under the run's dtype policy (precision)."""

from __future__ import annotations

import contextlib

import keras

from lbgap_tf import data, models
from lbgap_tf.train.config import TrainConfig


@contextlib.contextmanager
def _dtype_policy(precision: str):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def build_model(config: TrainConfig, info: data.DatasetInfo) -> keras.Model:
    """The network ``config.model`` for the dataset ``info``, with the config's BN mode, BN
    synchronisation, ghost batch and precision (weights from Keras' initialisers under the
    current seed)."""
    with _dtype_policy(config.precision):
        return models.build(config.model, input_shape=info.input_shape,
                            num_classes=info.num_classes, bn_mode=config.bn_mode,
                            bn_synchronized=config.bn_sync, ghost_batch=config.ghost_batch)
