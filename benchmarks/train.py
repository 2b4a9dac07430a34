"""Trains one network in one regime (SB or LB) and records the run.

    python -m benchmarks.train --flagfile=flags/cpu/train_F1_fmnist_sb.flags
    python -m benchmarks.train --model=F1 --dataset=synthetic --epochs=2 --batch_size=64 \\
        --strategy=mirrored --cpu_devices=2 --output_dir=/tmp/smoke

Writes ``<output_dir>/runs/<run_id>/`` (config.json, x0.npz, history.csv, checkpoints/,
model.keras) and, when the run completes, one row in ``<output_dir>/runs.csv``. The run id is
a hash of the resolved configuration, so rerunning the same command resumes an interrupted
run from its last completed epoch, and reports a completed run without training it again.
"""

import os

from absl import flags, logging

from benchmarks import common
from lbgap_tf import distribute, results, train

FLAGS = flags.FLAGS
RUNS_FILE = "runs.csv"

common.define_model_data_flags()
common.define_training_flags()
common.define_distribution_flags()
common.define_output_flags()
common.define_checkpoint_flags()
flags.adopt_module_key_flags(common)  # --helpshort lists the shared flags too.


def main(argv):
    del argv  # Rejected by common.run when not empty.
    strategy = common.strategy()
    config = common.train_config()
    train_data, test_data = train.load_data(config, **common.data_dirs())
    config = train.resolve(config, train_data.info.num_examples, strategy.num_replicas_in_sync)
    run_id = train.run_id(config, distribute.describe(strategy))
    runs_csv = os.path.join(FLAGS.output_dir, RUNS_FILE)
    run_dir = os.path.join(FLAGS.output_dir, "runs", run_id)
    if any(row["run_id"] == run_id for row in results.read_rows(runs_csv)):
        print(f"run {run_id} is already complete (row in {runs_csv}, files in {run_dir}); "
              "nothing to do. Delete its row and directory to train it again.")
        return
    result = train.train(config, train_data, test_data, run_dir=run_dir, strategy=strategy,
                         quiet=FLAGS.quiet, checkpoint_every_s=FLAGS.checkpoint_every_s)
    if not train.is_chief(strategy):
        return
    row = train.run_record(result, run_id=run_id, nondefault_flags=common.nondefault_flags())
    results.append_row(runs_csv, row)
    logging.info("appended run %s to %s", run_id, runs_csv)
    print(f"{run_id}: {result.epochs_run} epochs ({result.stop_reason}), train accuracy "
          f"{100 * result.train.accuracy:.2f}%, test accuracy {100 * result.test.accuracy:.2f}%, "
          f"{result.examples_per_s:.0f} examples/s -> {runs_csv}")


if __name__ == "__main__":
    common.run(main)
