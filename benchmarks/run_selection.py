"""Trained runs of ``benchmarks.train`` (or ``benchmarks.gap``) selected for a measurement.

A run is named by its run id under ``<output_dir>/runs/`` or by its run directory (which may
live in another output folder; its ``runs.csv`` is the one two levels up). Every named run is
checked (a completed row in ``runs.csv``, a final ``model.keras``, a readable config) before
any is measured, and a problem raises a ``ValueError`` naming the run and the fix, which a
binary turns into its one error line. The measurement binaries share this selection, its
flags (``define_flags``: which runs, on which evaluation data, where) and the evaluation
settings of a run (``evaluation_settings``), so they measure the same runs the same way.
"""

import dataclasses
import json
import os

import keras
from absl import flags, logging

from lbgap_tf import data, models, results, sharpness_rows, train

FLAGS = flags.FLAGS

RUNS_FILE = "runs.csv"


def define_flags(*, receives: str, seed_help: str) -> None:
    """--runs, --eval_examples, --eval_batch_size, --data_dir, --tfds_data_dir,
    --output_dir (which ``receives`` the binary's rows), --seed (``seed_help``) and --quiet,
    with their checks. A binary adopts them with ``flags.adopt_module_key_flags``."""
    flags.DEFINE_list("runs", [], "Run ids under <output_dir>/runs/ or run directories "
                      "written by benchmarks.train. Default: every completed run in "
                      "<output_dir>/runs.csv.")
    flags.DEFINE_integer("eval_examples", None, "Evaluate on a fixed subset of this many "
                         "training examples (drawn from --seed). Default: the whole training "
                         "set.")
    flags.DEFINE_integer("eval_batch_size", None, "GLOBAL evaluation batch (batch-statistics "
                         "BN depends on it). Default: the run's own eval_batch_size (5000).")
    flags.DEFINE_string("data_dir", None, "Folder with local copies of the data files "
                        "(see BUILD.md, 'Preparing data').")
    flags.DEFINE_string("tfds_data_dir", None, "TensorFlow Datasets data folder.")
    flags.DEFINE_string("output_dir", "results/", "Holds runs.csv and runs/ of "
                        f"benchmarks.train; receives {receives}.")
    flags.DEFINE_integer("seed", 0, seed_help)
    flags.DEFINE_bool("quiet", False, "Log warnings and errors only (for CI).")
    flags.register_validator("eval_examples", lambda v: v is None or v >= 1,
                             message="--eval_examples must be >= 1 (or unset for all examples)")
    flags.register_validator("eval_batch_size", lambda v: v is None or v >= 1,
                             message="--eval_batch_size must be >= 1")
    flags.register_validator("seed", lambda v: v >= 0, message="--seed must be >= 0")
    flags.register_validator("output_dir", bool, message="--output_dir must not be empty")


def evaluation_settings(run: "Run", num_train: int) -> tuple[int, int, int | None]:
    """(evaluation examples, GLOBAL evaluation batch, subset seed or None for the whole
    training set) of a run of ``num_train`` training examples under --eval_examples,
    --eval_batch_size and --seed, checked."""
    examples = FLAGS.eval_examples or num_train
    if examples > num_train:
        raise ValueError(f"--eval_examples={examples} exceeds the {num_train} training examples "
                         f"of run {run.run_id}: pass at most {num_train}")
    batch = min(FLAGS.eval_batch_size or run.config.eval_batch_size, examples)
    return examples, batch, sharpness_rows.subset_seed(examples, num_train, FLAGS.seed)


def split_of(config: train.TrainConfig, cache: dict) -> data.SplitData:
    """``train_split`` with the data folders of --data_dir and --tfds_data_dir."""
    return train_split(config, cache, data_dir=FLAGS.data_dir, tfds_data_dir=FLAGS.tfds_data_dir)


