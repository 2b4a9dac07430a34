"""Accelerator setups compared: one gap experiment under several setups, speed AND science.

    python -m benchmarks.setups --flagfile=flags/cpu/setups_F1_fmnist.flags
    python -m benchmarks.setups --flagfile=flags/cpu/setups_F1_fmnist.flags \\
        --setups=default/float32,mirrored:2/float32,one_device@gpu/mixed_float16

--setups lists setups as STRATEGY[:REPLICAS][@DEVICE]/PRECISION[/xla] (see
``lbgap_tf.experiments.setups``); the first is the reference. Every setup trains the same
network, data, regimes and seeds from the same x0 and data order (the gap benchmark's flags
choose the experiment and its scale), each trial in a process of its own, round-robin over the
setups. A setup this machine cannot run (no GPU, no TPU) is reported as skipped.

Writes into --output_dir: ``<setup>/`` (the gap benchmark's rows and run directories of each
setup), ``setup_runs.csv`` (one row per setup and run, with provenance), and the comparison
``setups.csv`` / ``setups.md`` (also printed): speed, science with spread-aware verdicts,
updates and time to a target, and the paper's Appendix C performance model with the measured
throughputs. A bad setup is one error line per setup, exit status 2, and nothing written.
Rerunning the same command repeats nothing finished.
"""

import os
import sys
import time

from absl import flags

from benchmarks import common
from benchmarks import gap as gap_binary
from lbgap_tf import train
from lbgap_tf.experiments import setups
from lbgap_tf.reporting import comparison, resultsets, setups_table

FLAGS = flags.FLAGS
TABLE_NAME = "setups"
EXIT_BAD_SETUP = 2
SETUP_OWNED_FLAGS = ("strategy", "cpu_devices", "precision", "jit_compile")

flags.DEFINE_list("setups", None,
                  f"Setups to compare, the first being the reference: {setups.SYNTAX}.")
flags.DEFINE_enum("isolation", "process", setups.ISOLATIONS,
                  "process: every setup's trial in a process of its own (the CPU split, "
                  "visible devices and peak memory are per process); inline: in this process "
                  "(debugging; only setups fitting this process's devices, no memory figures).")
flags.DEFINE_float("accuracy_tolerance", 1.0,
                   "Verdicts: percentage points an accuracy or the SB - LB gap may differ "
                   "from the reference, besides the trial spread.")
flags.DEFINE_float("ratio_tolerance", 2.0,
                   "Verdicts: factor a distance or sharpness ratio may differ from the "
                   "reference, besides the trial spread.")
flags.DEFINE_float("spread_sigmas", 2.0,
                   "Verdicts: standard errors of the difference added to each tolerance.")
flags.DEFINE_float("target_train_loss", None,
                   "Time-to-target: training loss to reach. Default: the final training loss "
                   "of the reference's slower regime.")
flags.DEFINE_float("target_test_accuracy", None,
                   "Time-to-target: test accuracy (%) to reach (needs --eval_every_epoch). "
                   "Default: the reference's SB test accuracy less --target_slack.")
flags.DEFINE_float("target_slack", 0.5, "Percentage points below the reference SB test "
                   "accuracy for the default accuracy target.")
flags.mark_flag_as_required("setups")
flags.register_validator("accuracy_tolerance", lambda v: v >= 0,
                         message="--accuracy_tolerance must be >= 0")
flags.register_validator("ratio_tolerance", lambda v: v >= 1,
                         message="--ratio_tolerance must be >= 1 (a factor)")
flags.register_validator("spread_sigmas", lambda v: v >= 0,
                         message="--spread_sigmas must be >= 0")


def _bad_setups(lines: str) -> None:
    for line in lines.splitlines():
        sys.stderr.write(f"setups.py: error: {line}\n")
    raise SystemExit(EXIT_BAD_SETUP)


def _checked_config() -> setups.SetupsConfig:
    """The comparison of the flags, every setup checked before anything is written."""
    for name in SETUP_OWNED_FLAGS:
        if FLAGS[name].present:
            _bad_setups(f"--{name} is set by each setup: drop it and write it into --setups "
                        f"({setups.SYNTAX})")
    try:
        parsed = setups.parse_setups(FLAGS.setups)
    except setups.SetupError as error:
        _bad_setups(str(error))
    experiment = gap_binary.gap_config()
    config = setups.SetupsConfig(experiment=experiment, setups=parsed)
    train_data, _ = train.load_data(
        train.TrainConfig(model=experiment.models[0], dataset=experiment.sb.dataset,
                          synthetic=experiment.sb.synthetic), **common.data_dirs())
    num_train = train_data.info.num_examples
    batches = {regime: train.resolve(getattr(experiment, regime.lower()), num_train,
                                     1).batch_size for regime in train.REGIMES}
    try:
        setups.check_batches(parsed, batches)
    except setups.SetupError as error:
        _bad_setups(str(error))
    return config


def main(argv):
    del argv
    started = time.perf_counter()
    config = _checked_config()
    machine = setups.Machine.detect(FLAGS.tpu_address)
    outcome = setups.run(
        config, output_dir=FLAGS.output_dir, machine=machine, data_dirs=common.data_dirs(),
        tpu_address=FLAGS.tpu_address, isolation=FLAGS.isolation, quiet=FLAGS.quiet,
        nondefault_flags=common.nondefault_flags(),
        checkpoint_every_s=FLAGS.checkpoint_every_s,
        log=lambda line: print(line, file=sys.stderr, flush=True))
    groups = []
    for status in outcome.statuses:
        if status.status == "ran":
            [group] = resultsets.load_gap_folder(status.directory)
            group.label = status.setup.name
        else:
            group = resultsets.SetupResults(label=status.setup.name, folder=status.directory,
                                            setup={}, status=status.status,
                                            reason=status.reason)
        groups.append(group)
    result = comparison.compare(
        groups, tolerances=comparison.Tolerances(
            accuracy_pp=FLAGS.accuracy_tolerance, ratio_factor=FLAGS.ratio_tolerance,
            spread_sigmas=FLAGS.spread_sigmas),
        targets=comparison.Targets(train_loss=FLAGS.target_train_loss,
                                   test_accuracy_pct=FLAGS.target_test_accuracy,
                                   accuracy_slack_pp=FLAGS.target_slack))
    wall = time.perf_counter() - started
    overhead = {"total wall": wall, "training and measuring": outcome.work_s,
                "outside training and measuring": wall - outcome.work_s,
                "of which worker process starts": outcome.process_start_s}
    text = setups_table.markdown(result, overhead)
    csv_path, md_path = setups_table.write(result, FLAGS.output_dir, TABLE_NAME, text, overhead)
    print(text)
    print(f"Comparison: {csv_path}, {md_path}; rows: "
          f"{os.path.join(FLAGS.output_dir, setups.SETUP_RUNS_FILE)}")


if __name__ == "__main__":
    common.run(main)
