"""The suite's experiments as ``tf.test.Benchmark`` methods, for TensorFlow's benchmark runner
and PerfZero-style harnesses built on it::

    python -m benchmarks.tf_benchmarks --benchmark_filter=GapBenchmark.benchmark_gap_F1_fmnist
    python -m benchmarks.tf_benchmarks --benchmarks=smoke --benchmark_output_dir=/tmp/bench

TensorFlow's runner (``tf.test.main``) runs the methods whose "module.Class.method" name
matches ``--benchmark_filter=REGEX`` ("all" for every one); older TensorFlow releases spelled
it ``--benchmarks=REGEX``, which this module accepts as the same flag. Each
method is a case declared in ``CASES``: a flagfile of ``benchmarks.gap`` and the baseline file
whose bounds become the reported metrics' ``min_value``/``max_value``. It runs the gap
experiment through the library into ``--benchmark_output_dir/<case>`` (a rerun resumes: the
reported wall time is then that of the stages run now) and calls ``report_benchmark`` with:

- ``wall_time``: the experiment's wall time; ``extras``: its stage times, training examples/s
  per regime and the setup (device, precision, TensorFlow version);
- ``metrics``: every quantity the case's baseline bounds (train/test accuracy, the SB - LB
  test gap, the distance ratio, LB/SB sharpness ratios), as the mean over trials, with the
  tightest bound of the matching baselines as min/max. With ``TEST_REPORT_FILE_PREFIX`` set,
  TensorFlow writes the entries as ``BenchmarkEntries`` protos to files with that prefix.

A case whose results violate a bound still reports (a benchmark measures); the gate binary
(``benchmarks.gap --baseline``) is the pass/fail check.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import tensorflow as tf
from absl import flags
from absl.testing import flagsaver

from benchmarks import gap as gap_binary
from lbgap_tf import gap, gate

FLAGS = flags.FLAGS
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

flags.DEFINE_string("benchmark_output_dir", "results/tf_benchmarks",
                    "Root of the benchmark cases' output folders (one per case).")


@dataclasses.dataclass(frozen=True)
class Case:
    """A benchmark case: a ``benchmarks.gap`` flagfile and the baseline of its metrics
    (paths relative to the repository)."""

    flagfile: str
    baseline: str


CASES = {
    "gap_F1_fmnist_cpu": Case("flags/cpu/gap_F1_fmnist.flags", "baselines/cpu_F1_fmnist.json"),
    "gap_smoke": Case("flags/cpu/gap_smoke.flags", "baselines/smoke_synthetic.json"),
}


def _metric_name(bound: gate.Bound) -> str:
    """E.g. "F1/sharpness_ratio/full/lbfgsb/eps0.001" or "F1/test_accuracy/SB" (a random
    subspace adds its dimension and A's distribution: ".../random/p100/normal/...")."""
    parts = [bound.model, bound.metric, bound.regime, bound.subspace,
             f"p{bound.subspace_dim}" if bound.subspace_dim else None,
             bound.subspace_distribution, bound.solver,
             f"eps{bound.epsilon:g}" if bound.epsilon is not None else None]
    return "/".join(part for part in parts if part)


def benchmark_metrics(outcome: gap.GapOutcome, baseline_path: str) -> list[dict]:
    """``report_benchmark`` metrics: each bounded quantity's trial mean with the tightest
    min/max of the baselines in ``baseline_path`` that match the outcome's setup."""
    setup = gate.setup_of(outcome.run_rows)
    table = gate.measurements(outcome.run_rows, outcome.pair_rows, outcome.sharpness_rows)
    metrics: dict[str, dict] = {}
    for baseline in gate.load_baselines(baseline_path):
        if not gate.setup_matches(baseline["setup"], setup):
            continue
        for bound in baseline["bounds"]:
            for (model, _dataset), values in table.items():
                if model != bound.model:
                    continue
                per_seed = gate.matching_values(bound, values)
                if not per_seed:
                    continue
                name = _metric_name(bound)
                entry = metrics.setdefault(name, {
                    "name": name, "value": sum(per_seed.values()) / len(per_seed)})
                if bound.min is not None:
                    entry["min_value"] = max(entry.get("min_value", bound.min), bound.min)
                if bound.max is not None:
                    entry["max_value"] = min(entry.get("max_value", bound.max), bound.max)
    if not metrics:
        raise ValueError(f"no bound of {baseline_path} applies to these results (setup "
                         f"{setup}): the benchmark would report nothing; add a baseline for "
                         "this setup")
    return sorted(metrics.values(), key=lambda entry: entry["name"])


class GapBenchmark(tf.test.Benchmark):
    """The generalization-gap experiment per case of ``CASES`` (methods made from the data)."""

    def _run_case(self, name: str) -> None:
        case = CASES[name]
        output_dir = os.path.join(FLAGS.benchmark_output_dir, name)
        with flagsaver.flagsaver():
            FLAGS([gap_binary.__file__, f"--flagfile={os.path.join(REPO, case.flagfile)}",
                   f"--output_dir={output_dir}", "--quiet"])
            config = gap_binary.gap_config()
            data_dirs = {"data_dir": FLAGS.data_dir, "tfds_data_dir": FLAGS.tfds_data_dir}
            checkpoint_every_s = FLAGS.checkpoint_every_s
        outcome = gap.run(config, output_dir=output_dir, data_dirs=data_dirs, quiet=True,
                          checkpoint_every_s=checkpoint_every_s)
        setup = gate.setup_of(outcome.run_rows)
        extras = {f"{stage}_s": round(seconds, 3)
                  for stage, seconds in outcome.stage_seconds.items()}
        for regime in ("SB", "LB"):
            rates = [float(row["examples_per_s"]) for row in outcome.run_rows
                     if row["regime"] == regime]
            if rates:
                extras[f"{regime}_examples_per_s"] = round(sum(rates) / len(rates), 1)
        extras.update({key: str(value) for key, value in setup.items()})
        self.report_benchmark(
            iters=1, wall_time=outcome.wall_time_s, name=name, extras=extras,
            metrics=benchmark_metrics(outcome, os.path.join(REPO, case.baseline)))


for _case in CASES:
    setattr(GapBenchmark, f"benchmark_{_case}",
            lambda self, case=_case: self._run_case(case))


def _tensorflow_argv(argv: list[str]) -> list[str]:
    """``argv`` with the older ``--benchmarks=REGEX`` spelled as TensorFlow 2.21's
    ``--benchmark_filter=REGEX``."""
    return [arg.replace("--benchmarks=", "--benchmark_filter=", 1)
            if arg.startswith("--benchmarks=") else arg for arg in argv]


if __name__ == "__main__":
    tf.test.main(argv=_tensorflow_argv(sys.argv))
