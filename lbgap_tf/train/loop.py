"""The training loop: ``train`` runs (or resumes) one run in its directory, epoch by epoch,
with progress and an ETA in the log, and returns a ``TrainResult``.

Each session builds the model and optimizer under the strategy, sets x0, restores the last
checkpoint of the run directory if any, compiles the steps, then trains epoch after epoch
until the stopping rule says stop: after every epoch one history row is appended, its
TensorBoard scalars written (``tensorboard``) and, when due, a checkpoint (model, optimizer,
epoch and the dropout RNG states) saved, so a rerun resumes after the last checkpointed epoch.
A checkpoint is due after every epoch by default, or once ``checkpoint_every_s`` seconds have
passed since the last one (and after the last epoch): a killed run then loses at most that
interval of training, and writes far fewer bytes (F1: 17.6 MB of weights and ADAM moments per
checkpoint). The finished model is evaluated on the full training and test sets and saved.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from lbgap_tf import data, distribute, evaluation, results
from lbgap_tf.train.config import DIVERGED, TrainConfig, TrainError, resolve, stop_reason
from lbgap_tf.train.inputs import epoch_permutation
from lbgap_tf.train.network import build_model
from lbgap_tf.train.optimizers import make_optimizer
from lbgap_tf.train.remedies import step_rule
from lbgap_tf.train.rundir import (
    HISTORY_COLUMNS,
    MODEL_FILE,
    X0_FILE,
    check_same_run,
    is_chief,
    process_paths,
    restore_history,
    run_lock,
    snapshot_path,
    write_config,
)
from lbgap_tf.train.schedules import batch_at, make_augmenter
from lbgap_tf.train.steps import TrainSteps
from lbgap_tf.train.tensorboard import EpochScalars
from lbgap_tf.train.x0 import file_source, load_x0, make_x0, save_x0, set_weights, source_digest


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """The outcome of a finished run.

    ``train``/``test`` are full-set evaluations of the final weights (``model(x,
    training=False)``, batch ``config.eval_batch_size``); NaN for a run that diverged
    (``stop_reason`` "diverged", ``epochs_run`` the epoch whose loss was not finite).
    ``wall_time_s`` sums the epochs' training and per-epoch evaluation time over every
    session of a resumed run;
    ``examples_per_s`` is training examples over training-step time (startup excluded);
    ``startup_s`` is this session's build and compilation time.
    """

    config: TrainConfig
    run_dir: str
    strategy: dict
    num_train: int
    num_test: int
    history: list[dict]
    epochs_run: int
    stop_reason: str
    train: evaluation.EvalResult
    test: evaluation.EvalResult
    wall_time_s: float
    examples_per_s: float
    startup_s: float
    x0: str
    model: keras.Model = dataclasses.field(repr=False, compare=False)


def _format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    if hours:
        return f"{hours}h{rest // 60:02d}m{rest % 60:02d}s"
    return f"{rest // 60}m{rest % 60:02d}s"


def train(
    config: TrainConfig,
    train_data: data.SplitData,
    test_data: data.SplitData,
    *,
    run_dir: str,
    strategy: tf.distribute.Strategy | None = None,
    quiet: bool = False,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    checkpoint_every_s: float = 0.0,
) -> TrainResult:
    """Trains (or resumes) the run ``config`` in ``run_dir`` and evaluates the result.

    Args:
      config: the run; resolved here against the training set and replica count.
      train_data, test_data: the splits (``load_data``); features already shaped for the
        model (flat for F-nets).
      run_dir: the run's directory (created if needed); a directory holding checkpoints
        of the same run resumes after its last completed epoch.
      strategy: the tf.distribute strategy; None means the current one. Under multi-worker
        strategies only the chief writes the run's files; other workers keep private
        checkpoints in ``checkpoints/worker<i>``.
      quiet: no progress logging (warnings only).
      on_epoch_end: called as ``on_epoch_end(epoch, history_row)`` after each epoch (and
        its checkpoint, when one was due).
      checkpoint_every_s: 0 checkpoints after every epoch; t > 0 after the first epoch that
        ends t seconds or more after the last checkpoint (or the session's start), and after
        the last epoch. Not part of the run's identity. Multi-worker runs checkpoint every
        epoch (every worker must hold the same epochs).

    Raises:
      TrainError: bad batch size, unreadable or mismatched x0, run directory busy, ...
    """
    strategy = strategy or tf.distribute.get_strategy()
    if not checkpoint_every_s >= 0:
        raise TrainError(f"checkpoint_every_s must be >= 0 (0: every epoch), got "
                         f"{checkpoint_every_s}")
    replicas = strategy.num_replicas_in_sync
    num_train = train_data.info.num_examples
    config = resolve(config, num_train, replicas)
    if config.jit_compile and replicas > 1:
        raise TrainError(
            f"jit_compile supports single-replica strategies, this one has {replicas} "
            "replicas: drop --jit_compile or use one replica")
    info = train_data.info
    if config.x0_path is not None:
        x0_arrays = load_x0(config.x0_path)
        x0_source = file_source(config.x0_path, x0_arrays)
    else:
        x0_arrays = None
        x0_source = f"seed {config.seed}"

    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    chief = is_chief(strategy)
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as error:
        raise TrainError(
            f"cannot create the run directory {run_dir} ({error.strerror or error}): pass an "
            "--output_dir on a writable file system") from error
    with run_lock(run_dir, chief):
        return _train_locked(config, train_data, test_data, run_dir, strategy, chief, quiet,
                             on_epoch_end, info, x0_arrays, x0_source, checkpoint_every_s)


def _train_locked(config, train_data, test_data, run_dir, strategy, chief, quiet,
                  on_epoch_end, info, x0_arrays, x0_source, checkpoint_every_s):
    log = (lambda *args: None) if quiet else logging.info
    started = time.perf_counter()
    description = distribute.describe(strategy)
    if x0_arrays is None:
        x0_arrays = make_x0(config, info)
    keras.utils.set_random_seed(config.seed)
    num_train = train_data.info.num_examples
    with strategy.scope():
        model = build_model(config, info)
        optimizer = make_optimizer(config, num_train)
        optimizer.build(model.trainable_variables)
        augmenter = None
        if config.augment:
            augmenter = make_augmenter(config.seed)
            augmenter.build((None, *info.input_shape))
    set_weights(model, x0_arrays, x0_source)
    epoch_counter = tf.Variable(0, dtype=tf.int64, trainable=False)
    # model.variables adds what model.weights lacks: the dropout RNG (seed generator) states,
    # so a resumed run draws the dropout masks of an uninterrupted one (the augmentation's
    # likewise). The data order needs no state: it is a function of (seed, epoch).
    state = {"model": model, "optimizer": optimizer, "epoch": epoch_counter,
             "variables": list(model.variables)}
    if augmenter is not None:
        state["augmentation"] = list(augmenter.variables)
    checkpoint = tf.train.Checkpoint(**state)
    checkpoint_dir, history_path = process_paths(run_dir, strategy, chief)
    manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir, max_to_keep=1)

    if chief:
        check_same_run(run_dir, config, source_digest(x0_source))
        write_config(run_dir, config, description, x0_source)
        if not os.path.exists(os.path.join(run_dir, X0_FILE)):
            save_x0(model, os.path.join(run_dir, X0_FILE))
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        log("resuming %s after epoch %d", run_dir, int(epoch_counter.numpy()))
    elif os.path.exists(history_path):
        os.remove(history_path)  # Epochs recorded without a checkpoint are retrained.
    done = int(epoch_counter.numpy())
    history = restore_history(history_path, done) if done else []

    global_batch = config.batch_size
    steps_per_epoch = num_train // global_batch
    steps = TrainSteps(model, optimizer, strategy, train_data.features, train_data.labels,
                       config.jit_compile, augmenter, rule=step_rule(config))
    evaluators = None
    if config.eval_every_epoch:
        evaluators = _evaluators(model, train_data, test_data, config, strategy)
    empty_order = tf.constant(epoch_permutation(config.seed, 1, num_train))
    for batch in dict.fromkeys((global_batch, *(b for _, b in config.batch_schedule))):
        steps(empty_order, 0, 0, batch)  # Trace and compile before any timing.
    startup_s = time.perf_counter() - started
    growth = "".join(f", batch {b} from epoch {e}" for e, b in config.batch_schedule)
    log("%s %s: global batch %d%s on %d replica(s) (%s), %d steps/epoch, %s; startup %.1f s",
        config.model, config.regime, global_batch, growth, description["replicas"],
        description["device_kind"], steps_per_epoch, config.stop_rule, startup_s)

    reason = stop_reason([row["train_loss"] for row in history], config)
    scalars = EpochScalars(run_dir) if chief and reason is None else None
    if description["workers"] > 1:
        checkpoint_every_s = 0.0  # Every worker must checkpoint the same epochs.
    last_checkpoint = time.perf_counter()
    while reason is None:
        epoch = done + 1
        row = _run_epoch(steps, config, epoch, train_data, log)
        if evaluators is not None and math.isfinite(row["train_loss"]):  # Not of NaN weights.
            began = time.perf_counter()
            full_train, test = evaluators[0](), evaluators[1]()
            row.update(full_train_loss=full_train.loss, full_train_accuracy=full_train.accuracy,
                       test_loss=test.loss, test_accuracy=test.accuracy,
                       eval_time_s=time.perf_counter() - began)
        history.append(row)
        results.append_row(history_path, row)
        if chief and epoch in config.snapshot_epochs:
            save_x0(model, snapshot_path(run_dir, epoch))
        if scalars is not None:
            scalars.write(row)
        epoch_counter.assign(epoch)
        done = epoch
        reason = stop_reason([r["train_loss"] for r in history], config)
        if reason is not None or time.perf_counter() - last_checkpoint >= checkpoint_every_s:
            manager.save(checkpoint_number=epoch)
            last_checkpoint = time.perf_counter()
        _log_epoch(log, row, history, config)
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)

    if scalars is not None:
        scalars.close()
    if reason == DIVERGED:
        # No evaluation: the accuracy of NaN weights (argmax of NaN logits) would look like
        # a number.
        logging.warning("%s %s diverged: the training loss of epoch %d is %s; training "
                        "stopped there, nothing evaluated (lower the learning rate)",
                        config.model, config.regime, done, history[-1]["train_loss"])
        final_train = evaluation.EvalResult(math.nan, math.nan, train_data.info.num_examples)
        final_test = evaluation.EvalResult(math.nan, math.nan, test_data.info.num_examples)
    else:
        if evaluators is None:
            evaluators = _evaluators(model, train_data, test_data, config, strategy)
        final_train, final_test = evaluators[0](), evaluators[1]()
    if chief:
        model.save(os.path.join(run_dir, MODEL_FILE))
    train_time = sum(row["epoch_time_s"] for row in history)
    examples = sum(row["examples"] for row in history)
    wall = sum(row["epoch_time_s"] + (row["eval_time_s"] or 0) for row in history)
    log("%s %s finished after %d epochs (%s): train loss %.4f acc %.2f%%, test loss %.4f "
        "acc %.2f%%", config.model, config.regime, done, reason, final_train.loss,
        100 * final_train.accuracy, final_test.loss, 100 * final_test.accuracy)
    return TrainResult(
        config=config, run_dir=run_dir, strategy=description,
        num_train=train_data.info.num_examples, num_test=test_data.info.num_examples,
        history=history, epochs_run=done, stop_reason=reason, train=final_train,
        test=final_test, wall_time_s=wall, examples_per_s=examples / train_time,
        startup_s=startup_s, x0=x0_source, model=model)


def _evaluators(model, train_data, test_data, config, strategy):
    return tuple(
        evaluation.Evaluator(model, split.features, split.labels,
                             batch_size=min(config.eval_batch_size, split.info.num_examples),
                             strategy=strategy)
        for split in (train_data, test_data))


def _run_epoch(steps, config, epoch, train_data, log) -> dict:
    order = tf.constant(epoch_permutation(config.seed, epoch, train_data.info.num_examples))
    batch = batch_at(config, epoch)
    steps_per_epoch = train_data.info.num_examples // batch
    losses, correct = [], []
    began = last_report = time.perf_counter()
    cpu_began = time.process_time()
    for first in range(0, steps_per_epoch, config.steps_per_call):
        count = min(config.steps_per_call, steps_per_epoch - first)
        step_losses, step_correct = steps(order, first, count, batch)
        losses.append(step_losses)
        correct.append(step_correct)
        now = time.perf_counter()
        done_steps = first + count
        if now - last_report > 10 and done_steps < steps_per_epoch:
            rate = done_steps * batch / (now - began)
            eta = (steps_per_epoch - done_steps) * batch / rate
            log("epoch %d: step %d/%d, loss %.4f, %.0f examples/s, epoch ETA %s", epoch,
                done_steps, steps_per_epoch, float(np.mean(np.concatenate(losses))), rate,
                _format_duration(eta))
            last_report = now
    elapsed = time.perf_counter() - began
    cpu = time.process_time() - cpu_began
    losses = np.concatenate(losses).astype(np.float64)
    examples = steps_per_epoch * batch
    row = dict.fromkeys(HISTORY_COLUMNS)  # Evaluation columns stay empty here.
    row.update(
        epoch=epoch, train_loss=float(np.mean(losses)),
        train_accuracy=float(np.concatenate(correct).sum()) / examples, steps=steps_per_epoch,
        examples=examples, epoch_time_s=elapsed, epoch_cpu_s=cpu,
        examples_per_s=examples / elapsed,
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return row


def _log_epoch(log, row, history, config):
    per_epoch = np.mean([r["epoch_time_s"] + (r["eval_time_s"] or 0) for r in history])
    remaining = max(0, config.epochs - int(row["epoch"]))
    extra = ""
    if row["test_accuracy"] is not None:
        extra = (f", full train loss {row['full_train_loss']:.4f} acc "
                 f"{100 * row['full_train_accuracy']:.2f}%, test loss {row['test_loss']:.4f} "
                 f"acc {100 * row['test_accuracy']:.2f}%")
    cap = " at most" if config.plateau_patience else ""
    log("epoch %d/%d: loss %.4f acc %.2f%%%s, %.0f examples/s, %.1f s; ETA%s %s",
        row["epoch"], config.epochs, row["train_loss"], 100 * row["train_accuracy"], extra,
        row["examples_per_s"], row["epoch_time_s"], cap, _format_duration(remaining * per_epoch))
