"""TensorBoard scalars of a run: one point per epoch in ``<run_dir>/tensorboard/``.

Written with ``tf.summary`` (TensorFlow's own event writer), read by TensorBoard
(``tensorboard --logdir=<output_dir>/runs``) or its ``EventAccumulator``. Tags, each with
the epoch as its step:

- ``train/loss``, ``train/accuracy``: the running figures of the epoch's steps (the weights
  as they moved), as in ``history.csv``;
- ``train/examples_per_s``, ``train/epoch_s``: training throughput and time of the epoch;
- ``eval/train_loss``, ``eval/train_accuracy``, ``eval/test_loss``, ``eval/test_accuracy``:
  full-set evaluations after the epoch (only with ``eval_every_epoch``).

A resumed run appends to the same directory; epochs repeated after a crash are written again
with the same step, and TensorBoard shows the later value.
"""

from __future__ import annotations

import os

import tensorflow as tf

TENSORBOARD_DIR = "tensorboard"

# history.csv column -> TensorBoard tag.
TAGS = {
    "train_loss": "train/loss",
    "train_accuracy": "train/accuracy",
    "examples_per_s": "train/examples_per_s",
    "epoch_time_s": "train/epoch_s",
    "full_train_loss": "eval/train_loss",
    "full_train_accuracy": "eval/train_accuracy",
    "test_loss": "eval/test_loss",
    "test_accuracy": "eval/test_accuracy",
}


class EpochScalars:
    """Writes a history row's scalars as TensorBoard events of step ``row["epoch"]``."""

    def __init__(self, run_dir: str):
        self.directory = os.path.join(run_dir, TENSORBOARD_DIR)
        self._writer = tf.summary.create_file_writer(self.directory)

    def write(self, row: dict) -> None:
        with self._writer.as_default():
            for column, tag in TAGS.items():
                if row.get(column) is not None:
                    tf.summary.scalar(tag, float(row[column]), step=int(row["epoch"]))
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
