"""Training throughput: ``lbgap_tf.train``'s loop against plain ``keras.Model.fit``.

    python -m benchmarks.train_throughput --model=F1 --dataset=fashion_mnist
    python -m benchmarks.train_throughput --model=F1 --dataset=fashion_mnist \\
        --strategy=mirrored --cpu_devices=2 --methods=train

For each regime (SB 256 and LB = --lb_fraction of the training set), ``--rounds`` rounds
each build every method afresh, in turn (so the methods share the machine's load), and train
the same model on the same in-memory arrays for one untimed warm-up epoch (tracing,
compilation) and ``--timed_epochs`` timed ones; the examples/s of the timed epochs are
reported as mean ± standard deviation, with the startup time apart, and as examples per
CPU-second of the process (``time.process_time``), a figure less sensitive to other load on
the machine (on an idle 2-core machine examples/s approach 2x examples per CPU-second).
Methods:

- ``fit``: ``model.fit`` with Keras defaults (shuffle, one step per call), the same network
  (BN mode, ``--precision``) and ADAM settings as ``train``;
- ``fit_spe10``: ``model.fit`` with ``steps_per_execution=10``;
- ``fit_jit``: ``model.fit`` with ``jit_compile=True``;
- ``train``: ``lbgap_tf.train.train`` under ``--strategy`` (what ``benchmarks.train`` runs);
- ``train_default``: the same under the default strategy (one replica), whatever
  ``--strategy`` is, to compare replica counts in one process;
- ``train_jit``: ``train_default`` with ``jit_compile=True``.

Both count full batches only (``fit`` also runs the last partial batch; its examples are
counted). One row per (regime, method) goes to ``<output_dir>/throughput.csv``, and the
process's peak resident memory (``getrusage``, cumulative over the methods run so far) is
recorded with it; run one method per process to compare memory.
"""

import dataclasses
import os
import resource
import tempfile
import time

import keras
import tensorflow as tf
from absl import flags

from benchmarks import common
from lbgap_tf import distribute, results, train
from lbgap_tf.train.network import build_model

FLAGS = flags.FLAGS
METHODS = ("fit", "fit_spe10", "fit_jit", "train", "train_default", "train_jit")

common.define_model_data_flags()
common.define_distribution_flags()
common.define_output_flags()
flags.adopt_module_key_flags(common)  # --helpshort lists the shared flags too.
flags.DEFINE_list("methods", ["fit", "fit_spe10", "train"], f"Subset of {', '.join(METHODS)}.")
flags.DEFINE_list("regimes", ["SB", "LB"], "Regimes to measure (SB: 256, LB: --lb_fraction).")
flags.DEFINE_float("lb_fraction", train.PAPER_LB_FRACTION, "LB batch fraction.")
flags.DEFINE_integer("timed_epochs", 1, "Timed epochs per round (after one warm-up epoch).")
flags.DEFINE_integer("rounds", 3, "Rounds; each measures every method once, in turn.")
flags.DEFINE_integer("steps_per_call", 100, "Training steps per call of the train loop.")
flags.register_validator(
    "methods", lambda methods: set(methods) <= set(METHODS),
    message=f"--methods takes a subset of {', '.join(METHODS)}")
flags.register_validator("regimes", lambda regimes: set(regimes) <= set(train.REGIMES),
                         message="--regimes takes a subset of SB, LB")
flags.register_validator("timed_epochs", lambda n: n >= 1,
                         message="--timed_epochs must be at least 1")
flags.register_validator("rounds", lambda n: n >= 1, message="--rounds must be at least 1")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB.


def _fit_rates(method, config, train_data, batch_size):
    """Epoch rates of plain ``model.fit`` on the same arrays, and its startup time."""
    keras.utils.set_random_seed(config.seed)
    began = time.perf_counter()
    model = build_model(config, train_data.info)  # Under --precision, as the train methods.
    # Keras wraps the optimizer for loss scaling when the model computes in mixed_float16.
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate,
                                                  epsilon=config.adam_epsilon),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], steps_per_execution=10 if method == "fit_spe10" else 1,
                  jit_compile=method == "fit_jit")
    x, y = train_data.features, train_data.labels

    def epoch():
        start, cpu_start = time.perf_counter(), time.process_time()
        model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=True, verbose=0)
        return (len(x) / (time.perf_counter() - start),
                len(x) / (time.process_time() - cpu_start))

    epoch()
    startup = time.perf_counter() - began
    rates = [epoch() for _ in range(FLAGS.timed_epochs)]
    return [wall for wall, _ in rates], [cpu for _, cpu in rates], startup


