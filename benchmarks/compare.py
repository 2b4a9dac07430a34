"""Merges result folders from different machines into one side-by-side setups table.

    python -m benchmarks.compare --results=results/cpu_setups,/mnt/gpu_box/results/gap_F1 \\
        --output_dir=results/compare

Every folder (or any folder below it) holding a ``runs.csv`` written by ``benchmarks.gap`` or
``benchmarks.setups`` contributes one setup per distinct (device, strategy, replicas,
precision, XLA, TensorFlow version) among its runs, labelled "FOLDER: setup". Runs are matched
by experiment (network, data, regime, seed and the training settings that are not part of the
setup) and trials by seed; experiments that do not match the compared one are listed as
unmatched, never paired. The first folder's first setup is the reference unless --reference
names another label. Writes ``compare.csv`` and ``compare.md`` (printed too), in the format of
``benchmarks.setups``, with each setup's provenance (devices, TF and Keras versions, git
revisions, hosts).

This binary reads CSV files only and does not import TensorFlow, so it starts in a fraction
of a second; it reports its own time.
"""

import time

from absl import flags

from benchmarks import contract
from lbgap_tf.reporting import comparison, resultsets, setups_table

FLAGS = flags.FLAGS
TABLE_NAME = "compare"

flags.DEFINE_list("results", None, "Result folders to merge (two or more), e.g. "
                  "results/cpu_setups,/data/gpu_results.")
flags.DEFINE_list("labels", None, "Names of the folders in the table (default: their base "
                  "names), one per --results entry.")
flags.DEFINE_string("reference", None, "Label of the reference setup (default: the first "
                    "folder's first setup); see the labels the table prints.")
flags.DEFINE_string("output_dir", "results/compare", "Receives compare.csv and compare.md.")
flags.DEFINE_float("accuracy_tolerance", 1.0, "Verdicts: percentage points (see setups).")
flags.DEFINE_float("ratio_tolerance", 2.0, "Verdicts: factor for ratios (see setups).")
flags.DEFINE_float("spread_sigmas", 2.0, "Verdicts: standard errors added to tolerances.")
flags.DEFINE_float("target_train_loss", None, "Time-to-target training loss (see setups).")
flags.DEFINE_float("target_test_accuracy", None, "Time-to-target test accuracy, % (see setups).")
flags.mark_flag_as_required("results")
flags.register_validator("results", lambda paths: paths is not None and len(paths) >= 2,
                         message="--results takes at least two folders, comma-separated")
flags.register_multi_flags_validator(
    ["results", "labels"], lambda f: f["labels"] is None or len(f["labels"]) == len(f["results"]),
    message="--labels needs one label per --results folder")
flags.register_validator("ratio_tolerance", lambda v: v >= 1,
                         message="--ratio_tolerance must be >= 1 (a factor)")


def _provenance_lines(groups) -> list[str]:
    lines = ["", "## Provenance", ""]
    for group in groups:
        if group.status != "ran":
            continue
        values = group.provenance()
        described = "; ".join(f"{field} {', '.join(v for v in values[field] if v) or '?'}"
                              for field in ("device_kind", "tf_version", "keras_version",
                                            "git_revision", "hostname"))
        lines.append(f"- {group.label} ({group.folder}): {described}")
    return lines


def main(argv):
    del argv
    started = time.perf_counter()
    labels = FLAGS.labels or [None] * len(FLAGS.results)
    groups = []
    for path, label in zip(FLAGS.results, labels, strict=True):
        groups += resultsets.load_folder(path, label)
    names = [group.label for group in groups]
    if len(set(names)) != len(names):
        raise ValueError(f"two setups share a label ({names}): give the folders distinct "
                         "--labels")
    reference = 0
    if FLAGS.reference is not None:
        if FLAGS.reference not in names:
            raise ValueError(f"--reference {FLAGS.reference!r} is not a setup of these "
                             f"folders: choose one of {names}")
        reference = names.index(FLAGS.reference)
    result = comparison.compare(
        groups, reference=reference,
        tolerances=comparison.Tolerances(FLAGS.accuracy_tolerance, FLAGS.ratio_tolerance,
                                         FLAGS.spread_sigmas),
        targets=comparison.Targets(FLAGS.target_train_loss, FLAGS.target_test_accuracy))
    if len(result.labels) < 2:
        raise ValueError(f"no setup besides the reference has a run of the compared "
                         f"experiment ({result.experiment}): nothing to compare; see "
                         + "; ".join(result.unmatched or ["the folders"]))
    overhead = {"total wall (reading, matching, writing)": time.perf_counter() - started}
    text = setups_table.markdown(result, overhead, title="Result folders compared",
                                 appendix="\n".join(_provenance_lines(groups)) + "\n")
    csv_path, md_path = setups_table.write(result, FLAGS.output_dir, TABLE_NAME, text,
                                           overhead)
    print(text)
    print(f"Comparison: {csv_path}, {md_path}")


if __name__ == "__main__":
    contract.run(main)
