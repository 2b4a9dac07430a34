"""The directory of a run: its files, its lock, and what is read back to resume.

A run lives in a directory: ``config.json`` (the resolved config, the strategy and the x0
source), ``x0.npz`` (the initial weights), ``history.csv`` (one row per epoch),
``checkpoints/`` (model, optimizer and epoch after every epoch), ``snapshots/epoch<k>.npz``
(the weights after the epochs of ``snapshot_epochs``, written before that epoch's checkpoint,
so a resumed run has every snapshot of its checkpointed epochs) and, when finished,
``model.keras``. Only the chief writes them; under multi-worker strategies the other workers
keep their own checkpoints and history in ``checkpoints/worker<i>/``. A directory holds one
run: another configuration is refused, and a second process on the same run is locked out.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import os
import tempfile

import tensorflow as tf

from lbgap_tf import results
from lbgap_tf.train.config import TrainConfig, TrainError, config_dict, defining_values
from lbgap_tf.train.x0 import source_digest

HISTORY_FILE = "history.csv"
X0_FILE = "x0.npz"
CONFIG_FILE = "config.json"
MODEL_FILE = "model.keras"
CHECKPOINT_DIR = "checkpoints"
SNAPSHOT_DIR = "snapshots"

# history.csv: one row per epoch. train_loss/train_accuracy average the epoch's steps (the
# running figures of the weights as they moved); full_train_*/test_* are full-set
# evaluations after the epoch (only with eval_every_epoch); times in seconds.
HISTORY_COLUMNS = (
    "epoch", "train_loss", "train_accuracy", "full_train_loss", "full_train_accuracy",
    "test_loss", "test_accuracy", "steps", "examples", "epoch_time_s", "epoch_cpu_s",
    "eval_time_s", "examples_per_s", "finished_at",
)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's files (always, except on non-chief workers)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    cluster = resolver.cluster_spec().as_dict()
    if "chief" in cluster:
        return resolver.task_type == "chief"
    return resolver.task_type == "worker" and resolver.task_id == 0


def snapshot_path(run_dir: str, epoch: int) -> str:
    """The weights kept after ``epoch`` (an x0.npz-format archive); epoch 0 is x0.npz."""
    if epoch == 0:
        return os.path.join(run_dir, X0_FILE)
    return os.path.join(run_dir, SNAPSHOT_DIR, f"epoch{epoch:04d}.npz")


def process_paths(run_dir: str, strategy: tf.distribute.Strategy,
                  chief: bool) -> tuple[str, str]:
    """This process's (checkpoint directory, history file) in ``run_dir``: the run's own on
    the chief; on other workers ``checkpoints/worker<i>/`` (kept apart, needed to resume)."""
    checkpoint_dir = os.path.join(run_dir, CHECKPOINT_DIR)
    if chief:
        return checkpoint_dir, os.path.join(run_dir, HISTORY_FILE)
    checkpoint_dir = os.path.join(checkpoint_dir, f"worker{strategy.cluster_resolver.task_id}")
    return checkpoint_dir, os.path.join(checkpoint_dir, HISTORY_FILE)


def check_same_run(run_dir: str, config: TrainConfig, x0_digest: str | None) -> None:
    """Refuses a run directory that holds a run of another configuration.

    Compares what defines a run (``defining_values``), with the initial weights by content
    (``x0_digest``: the digest of the x0 file, None for weights drawn from the seed), so an
    x0 path spelled another way (./results/x, results/x, absolute) or a moved output folder
    still resumes, and a changed performance-only field (steps_per_call, ...) too.
    """
    path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as handle:
        stored = json.load(handle)
    have = defining_values(stored.get("config") or {})
    have["x0_path"] = source_digest(stored.get("x0"))
    wanted = defining_values(json.loads(json.dumps(config_dict(config), default=str)))
    wanted["x0_path"] = x0_digest
    changed = sorted(key for key in wanted.keys() | have.keys()
                     if have.get(key) != wanted.get(key))
    if changed:
        raise TrainError(
            f"{run_dir} holds a run of another configuration (differs in {changed}): give "
            "this run its own directory")


def restore_history(path: str, epoch: int) -> list[dict]:
    """The history rows of epochs 1..epoch; rows past the checkpoint are dropped from the
    file, which is replaced atomically (``_replace_rows``)."""
    stored = results.read_rows(path)
    kept = [row for row in stored if int(row["epoch"]) <= epoch]
    if [int(row["epoch"]) for row in kept] != list(range(1, epoch + 1)):
        raise TrainError(
            f"{path} does not hold epochs 1..{epoch} of the checkpointed run: delete the run "
            f"directory {os.path.dirname(path)} to train this run from scratch")
    if len(kept) != len(stored):
        _replace_rows(path, list(stored[0]), kept)
    return [_typed(row) for row in kept]


def _replace_rows(path: str, header: list[str], rows: list[dict]) -> None:
    """Replaces the CSV file ``path`` by ``header`` and ``rows``: written to a temporary file
    in the same folder, fsynced, then renamed over ``path``, so a crash or a failed write at
    any moment leaves the old file or the new one, never a truncated history."""
    directory = os.path.dirname(os.path.abspath(path))
    with tempfile.NamedTemporaryFile("w", dir=directory, suffix=".csv", delete=False,
                                     newline="", encoding="utf-8") as out:
        try:
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(header)
            writer.writerows([row[column] for column in header] for row in rows)
            out.flush()
            os.fsync(out.fileno())
        except BaseException:
            os.unlink(out.name)
            raise
    os.chmod(out.name, 0o644)
    os.replace(out.name, path)


def _typed(row: dict) -> dict:
    """A history row read back from CSV with its numbers as numbers (None when empty)."""
    typed = {}
    for key, value in row.items():
        if key == "finished_at":
            typed[key] = value
        elif value == "":
            typed[key] = None
        elif key in ("epoch", "steps", "examples"):
            typed[key] = int(value)
        else:
            typed[key] = float(value)
    return typed


@contextlib.contextmanager
def run_lock(run_dir: str, chief: bool):
    """Holds ``run_dir``'s exclusive lock (``.lock``, flock) while the run trains; a second
    process on the same directory gets a TrainError. Non-chief workers take no lock."""
    if not chief:
        yield
        return
    fd = os.open(os.path.join(run_dir, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            raise TrainError(
                f"run directory {run_dir} is in use by another process: wait for that run to "
                "finish, or use another --output_dir") from error
        yield
    finally:
        os.close(fd)


def write_config(run_dir: str, config: TrainConfig, strategy_description: dict,
                 x0_source: str) -> None:
    """Writes ``config.json``: the resolved config, the strategy and where x0 came from."""
    value = {"config": config_dict(config), "strategy": strategy_description, "x0": x0_source}
    _write_json(os.path.join(run_dir, CONFIG_FILE), value)


def _write_json(path: str, value: dict) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    with tempfile.NamedTemporaryFile("w", dir=directory, suffix=".json", delete=False) as out:
        json.dump(value, out, indent=2, sort_keys=True, default=str)
        out.write("\n")
    os.chmod(out.name, 0o644)
    os.replace(out.name, path)