@dataclasses.dataclass
class Run:
    """A completed run: its id, directory, resolved config, ``runs.csv`` row and final model."""

    run_id: str
    run_dir: str
    config: train.TrainConfig
    row: dict
    model: keras.Model


def read_config(run_dir: str) -> train.TrainConfig:
    """The resolved ``TrainConfig`` saved in a run directory."""
    path = os.path.join(run_dir, train.CONFIG_FILE)
    try:
        with open(path, encoding="utf-8") as handle:
            values = dict(json.load(handle)["config"])
        if values.get("synthetic") is not None:
            values["synthetic"] = data.SyntheticSpec(**values["synthetic"])
        return train.TrainConfig(**values)
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist: {run_dir} is not a run directory of "
                         "benchmarks.train") from None
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read the run configuration {path} ({error}): it was not "
                         "written by this version of benchmarks.train") from error


def locate(name: str, output_dir: str) -> tuple[str, str, str]:
    """(run id, run directory, runs.csv) of a run id or a run directory path."""
    if os.path.isdir(name) and os.path.exists(os.path.join(name, train.CONFIG_FILE)):
        run_dir = os.path.abspath(name)
        root = os.path.dirname(os.path.dirname(run_dir))
        return os.path.basename(run_dir), run_dir, os.path.join(root, RUNS_FILE)
    return name, os.path.join(output_dir, "runs", name), os.path.join(output_dir, RUNS_FILE)


def load_runs(names: list[str], output_dir: str, strategy) -> list[Run]:
    """The runs ``names`` (default: every completed run of ``<output_dir>/runs.csv``), with
    their final models loaded under ``strategy``'s scope. A diverged run (loss NaN or inf) has
    no minimizer to measure: naming it is an error, and it is skipped with a warning when runs
    are taken from ``runs.csv``."""
    runs_csv = os.path.join(output_dir, RUNS_FILE)
    named = bool(names)
    names = names or [row["run_id"] for row in results.read_rows(runs_csv)]
    if not names:
        raise ValueError(f"no completed runs in {runs_csv}: train some with benchmarks.train "
                         "and the same --output_dir, or name them with --runs")
    runs = []
    for name in dict.fromkeys(names):
        run_id, run_dir, csv_path = locate(name, output_dir)
        rows = [row for row in results.read_rows(csv_path) if row["run_id"] == run_id]
        if not rows:
            raise ValueError(f"run {name} is not a completed run: no row with run_id {run_id} in "
                             f"{csv_path}; pass a run id listed there or finish the run with "
                             "benchmarks.train")
        if rows[0]["stop_reason"] == train.DIVERGED:
            message = (f"run {run_id} diverged at epoch {rows[0]['epochs_run']} (training loss "
                       "NaN or inf): its weights are no minimizer, so it has no sharpness")
            if named:
                raise ValueError(f"{message}; drop it from --runs")
            logging.warning("%s: skipped", message)
            continue
        model_path = os.path.join(run_dir, train.MODEL_FILE)
        if not os.path.exists(model_path):
            raise ValueError(f"run {run_id} has no final model {model_path}: rerun its "
                             "benchmarks.train command to finish it")
        config = read_config(run_dir)
        with strategy.scope():
            model = keras.models.load_model(model_path, compile=False)
        runs.append(Run(run_id, run_dir, config, rows[0], model))
    if not runs:
        raise ValueError(f"every run in {runs_csv} diverged: nothing to measure")
    return runs


def train_split(config: train.TrainConfig, cache: dict, *, data_dir: str | None,
                tfds_data_dir: str | None) -> data.SplitData:
    """The training split of a run's data set (loaded once per data set and input layout)."""
    flatten = models.spec(config.model).flat_input
    key = (config.dataset, flatten, config.synthetic)
    if key not in cache:
        cache[key] = data.load_split(config.dataset, "train", data_dir=data_dir,
                                     tfds_data_dir=tfds_data_dir, flatten=flatten,
                                     synthetic=config.synthetic)
    return cache[key]
