"""The generalization-gap benchmark: Tables 2-4 end to end, and a regression gate.

    python -m benchmarks.gap --flagfile=flags/cpu/gap_F1_fmnist.flags
    python -m benchmarks.gap --flagfile=flags/gap_paper.flags --models=F1,C1

For each network and trial: SB and LB from the same seeded x0, full train/test accuracy, the
distance ratio, and sharpness (full space and random subspace, each epsilon and solver).
Writes into --output_dir the rows ``runs.csv``, ``pairs.csv``, ``sharpness.csv``, the derived
``table2.csv``, ``table3.csv``, ``table4.csv`` and ``summary.md`` (also printed). Rerunning
the same command repeats no finished stage.

--baseline=FILE checks the results against bounds and exits 1 listing every violated bound
(also when it checked nothing: no bound on these networks, or pairs missing);
--write_baseline=FILE adds a baseline derived from these results (with the stated
tolerances) to FILE.
"""

import os

from absl import flags

from benchmarks import common
from lbgap_tf import gap, gate, models, report, sharpness, tables, train

FLAGS = flags.FLAGS
SUMMARY_FILE = "summary.md"
EXIT_GATE_FAILED = 1

common.define_data_flags()
common.define_optimization_flags()
common.define_distribution_flags()
common.define_output_flags()
common.define_checkpoint_flags()
flags.adopt_module_key_flags(common)  # --helpshort lists the shared flags too.

flags.DEFINE_list("models", ["F1"], "Networks to compare, e.g. F1,C1 (Table 1 names).")
flags.DEFINE_integer("trials", 5, "Trials per network; trial k uses seed --seed + k.")
flags.DEFINE_integer("sb_batch_size", train.SB_BATCH_SIZE,
                     "SB GLOBAL batch size (over all replicas); the paper's 256.")
flags.DEFINE_integer("lb_batch_size", None,
                     "LB GLOBAL batch size (over all replicas). Default: --lb_fraction of the "
                     "training set (the paper's 10%).")
flags.DEFINE_integer("sb_epochs", 20, "SB epochs (the cap under --plateau_patience).")
flags.DEFINE_integer("lb_epochs", 20, "LB epochs (the cap under --plateau_patience).")
flags.DEFINE_list("epsilons", ["1e-3", "5e-4"], "Sharpness box sizes (Metric 2.1).")
flags.DEFINE_list("subspace_dims", ["full", "100"],
                  "Sharpness spaces: 'full' (Table 3) and/or random subspace dimensions "
                  "(Table 4: 100).")
flags.DEFINE_list("subspace_distributions", [sharpness.DEFAULT_SUBSPACE_DISTRIBUTION],
                  "Distributions of the random subspace matrix A, each with its own rows: "
                  "normal_1_over_p (N(0, 1/p) entries), normal (N(0, 1)), uniform (U[0, 1)), "
                  "uniform_unit_columns (U[0, 1) with unit-norm columns). The first is the one "
                  "Table 4 compares with the paper.")
flags.DEFINE_list("solvers", ["lbfgsb", "ascent"],
                  "Sharpness solvers: lbfgsb (the paper's), lbfgsb_scaled (L-BFGS-B in the "
                  "box-scaled variables y / r) and/or ascent.")
flags.DEFINE_float("solver_disagreement_factor", report.DISAGREEMENT_FACTOR,
                   "The summary flags every measurement whose solvers' values differ by more "
                   "than this factor.")
flags.DEFINE_float("solver_stall_fraction", report.STALL_FRACTION,
                   "The summary flags every solve whose best point has ||y|| / ||r|| below "
                   "this (it stayed near y = 0).")
flags.DEFINE_integer("sharpness_max_iter", 10, "Sharpness solver iterations (the paper: 10).")
flags.DEFINE_integer("sharpness_examples", None,
                     "Evaluate sharpness on a fixed seeded subset of this many training "
                     "examples. Default: the whole training set.")
flags.DEFINE_integer("sharpness_batch_size", 5000,
                     "GLOBAL evaluation batch of the sharpness objective (batch-mode BN "
                     "depends on it; the authors used 5000).")
flags.DEFINE_string("baseline", None, "Gate the results against the bounds in this JSON file.")
flags.DEFINE_string("write_baseline", None,
                    "Add a baseline derived from these results to this JSON file.")
flags.DEFINE_string("baseline_name", None,
                    "Name of the baseline --write_baseline writes (default: models, data "
                    "set and device).")
flags.DEFINE_float("baseline_accuracy_tolerance", 2.0,
                   "--write_baseline: accuracy bounds lie this many percentage points "
                   "outside the measured range.")
flags.DEFINE_float("baseline_ratio_tolerance", 2.0,
                   "--write_baseline: ratio bounds lie this factor below the smallest trial.")

for _name in ("trials", "sb_batch_size", "lb_batch_size", "sb_epochs", "lb_epochs",
              "sharpness_max_iter", "sharpness_examples", "sharpness_batch_size"):
    flags.register_validator(_name, lambda v: v is None or v >= 1,
                             message=f"--{_name} must be a positive integer")
flags.register_validator("models", lambda names: bool(names) and all(
    name in models.MODEL_NAMES for name in names),
    message=f"--models takes names from {', '.join(models.MODEL_NAMES)}, e.g. F1,C1")
flags.register_validator("solvers", lambda names: bool(names) and all(
    name in sharpness.SOLVERS for name in names),
    message=f"--solvers takes names from {', '.join(sharpness.SOLVERS)}")
