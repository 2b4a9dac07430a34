"""The CSV record of a finished run (``runs.csv`` rows, ``RUN_COLUMNS``) and the run's
deterministic id: resolved config, strategy layout and x0 source, hashed."""

from __future__ import annotations

import time

from lbgap_tf import results
from lbgap_tf.train.config import DIVERGED, TrainConfig, config_dict, defining_values
from lbgap_tf.train.loop import TrainResult
from lbgap_tf.train.x0 import load_x0, weights_digest


def run_key(config: TrainConfig, strategy_description: dict) -> dict:
    """What identifies a run: the fields of the resolved config that define it
    (``defining_values``: not the performance-only ones), the strategy layout and the x0
    source (the x0 file's content digest when a file is given, so the spelling or place of
    its path does not matter). Same key, same run directory."""
    key = defining_values(config_dict(config))
    if config.x0_path is not None:
        key["x0_path"] = weights_digest(load_x0(config.x0_path))
    key["strategy"] = {k: strategy_description[k] for k in ("strategy", "replicas", "workers")}
    return key


def run_id(config: TrainConfig, strategy_description: dict) -> str:
    """Deterministic run id, e.g. "F1-fashion_mnist-SB-b256-s0-1a2b3c4d5e6f", with the step
    remedy before the hash when there is one ("...-s0-sam-1a2b3c4d5e6f")."""
    prefix = (f"{config.model}-{config.dataset}-{config.regime}-b{config.batch_size}-"
              f"s{config.seed}-")
    if config.step_remedy != "none":
        prefix += f"{config.step_remedy}-"
    return results.new_run_id(run_key(config, strategy_description), prefix=prefix)


RUN_COLUMNS = (
    "run_id", "benchmark", "model", "dataset", "regime", "global_batch_size",
    "per_replica_batch_size", "lb_fraction", "replicas", "workers", "strategy", "device_kind",
    "precision", "jit", "optimizer", "learning_rate", "bn_mode", "bn_sync", "eval_batch_size",
    "seed", "x0", "stop_rule", "epochs_run", "stop_reason", "train_loss", "train_accuracy",
    "test_loss", "test_accuracy", "last_epoch_train_loss", "num_train", "num_test",
    "wall_time_s", "startup_s", "examples_per_s", "tf_version", "keras_version",
    "git_revision", "hostname", "finished_at", "nondefault_flags",
)


def run_record(result: TrainResult, *, run_id: str, benchmark: str = "train",
               nondefault_flags: str = "") -> dict:
    """The CSV row of a finished run (columns ``RUN_COLUMNS``; accuracies in [0, 1]).

    A diverged run (``stop_reason`` "diverged", ``epochs_run`` the epoch whose training loss
    was not finite, ``last_epoch_train_loss`` that loss) has empty losses and accuracies: it
    was not evaluated, and no table may take a NaN for a number.
    """
    config = result.config
    evaluated = result.stop_reason != DIVERGED
    provenance = results.provenance()
    row = {
        "run_id": run_id,
        "benchmark": benchmark,
        "model": config.model,
        "dataset": config.dataset,
        "regime": config.regime,
        "global_batch_size": config.batch_size,
        "per_replica_batch_size": config.batch_size // result.strategy["replicas"],
        "lb_fraction": config.lb_fraction if config.regime == "LB" else None,
        "replicas": result.strategy["replicas"],
        "workers": result.strategy["workers"],
        "strategy": result.strategy["strategy"],
        "device_kind": result.strategy["device_kind"],
        "precision": config.precision,
        "jit": config.jit_compile,
        "optimizer": config.optimizer,
        "learning_rate": config.learning_rate,
        "bn_mode": config.bn_mode,
        "bn_sync": config.bn_sync,
        "eval_batch_size": config.eval_batch_size,
        "seed": config.seed,
        "x0": result.x0,
        "stop_rule": config.stop_rule,
        "epochs_run": result.epochs_run,
        "stop_reason": result.stop_reason,
        "train_loss": result.train.loss if evaluated else None,
        "train_accuracy": result.train.accuracy if evaluated else None,
        "test_loss": result.test.loss if evaluated else None,
        "test_accuracy": result.test.accuracy if evaluated else None,
        "last_epoch_train_loss": result.history[-1]["train_loss"],
        "num_train": result.num_train,
        "num_test": result.num_test,
        "wall_time_s": round(result.wall_time_s, 3),
        "startup_s": round(result.startup_s, 3),
        "examples_per_s": round(result.examples_per_s, 1),
        "tf_version": provenance["tf_version"],
        "keras_version": provenance["keras_version"],
        "git_revision": provenance["git_revision"],
        "hostname": provenance["hostname"],
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "nondefault_flags": nondefault_flags,
    }
    return row
