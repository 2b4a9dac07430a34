"""The process that runs one trial of one setup (started by ``setups.run``)::

    python -m lbgap_tf.experiments.setup_worker SETUP_DIR/spec.json SETUP_DIR

It applies the setup's process-wide settings before TensorFlow creates its context (visible
GPUs, the logical-CPU split), builds the strategy, runs the gap experiment of the spec (one
trial: SB and LB from the seed's x0, distances, sharpness) into SETUP_DIR, and appends its
process record to ``SETUP_DIR/processes.csv``: peak resident memory of the process, the
devices' peak memory where TensorFlow reports it (GPU, TPU; not the CPU), the stage times and
the machine load.

Sharpness under mixed precision. The box of Metric 2.1 moves weights by 5e-4 to 1e-3 of
their size, below bfloat16's resolution (2^-8 ~ 3.9e-3 relative) and near float16's: a
network COMPUTING in those types rounds most of the perturbation away and looks flatter than
it is. So the gap experiment always measures sharpness on a float32 copy of the trained
weights (``gap``; the sharpness row's ``precision`` column says float32). To show what the
rounding would do, a worker of a mixed-precision setup ALSO measures the full-space sharpness
of each run in the run's own dtype policy and writes those rows to ``sharpness_native.csv``
(same columns; ``precision`` is the policy); the setups table shows them beside the float32
values and never uses them for a verdict.

Errors end the process with one line "setup_worker: error: ..." on stderr and exit status 1.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

PROCESSES_FILE = "processes.csv"
NATIVE_SHARPNESS_FILE = "sharpness_native.csv"
PROCESS_COLUMNS = (
    "setup", "seed", "main_started_at", "process_wall_s", "peak_rss_mb", "device_peak_mb",
    "data_s", "training_s", "distances_s", "sharpness_s", "native_sharpness_s",
    "load_average_1min", "isolation", "finished_at",
)


def _apply_process_settings(spec: dict) -> None:
    """Device visibility and the CPU split: process-wide, before any TensorFlow op."""
    import tensorflow as tf

    from lbgap_tf import distribute

    if spec["hide_gpus"]:
        tf.config.set_visible_devices([], "GPU")
    elif spec["gpus"]:
        gpus = tf.config.list_physical_devices("GPU")
        tf.config.set_visible_devices(gpus[:spec["gpus"]], "GPU")
    if spec["cpu_devices"]:
        distribute.split_cpu(spec["cpu_devices"])


def _strategy(spec: dict):
    from lbgap_tf import distribute
    from lbgap_tf.experiments import setups

    setup = setups.parse_setup(spec["setup"])
    return distribute.get_strategy(setup.strategy, cpu_devices=spec["cpu_devices"],
                                   tpu_address=spec["tpu_address"])


def _device_peak_mb(strategy) -> float | None:
    """The largest peak allocation over the replica devices (MB), None on CPUs, where
    TensorFlow does not report device memory."""
    import tensorflow as tf

    try:
        devices = strategy.extended.worker_devices
    except RuntimeError:  # The default strategy: TensorFlow's first device.
        devices = [device.name for device in tf.config.list_logical_devices()[:1]]
    peaks = []
    for device in devices:
        name = device.split("device:")[-1]
        if not name.startswith(("GPU", "TPU")):
            continue
        try:
            peaks.append(tf.config.experimental.get_memory_info(name)["peak"] / 2**20)
        except (ValueError, tf.errors.OpError):
            continue
    return round(max(peaks), 1) if peaks else None


def _native_sharpness(outcome, experiment, strategy, train_data, directory, nondefault_flags
                      ) -> None:
    """Full-space sharpness of each mixed-precision run in its own dtype policy (see the
    module docstring), appended to ``sharpness_native.csv``; measured ones are skipped."""
    import keras

    from lbgap_tf import distribute, results, sharpness, sharpness_rows

    plan = experiment.sharpness
    path = os.path.join(directory, NATIVE_SHARPNESS_FILE)
    finished = sharpness_rows.finished_keys(results.read_rows(path))
    num_train = train_data.info.num_examples
    eval_examples = min(plan.eval_examples or num_train, num_train)
    eval_batch = min(plan.eval_batch_size, eval_examples)
    for run_row in outcome.run_rows:
        if run_row["precision"] == "float32":
            continue
        seed = int(run_row["seed"])
        eval_seed = sharpness_rows.subset_seed(eval_examples, num_train, seed)
        for solver in plan.solvers:
            missing = [eps for eps in plan.epsilons if sharpness_rows.measurement_key(
                run_row["run_id"], subspace_dim=None, subspace_seed=seed, epsilon=eps,
                solver=solver, max_iter=plan.max_iter, eval_examples=eval_examples,
                eval_seed=eval_seed, eval_batch_size=eval_batch) not in finished]
            if not missing:
                continue
            with strategy.scope():
                model = keras.models.load_model(
                    os.path.join(directory, "runs", run_row["run_id"], "model.keras"),
                    compile=False)
            problem = sharpness.SharpnessProblem(
                model, train_data.features, train_data.labels, eval_batch_size=eval_batch,
                eval_examples=None if eval_examples == num_train else eval_examples,
                subset_seed=seed, strategy=strategy)
            for result in problem.measure(missing, solver=solver, max_iter=plan.max_iter,
                                          seed=seed):
                row = sharpness_rows.sharpness_row(
                    result, run_row, benchmark="setups", strategy=distribute.describe(strategy),
                    precision=run_row["precision"], eval_seed=eval_seed,
                    nondefault_flags=nondefault_flags)
                sharpness_rows.append(path, row)


def run_setup(spec: dict, directory: str, *, strategy, isolation: str,
              main_started_at: float) -> None:
    """One trial of one setup into ``directory`` (see the module docstring)."""
    from lbgap_tf import gap, results, train
    from lbgap_tf.experiments import setups

    experiment = setups.gap_config_from_dict(spec["experiment"])
    began = time.perf_counter()
    load_before = os.getloadavg()[0]
    outcome = gap.run(experiment, output_dir=directory, strategy=strategy,
                      data_dirs=spec["data_dirs"], quiet=spec["quiet"],
                      nondefault_flags=spec["nondefault_flags"],
                      checkpoint_every_s=spec["checkpoint_every_s"])
    native_began = time.perf_counter()
    if any(row["precision"] != "float32" for row in outcome.run_rows):
        train_data, _ = train.load_data(
            train.TrainConfig(model=experiment.models[0], dataset=experiment.sb.dataset,
                              synthetic=experiment.sb.synthetic), **spec["data_dirs"])
        _native_sharpness(outcome, experiment, strategy, train_data, directory,
                          spec["nondefault_flags"])
    native_s = time.perf_counter() - native_began
    stages = outcome.stage_seconds
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB.
    record = {
        "setup": spec["setup"], "seed": experiment.first_seed,
        "main_started_at": round(main_started_at, 3),
        "process_wall_s": round(time.perf_counter() - began, 3),
        "peak_rss_mb": round(peak_rss, 1) if isolation == "process" else None,
        "device_peak_mb": _device_peak_mb(strategy),
        "data_s": round(stages.get("data", 0.0), 3),
        "training_s": round(stages.get("training", 0.0), 3),
        "distances_s": round(stages.get("distances", 0.0), 3),
        "sharpness_s": round(stages.get("sharpness", 0.0), 3),
        "native_sharpness_s": round(native_s, 3),
        "load_average_1min": round(max(load_before, os.getloadavg()[0]), 2),
        "isolation": isolation,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    results.append_row(os.path.join(directory, PROCESSES_FILE), record)


def process_record(directory: str, seed: int) -> dict | None:
    """The latest process record of ``seed`` in a setup folder (None if there is none)."""
    from lbgap_tf import results

    rows = [row for row in results.read_rows(os.path.join(directory, PROCESSES_FILE))
            if int(row["seed"]) == seed]
    return rows[-1] if rows else None


def run_inline(spec: dict, directory: str) -> str | None:
    """``run_setup`` in this process (no process-wide settings are applied: the setup must
    fit this process's devices). Returns the error line, None on success."""
    try:
        strategy = _strategy(spec)
        run_setup(spec, directory, strategy=strategy, isolation="inline",
                  main_started_at=time.time())
    except ValueError as error:
        return " ".join(str(error).split())
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        sys.stderr.write("usage: python -m lbgap_tf.experiments.setup_worker SPEC DIR\n")
        return 2
    with open(argv[1], encoding="utf-8") as handle:
        spec = json.load(handle)
    try:
        _apply_process_settings(spec)  # Imports TensorFlow: the process's start ends here.
        main_started_at = time.time()
        from absl import logging

        logging.set_verbosity(logging.WARNING if spec["quiet"] else logging.INFO)
        strategy = _strategy(spec)
        run_setup(spec, argv[2], strategy=strategy, isolation="process",
                  main_started_at=main_started_at)
    except ValueError as error:
        sys.stderr.write(f"setup_worker: error: {' '.join(str(error).split())}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