flags.register_validator("subspace_distributions", lambda names: bool(names) and all(
    name in sharpness.SUBSPACE_DISTRIBUTIONS for name in names),
    message="--subspace_distributions takes names from "
            f"{', '.join(sharpness.SUBSPACE_DISTRIBUTIONS)}")
flags.register_validator("solver_disagreement_factor", lambda v: v >= 1,
                         message="--solver_disagreement_factor must be >= 1")
flags.register_validator("solver_stall_fraction", lambda v: 0 <= v < 1,
                         message="--solver_stall_fraction must be in [0, 1)")


def _epsilons() -> tuple[float, ...]:
    try:
        values = tuple(float(text) for text in FLAGS.epsilons)
    except ValueError as error:
        raise sharpness.SharpnessError(
            f"--epsilons must be numbers, got {FLAGS.epsilons}: e.g. --epsilons=1e-3,5e-4"
        ) from error
    return values


def _subspace_dims() -> tuple[int | None, ...]:
    dims = []
    for text in FLAGS.subspace_dims:
        if text == "full":
            dims.append(None)
        elif text.isdigit() and int(text) > 0:
            dims.append(int(text))
        else:
            raise sharpness.SharpnessError(
                f"--subspace_dims takes 'full' and positive integers, got {text!r}: e.g. "
                "--subspace_dims=full,100")
    return tuple(dims)


def gap_config() -> gap.GapConfig:
    """The ``GapConfig`` of the flags."""
    shared = common.optimization_settings()
    synthetic = common.synthetic_spec(FLAGS.models[0])
    sb = train.TrainConfig(**shared, regime="SB", batch_size=FLAGS.sb_batch_size,
                           epochs=FLAGS.sb_epochs, synthetic=synthetic)
    lb = train.TrainConfig(**shared, regime="LB", batch_size=FLAGS.lb_batch_size,
                           epochs=FLAGS.lb_epochs, synthetic=synthetic)
    plan = gap.SharpnessPlan(
        epsilons=_epsilons(), subspace_dims=_subspace_dims(),
        subspace_distributions=tuple(dict.fromkeys(FLAGS.subspace_distributions)),
        solvers=tuple(FLAGS.solvers),
        max_iter=FLAGS.sharpness_max_iter, eval_examples=FLAGS.sharpness_examples,
        eval_batch_size=FLAGS.sharpness_batch_size)
    return gap.GapConfig(models=tuple(FLAGS.models), sb=sb, lb=lb, trials=FLAGS.trials,
                         first_seed=FLAGS.seed, sharpness=plan)


def main(argv):
    del argv  # Rejected by common.run when not empty.
    config = gap_config()
    if FLAGS.dataset == "synthetic" and len(config.models) > 1:
        raise ValueError("--dataset=synthetic takes one network at a time: pass one --models")
    if FLAGS.baseline:
        gate.load_baselines(FLAGS.baseline)  # A malformed baseline fails before training.
    strategy = common.strategy()
    outcome = gap.run(config, output_dir=FLAGS.output_dir, strategy=strategy,
                      data_dirs=common.data_dirs(), quiet=FLAGS.quiet,
                      nondefault_flags=common.nondefault_flags(),
                      checkpoint_every_s=FLAGS.checkpoint_every_s)
    text = report.summary(outcome, disagreement_factor=FLAGS.solver_disagreement_factor,
                          stall_fraction=FLAGS.solver_stall_fraction)
    summary_path = os.path.join(FLAGS.output_dir, SUMMARY_FILE)
    tables.write_text_atomic(summary_path, text)
    print(text)
    print(f"Tables: {', '.join(os.path.join(FLAGS.output_dir, f'table{k}.csv') for k in (2, 3, 4))}"
          f"; summary: {summary_path}")
    if outcome.diverged:
        common.fail(
            f"{len(outcome.diverged)} run(s) diverged (training loss NaN or inf): "
            + ", ".join(f"{row['run_id']} at epoch {row['epochs_run']}"
                        for row in outcome.diverged)
            + "; their trials have no pair or sharpness, so no baseline is written or "
            "checked: lower --learning_rate", EXIT_GATE_FAILED)
    setup = gate.setup_of(outcome.run_rows)
    if FLAGS.write_baseline:
        name = FLAGS.baseline_name or (
            f"{','.join(config.models)} on {outcome.run_rows[0]['dataset']}, "
            f"{setup['device_kind']}")
        entry = gate.derive_baseline(
            outcome.run_rows, outcome.pair_rows, outcome.sharpness_rows, setup, name=name,
            accuracy_tolerance=FLAGS.baseline_accuracy_tolerance,
            ratio_tolerance=FLAGS.baseline_ratio_tolerance)
        gate.write_baseline(FLAGS.write_baseline, entry)
        print(f"wrote baseline {name!r} with {len(entry['bounds'])} bounds to "
              f"{FLAGS.write_baseline}")
    if FLAGS.baseline:
        verdict = gate.check(FLAGS.baseline, outcome.run_rows, outcome.pair_rows,
                             outcome.sharpness_rows, setup)
        print(verdict.describe())
        if not verdict.passed:
            common.fail(f"regression gate failed: {verdict.reason(FLAGS.baseline)} (listed "
                        "above)", EXIT_GATE_FAILED)


if __name__ == "__main__":
    common.run(main)
