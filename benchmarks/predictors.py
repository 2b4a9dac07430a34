"""Which measure predicts the gap? Kendall's tau of every measure with the test error.

    python -m benchmarks.predictors --results=results/cpu_gap_F1_fmnist
    python -m benchmarks.predictors \\
        --results=results/cpu_fig4_F1_fmnist,results/cpu_gap_F1_fmnist \\
        --output_dir=results/predictors --alpha=0.05

Reads ``runs.csv``, ``sharpness.csv`` and ``curvature.csv`` of every folder in --results (the
folders of benchmarks.gap, benchmarks.batch_sweep, benchmarks.warm_start, benchmarks.train with
benchmarks.sharpness and benchmarks.curvature): every completed run, SB or LB, every trial and
batch size, with every measure taken on it (Metric 2.1 per space, distribution, epsilon and
solver; Hessian eigenvalues, trace, adaptive sharpness). Per network and data set it writes
``predictors_runs.csv`` (one row per run and measure, with the run's accuracies and test
loss), ``predictors.csv`` (Kendall's tau-b and its two-sided p-value of each measure with the
test error and with the train - test accuracy gap, and a verdict) and ``predictors.md``
(printed too), which says plainly when no measure predicts the test error. See
``lbgap_tf.reporting.predictors`` for the rules. Reads CSV only: no TensorFlow import.
"""

import os

from absl import flags

from benchmarks import contract
from lbgap_tf import tables
from lbgap_tf.reporting import predictors

FLAGS = flags.FLAGS
RUNS_TABLE, CORRELATIONS_TABLE, REPORT = "predictors_runs.csv", "predictors.csv", "predictors.md"

flags.DEFINE_list("results", None, "Result folders whose runs and measures are pooled, e.g. "
                  "results/cpu_gap_F1_fmnist,results/cpu_fig4_F1_fmnist.")
flags.DEFINE_string("output_dir", None, "Receives predictors_runs.csv, predictors.csv and "
                    "predictors.md. Default: the first --results folder.")
flags.DEFINE_float("alpha", 0.05, "Significance level of the verdicts (two-sided p-value).")
flags.mark_flag_as_required("results")
flags.register_validator("results", lambda paths: bool(paths),
                         message="--results takes at least one result folder")
flags.register_validator("alpha", lambda v: 0 < v < 1, message="--alpha must be in (0, 1)")


def main(argv):
    del argv
    runs, sharpness, curvature = [], [], []
    for folder in dict.fromkeys(FLAGS.results):
        folder_runs, folder_sharpness, folder_curvature = predictors.read_folder(folder)
        runs += folder_runs
        sharpness += folder_sharpness
        curvature += folder_curvature
    if not runs:
        raise ValueError(f"no completed run in {', '.join(FLAGS.results)}: run benchmarks.gap "
                         "(or benchmarks.train) there first")
    if not sharpness and not curvature:
        raise ValueError(f"no sharpness.csv or curvature.csv rows in {', '.join(FLAGS.results)}:"
                         " measure the runs with benchmarks.sharpness or benchmarks.curvature "
                         "first; there is nothing to correlate")
    groups, measures, notes = predictors.collect(runs, sharpness, curvature)
    found = predictors.correlations(groups, measures, FLAGS.alpha)
    if not found:
        raise ValueError("no measurement belongs to a completed run of these folders: "
                         "nothing to correlate; " + "; ".join(notes))
    text = predictors.markdown(groups, measures, found, notes, FLAGS.alpha, FLAGS.results)
    output_dir = FLAGS.output_dir or FLAGS.results[0]
    tables.write_table(os.path.join(output_dir, RUNS_TABLE),
                       predictors.run_rows(groups, measures))
    tables.write_table(os.path.join(output_dir, CORRELATIONS_TABLE),
                       predictors.correlation_rows(found))
    tables.write_text_atomic(os.path.join(output_dir, REPORT), text)
    print(text)
    print(f"Predictors: {os.path.join(output_dir, CORRELATIONS_TABLE)}, "
          f"{os.path.join(output_dir, REPORT)}")


if __name__ == "__main__":
    contract.run(main)