def _train_rates(config, train_data, test_data, strategy):
    """Epoch rates of ``lbgap_tf.train`` (its first epoch is the warm-up), and startup."""
    with tempfile.TemporaryDirectory() as run_dir:
        result = train.train(config, train_data, test_data, run_dir=run_dir,
                             strategy=strategy, quiet=True)
    rates = [row["examples_per_s"] for row in result.history[1:]]
    cpu_rates = [row["examples"] / row["epoch_cpu_s"] for row in result.history[1:]]
    startup = result.startup_s + result.history[0]["epoch_time_s"]
    return rates, cpu_rates, startup


def _measure(method, config, train_data, test_data, strategy):
    if method == "train":
        return _train_rates(config, train_data, test_data, strategy)
    if method.startswith("train_"):
        config = dataclasses.replace(config, jit_compile=method == "train_jit")
        return _train_rates(config, train_data, test_data, tf.distribute.get_strategy())
    return _fit_rates(method, config, train_data, config.batch_size)


def main(argv):
    del argv
    strategy = common.strategy()
    description = distribute.describe(strategy)
    base = train.TrainConfig(
        model=FLAGS.model, dataset=FLAGS.dataset, synthetic=common.synthetic_spec(),
        seed=FLAGS.seed, epochs=FLAGS.timed_epochs + 1, lb_fraction=FLAGS.lb_fraction,
        steps_per_call=FLAGS.steps_per_call, precision=FLAGS.precision, deterministic=False)
    train_data, test_data = train.load_data(base, **common.data_dirs())
    provenance = results.provenance(strategy)
    for regime in FLAGS.regimes:
        config = train.resolve(dataclasses.replace(base, regime=regime),
                               train_data.info.num_examples, strategy.num_replicas_in_sync)
        measured = {method: ([], [], [], []) for method in FLAGS.methods}
        for _ in range(FLAGS.rounds):  # Rounds interleave the methods under the same load.
            for method in FLAGS.methods:
                rates, cpu_rates, startup = _measure(method, config, train_data, test_data,
                                                     strategy)
                measured[method][0].extend(rates)
                measured[method][1].extend(cpu_rates)
                measured[method][2].append(startup)
                measured[method][3].append(os.getloadavg()[0])
        for method, (rates, cpu_rates, startups, loads) in measured.items():
            replicas = description["replicas"] if method == "train" else 1
            mean, std = results.mean_std(rates)
            cpu_mean, _ = results.mean_std(cpu_rates)
            load = max(loads)
            row = {
                "model": config.model, "dataset": config.dataset, "regime": regime,
                "global_batch_size": config.batch_size, "method": method,
                "strategy": description["strategy"] if replicas > 1 else "default",
                "replicas": replicas, "examples_per_s_mean": round(mean, 1),
                "examples_per_s_std": round(std, 1),
                "examples_per_cpu_s": round(cpu_mean, 1), "timed_epochs": len(rates),
                "startup_s": round(min(startups), 2), "peak_rss_mb": round(_peak_rss_mb(), 1),
                "max_load_average_1min": round(load, 2), "precision": config.precision,
                "jit": method.endswith("jit"), "device_kind": description["device_kind"],
                "tf_version": provenance["tf_version"],
                "keras_version": provenance["keras_version"],
                "git_revision": provenance["git_revision"],
                "nondefault_flags": common.nondefault_flags(),
            }
            results.append_row(os.path.join(FLAGS.output_dir, "throughput.csv"), row)
            print(f"{config.model} {regime} (batch {config.batch_size}) {method:>9} "
                  f"x{replicas}: {mean:8.0f} ± {std:6.0f} examples/s ({cpu_mean:6.0f} per "
                  f"CPU-s), startup {min(startups):5.1f} s, peak RSS {_peak_rss_mb():6.0f} MB "
                  f"(load <= {load:.2f})", flush=True)


if __name__ == "__main__":
    common.run(main)
