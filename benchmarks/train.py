"""Trains one network in one regime (SB or LB) and records the run.

    python -m benchmarks.train --flagfile=flags/cpu/train_F1_fmnist_sb.flags
    python -m benchmarks.train --model=F1 --dataset=synthetic --epochs=2 --batch_size=64 \\
        --strategy=mirrored --cpu_devices=2 --output_dir=/tmp/smoke

Writes ``<output_dir>/runs/<run_id>/`` (config.json, x0.npz, history.csv, checkpoints/,
model.keras) and, when the run completes, one row in ``<output_dir>/runs.csv``. The run id is
a hash of the resolved configuration, so rerunning the same command resumes an interrupted
run from its last completed epoch, and reports a completed run without training it again. A
run whose training loss becomes NaN or inf stops as diverged: its row says so, with empty
losses and accuracies.

Test hook: with ``LBGAP_TEST_SIGKILL_AFTER_EPOCH=k`` in the environment the process kills
itself with SIGKILL right after epoch k (and its checkpoint), so the resume test interrupts it
at a known point.
"""

import os
import signal

from absl import flags, logging

from benchmarks import common
from lbgap_tf import distribute, results, train

FLAGS = flags.FLAGS
RUNS_FILE = "runs.csv"
KILL_AFTER_EPOCH = "LBGAP_TEST_SIGKILL_AFTER_EPOCH"

common.define_model_data_flags()
common.define_training_flags()
common.define_distribution_flags()
common.define_output_flags()
common.define_checkpoint_flags()
flags.adopt_module_key_flags(common)  # --helpshort lists the shared flags too.


def _kill_hook():
    """The on_epoch_end of the test hook (module docstring), or None without it."""
    kill_after = os.environ.get(KILL_AFTER_EPOCH)
    if not kill_after:
        return None

    def kill(epoch, row):
        if epoch == int(kill_after):
            os.kill(os.getpid(), signal.SIGKILL)

    return kill


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
                         quiet=FLAGS.quiet, checkpoint_every_s=FLAGS.checkpoint_every_s,
                         on_epoch_end=_kill_hook())
    if not train.is_chief(strategy):
        return
    row = train.run_record(result, run_id=run_id, nondefault_flags=common.nondefault_flags())
    results.append_row(runs_csv, row)
    logging.info("appended run %s to %s", run_id, runs_csv)
    if result.stop_reason == train.DIVERGED:
        print(f"{run_id}: DIVERGED at epoch {result.epochs_run} (training loss "
              f"{result.history[-1]['train_loss']}), not evaluated; recorded in {runs_csv}. "
              "Lower --learning_rate.")
        return
    print(f"{run_id}: {result.epochs_run} epochs ({result.stop_reason}), train accuracy "
          f"{100 * result.train.accuracy:.2f}%, test accuracy {100 * result.test.accuracy:.2f}%, "
          f"{result.examples_per_s:.0f} examples/s -> {runs_csv}")


if __name__ == "__main__":
    common.run(main)
