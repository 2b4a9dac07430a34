"""Accelerator setups: one generalization-gap experiment run under several setups, from the
same x0 and data order, each setup in a process of its own.

A setup is written ``STRATEGY[:REPLICAS][@DEVICE]/PRECISION[/xla]``::

    default/float32            TensorFlow's default strategy, one replica, float32
    default/float32/xla        the same with XLA-compiled training steps
    default/mixed_bfloat16     Keras' mixed_bfloat16 dtype policy
    mirrored:2/float32         MirroredStrategy over 2 replicas (2 GPUs, else 2 logical CPUs)
    mirrored:4@gpu/mixed_float16   4 GPUs, skipped on a machine with fewer
    one_device@gpu/float32     one GPU, skipped on a machine without one

- STRATEGY is one of ``distribute.STRATEGIES``;
- REPLICAS (``mirrored`` only) is the replica count; without it ``mirrored`` takes every GPU,
  else one CPU device. ``default`` and ``one_device`` run one replica, ``tpu`` takes its
  count from the TPU, ``multi_worker_mirrored:N`` means N worker processes;
- DEVICE is ``cpu``, ``gpu`` or ``tpu``; without it the setup runs on the GPUs when the machine
  has any, else on the CPU (``tpu`` always on the TPU);
- PRECISION is a Keras dtype policy of ``train.PRECISIONS``;
- ``/xla`` XLA-compiles the training steps (single-replica setups; a TPU always compiles).

``parse_setups`` checks the grammar; ``check_batches`` checks that every setup's replica count
divides both global batches; ``skip_reason`` says why this machine cannot run a setup (no GPU,
no TPU, a multi-worker cluster), which the runner reports instead of failing.

Why a process per setup: the logical-CPU split, the visible devices and op determinism are
process-wide in TensorFlow and fixed once its context exists, and peak memory is a property of
a process. So ``run`` starts, for every trial and setup, ``python -m
lbgap_tf.experiments.setup_worker SPEC`` (see that module), round-robin over the setups trial by
trial, so that a change of machine load during the comparison is shared by every setup rather
than falling on the last one. ``isolation="inline"`` runs the same work in this process
(tests, debugging): only for setups that fit this process's devices, without per-setup memory.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence

from lbgap_tf import data, distribute, gap, results, tables, train
from lbgap_tf.experiments import setup_worker
from lbgap_tf.train.x0 import weights_digest

DEVICES = ("cpu", "gpu", "tpu")
SINGLE_REPLICA_STRATEGIES = ("default", "one_device")
XLA = "xla"
ISOLATIONS = ("process", "inline")
SPEC_FILE = "spec.json"
SETUP_RUNS_FILE = "setup_runs.csv"
# The worker's own log lines (gap stages, epochs, run ends), passed on as progress.
PROGRESS_MARKERS = re.compile(
    r"(\] |INFO:absl:)(\[gap |epoch \d+/)|finished after|sharpness .* evals")
WORK_STAGES = ("training_s", "distances_s", "sharpness_s", "native_sharpness_s")
SYNTAX = "STRATEGY[:REPLICAS][@DEVICE]/PRECISION[/xla], e.g. mirrored:2/float32"


class SetupError(ValueError):
    """A setup is not valid; the message names the setup, the problem and the fix."""


@dataclasses.dataclass(frozen=True)
class Setup:
    """One accelerator setup (see the module docstring for its text form).

    Attributes:
      strategy: a ``distribute.STRATEGIES`` name.
      replicas: the replica count asked for (worker count for multi_worker_mirrored), or None
        for the strategy's own (``mirrored``: every GPU, else one CPU device).
      device: "cpu", "gpu", "tpu" or None (GPUs when the machine has any, else the CPU).
      precision: Keras dtype policy, one of ``train.PRECISIONS``.
      xla: XLA-compile the training steps.
    """

    strategy: str
    replicas: int | None
    device: str | None
    precision: str
    xla: bool

    @property
    def name(self) -> str:
        """The canonical text form, e.g. "mirrored:2/float32"."""
        text = self.strategy
        if self.replicas is not None:
            text += f":{self.replicas}"
        if self.device is not None:
            text += f"@{self.device}"
        text += f"/{self.precision}"
        return text + ("/xla" if self.xla else "")

    @property
    def slug(self) -> str:
        """A file-name form of ``name``, e.g. "mirrored-2_float32_xla"."""
        return self.name.replace(":", "-").replace("@", "-at-").replace("/", "_")


def parse_setup(text: str) -> Setup:
    """The ``Setup`` of ``text``; raises ``SetupError`` naming what is wrong and the fix."""
    original = text
    text = text.strip()
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise SetupError(f"setup {original!r} is not of the form {SYNTAX}")
    head, precision = parts[0], parts[1]
    xla = len(parts) == 3
    if xla and parts[2] != XLA:
        raise SetupError(f"setup {original!r}: unknown option {parts[2]!r} after the precision: "
                         f"the only option is '/xla' ({SYNTAX})")
    device = None
    if "@" in head:
        head, device = head.split("@", 1)
        if device not in DEVICES:
            raise SetupError(f"setup {original!r}: unknown device {device!r}: choose one of "
                             f"{', '.join(DEVICES)}")
    replicas = None
    if ":" in head:
        head, count = head.split(":", 1)
        if not count.isdigit() or int(count) < 1:
            raise SetupError(f"setup {original!r}: the replica count {count!r} must be a "
                             "positive integer, e.g. mirrored:2/float32")
        replicas = int(count)
    strategy = head
    if strategy not in distribute.STRATEGIES:
        raise SetupError(f"setup {original!r}: unknown strategy {strategy!r}: choose one of "
                         f"{', '.join(distribute.STRATEGIES)}")
    if precision not in train.PRECISIONS:
        raise SetupError(f"setup {original!r}: unknown precision {precision!r}: choose one of "
                         f"{', '.join(train.PRECISIONS)}")
    if strategy in SINGLE_REPLICA_STRATEGIES and replicas not in (None, 1):
        raise SetupError(f"setup {original!r}: strategy {strategy} runs one replica: drop "
                         f":{replicas}, or use mirrored:{replicas}/{precision} for "
                         f"{replicas} replicas")
    if strategy == "tpu":
        if replicas is not None:
            raise SetupError(f"setup {original!r}: a TPU strategy takes its replica count "
                             "from the TPU: drop the replica count")
        if device not in (None, "tpu"):
            raise SetupError(f"setup {original!r}: the tpu strategy runs on a TPU: drop "
                             f"@{device}")
        if xla:
            raise SetupError(f"setup {original!r}: a TPU always compiles with XLA: drop /xla")
    elif device == "tpu":
        raise SetupError(f"setup {original!r}: a TPU needs the tpu strategy: write "
                         f"tpu/{precision}")
    if xla and strategy not in SINGLE_REPLICA_STRATEGIES \
            and not (strategy == "mirrored" and replicas == 1):
        raise SetupError(
            f"setup {original!r}: XLA-compiled training supports single-replica strategies "
            f"only, not {strategy}" + (f":{replicas}" if replicas else "")
            + f": drop /xla, or use default/{precision}/xla")
    return Setup(strategy=strategy, replicas=replicas, device=device, precision=precision,
                 xla=xla)


def parse_setups(texts: Sequence[str]) -> tuple[Setup, ...]:
    """Every setup of ``texts``; raises ``SetupError`` listing EVERY bad one, a line each.

    At least two setups are needed (the first is the reference), and none may repeat.
    """
    setups, errors = [], []
    for text in texts:
        try:
            setups.append(parse_setup(text))
        except SetupError as error:
            errors.append(str(error))
    names = [setup.name for setup in setups]
    errors += [f"setup {name!r} is given twice: list each setup once"
               for name in sorted({n for n in names if names.count(n) > 1})]
    if not errors and len(setups) < 2:
        errors.append(f"give at least two setups to compare, got {len(setups)}: e.g. "
                      "--setups=default/float32,default/float32/xla")
    if errors:
        raise SetupError("\n".join(errors))
    return tuple(setups)


def check_batches(setups: Sequence[Setup], batch_sizes: dict[str, int]) -> None:
    """Raises ``SetupError`` (a line per bad setup) when a setup's replica count does not
    divide a regime's GLOBAL batch (``batch_sizes``: regime -> global batch)."""
    errors = []
    for setup in setups:
        replicas = setup.replicas or 1
        if setup.strategy == "multi_worker_mirrored":
            continue  # One replica per worker on the CPU; the GPUs per worker are unknown here.
        bad = {regime: batch for regime, batch in batch_sizes.items() if batch % replicas}
        if bad:
            batches = ", ".join(f"{regime} {batch}" for regime, batch in bad.items())
            errors.append(f"setup {setup.name!r}: {replicas} replicas do not divide the global "
                          f"batch ({batches}): choose a replica count that divides "
                          f"{' and '.join(str(b) for b in batch_sizes.values())}")
    if errors:
        raise SetupError("\n".join(errors))


@dataclasses.dataclass(frozen=True)
class Machine:
    """What this machine offers: GPU count and whether a TPU is reachable."""

    gpus: int
    tpu: bool

    @classmethod
    def detect(cls, tpu_address: str | None = None) -> Machine:
        """Lists the physical devices (no TensorFlow context is created)."""
        import tensorflow as tf

        tpu = bool(tpu_address) or bool(tf.config.list_physical_devices("TPU"))
        return cls(gpus=len(tf.config.list_physical_devices("GPU")), tpu=tpu)


def skip_reason(setup: Setup, machine: Machine) -> str | None:
    """Why this machine cannot run ``setup`` (None when it can)."""
    if setup.strategy == "tpu":
        return None if machine.tpu else "no TPU on this machine (pass --tpu_address to use one)"
    if setup.strategy == "multi_worker_mirrored" and (setup.replicas or 1) > 1:
        return (f"{setup.replicas} workers need a cluster (one process per worker, TF_CONFIG): "
                "run benchmarks.gap on every worker and merge the folders with "
                "benchmarks.compare")
    if setup.device == "gpu":
        wanted = setup.replicas or 1
        if machine.gpus < wanted:
            have = "no GPU" if not machine.gpus else f"{machine.gpus} GPU(s)"
            return f"needs {wanted} GPU(s), this machine has {have}"
    if setup.device is None and machine.gpus and setup.replicas \
            and setup.replicas > machine.gpus:
        return (f"needs {setup.replicas} GPUs, this machine has {machine.gpus} GPU(s) "
                "(write @cpu to split the CPU instead)")
    return None


def on_gpu(setup: Setup, machine: Machine) -> bool:
    """Whether ``setup`` runs on GPUs on ``machine``."""
    if setup.strategy == "tpu" or setup.device == "cpu":
        return False
    return setup.device == "gpu" or machine.gpus > 0


def cpu_devices(setup: Setup, machine: Machine) -> int | None:
    """The logical CPU devices the setup's process splits the CPU into (None: no split)."""
    if setup.strategy == "mirrored" and not on_gpu(setup, machine):
        return setup.replicas or 1
    return None


# --- the runner ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SetupsConfig:
    """One comparison: the gap experiment of ONE network under each setup.

    ``experiment``'s SB/LB settings are shared by every setup; each setup replaces their
    precision and jit_compile. The first setup is the reference of the comparison.
    """

    experiment: gap.GapConfig
    setups: tuple[Setup, ...]

    def __post_init__(self):
        if len(self.experiment.models) != 1:
            raise SetupError(f"a setups comparison takes one network, got "
                             f"{list(self.experiment.models)}: pass one --models")
        if len(self.setups) < 2:
            raise SetupError("a setups comparison needs at least two setups")

    @property
    def reference(self) -> Setup:
        return self.setups[0]

    def experiment_for(self, setup: Setup) -> gap.GapConfig:
        """The gap experiment under ``setup`` (its precision and XLA setting)."""
        regimes = {name: dataclasses.replace(getattr(self.experiment, name),
                                             precision=setup.precision, jit_compile=setup.xla)
                   for name in ("sb", "lb")}
        return dataclasses.replace(self.experiment, **regimes)


@dataclasses.dataclass(frozen=True)
class SetupStatus:
    """How one setup went: "ran" (its folder holds the results), "skipped" or "failed"."""

    setup: Setup
    status: str
    reason: str
    directory: str


@dataclasses.dataclass(frozen=True)
class SetupsOutcome:
    """What ``run`` did: each setup's status, its wall time, and where the time went: the
    workers' training and measuring (``work_s``) and their start (interpreter and TensorFlow
    import, ``process_start_s``), each summed over the worker processes of this call."""

    statuses: tuple[SetupStatus, ...]
    wall_time_s: float
    work_s: float
    process_start_s: float


def setup_directory(output_dir: str, setup: Setup) -> str:
    return os.path.join(output_dir, setup.slug)


def run(config: SetupsConfig, *, output_dir: str, machine: Machine,
        data_dirs: dict | None = None, tpu_address: str | None = None,
        isolation: str = "process", quiet: bool = False, nondefault_flags: str = "",
        checkpoint_every_s: float = 0.0, log=print) -> SetupsOutcome:
    """Runs every runnable setup's trials round-robin (trial 1 of every setup, then trial 2
    ...) into ``output_dir/<setup slug>/`` and appends one ``setup_runs.csv`` row per (setup,
    run) as its process finishes. A rerun repeats nothing finished (each worker resumes its gap
    experiment). A setup whose worker fails is reported as failed with its error line; the
    others go on.
    """
    if isolation not in ISOLATIONS:
        raise SetupError(f"unknown isolation {isolation!r}: choose one of {', '.join(ISOLATIONS)}")
    started = time.perf_counter()
    statuses, runnable = {}, []
    for setup in config.setups:
        reason = skip_reason(setup, machine)
        directory = setup_directory(output_dir, setup)
        if reason:
            statuses[setup] = SetupStatus(setup, "skipped", reason, directory)
            log(f"setup {setup.name}: skipped, {reason}")
        else:
            runnable.append(setup)
    if config.reference not in runnable:
        raise SetupError(f"the reference setup {config.reference.name!r} cannot run here "
                         f"({statuses[config.reference].reason}): put a setup this machine "
                         "runs first")
    process_start_s = work_s = 0.0
    seeds = list(config.experiment.seeds)
    total = len(seeds) * len(runnable)
    done = 0
    for seed in seeds:
        for setup in runnable:
            if setup in statuses:  # Failed on an earlier trial.
                continue
            done += 1
            directory = setup_directory(output_dir, setup)
            spec = _spec(config, setup, seed, machine, data_dirs or {}, tpu_address, quiet,
                         nondefault_flags, checkpoint_every_s)
            elapsed = time.perf_counter() - started
            eta = f", ETA {elapsed / (done - 1) * (total - done + 1) / 60:.1f} min" \
                if done > 1 else ""
            log(f"[setups {done}/{total}, {elapsed / 60:.1f} min elapsed{eta}] {setup.name}, "
                f"seed {seed}")
            spawned = time.time()
            if isolation == "inline":
                error = setup_worker.run_inline(spec, directory)
            else:
                error = _run_process(spec, directory)
            if error:
                statuses[setup] = SetupStatus(setup, "failed", error, directory)
                log(f"setup {setup.name}: failed, {error}")
                continue
            record = _append_rows(output_dir, directory, setup, seed)
            work_s += sum(float(record[stage]) for stage in WORK_STAGES)
            if isolation == "process":
                process_start_s += max(0.0, float(record["main_started_at"]) - spawned)
    for setup in runnable:
        statuses.setdefault(setup, SetupStatus(setup, "ran", "",
                                               setup_directory(output_dir, setup)))
    ordered = tuple(statuses[setup] for setup in config.setups)
    return SetupsOutcome(ordered, time.perf_counter() - started, work_s, process_start_s)


def _spec(config, setup, seed, machine, data_dirs, tpu_address, quiet, nondefault_flags,
          checkpoint_every_s):
    experiment = dataclasses.replace(config.experiment_for(setup), trials=1, first_seed=seed)
    return {
        "setup": setup.name,
        "experiment": gap_config_to_dict(experiment),
        "cpu_devices": cpu_devices(setup, machine),
        "hide_gpus": not on_gpu(setup, machine) and machine.gpus > 0,
        "gpus": setup.replicas if on_gpu(setup, machine) else None,
        "tpu_address": tpu_address,
        "data_dirs": data_dirs,
        "quiet": quiet,
        "nondefault_flags": nondefault_flags,
        "checkpoint_every_s": checkpoint_every_s,
    }


def _run_process(spec: dict, directory: str) -> str | None:
    """Runs one worker process on ``spec``, passing its progress lines on as they come;
    returns its error line, None on success."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, SPEC_FILE)
    tables.write_text_atomic(path, json.dumps(spec, indent=2, sort_keys=True) + "\n")
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")]))
    last_lines = collections.deque(maxlen=50)
    with subprocess.Popen(
            [sys.executable, "-m", "lbgap_tf.experiments.setup_worker", path, directory],
            stderr=subprocess.PIPE, text=True, env=env) as process:
        for line in process.stderr:
            last_lines.append(line.rstrip())
            if not spec["quiet"] and PROGRESS_MARKERS.search(line):
                sys.stderr.write(line)
                sys.stderr.flush()
    if process.returncode == 0:
        return None
    lines = [line for line in last_lines if line.strip()]
    errors = [line for line in lines if "error:" in line]
    return (errors or lines or [f"exit status {process.returncode}"])[-1].strip()


# --- rows --------------------------------------------------------------------------------------

SETUP_RUN_COLUMNS = (
    "setup", "setup_seed", "run_id", "model", "dataset", "regime", "seed",
    "global_batch_size", "replicas", "strategy", "device_kind", "precision", "jit",
    "epochs_run", "train_accuracy", "test_accuracy", "examples_per_s", "startup_s",
    "wall_time_s", "x0_sha256", "peak_rss_mb", "device_peak_mb", "training_s", "sharpness_s",
    "process_wall_s", "load_average_1min", "tf_version", "keras_version", "git_revision",
    "hostname", "finished_at",
)


def _append_rows(output_dir: str, directory: str, setup: Setup, seed: int) -> dict:
    """Appends this (setup, seed)'s run rows to ``setup_runs.csv`` unless there already;
    returns the worker's process record of the seed."""
    record = setup_worker.process_record(directory, seed)
    if record is None:
        raise SetupError(f"the worker of setup {setup.name!r}, seed {seed} left no process "
                         f"record in {directory}: see its log above")
    path = os.path.join(output_dir, SETUP_RUNS_FILE)
    present = {(row["setup"], row["run_id"]) for row in results.read_rows(path)}
    for run in results.read_rows(os.path.join(directory, gap.RUNS_FILE)):
        if int(run["seed"]) != seed or (setup.name, run["run_id"]) in present:
            continue
        x0 = train.load_x0(os.path.join(directory, "runs", run["run_id"], train.X0_FILE))
        row = {
            "setup": setup.name, "setup_seed": seed, "x0_sha256": weights_digest(x0),
            **{column: run[column] for column in SETUP_RUN_COLUMNS if column in run},
            **{column: record.get(column) for column in (
                "peak_rss_mb", "device_peak_mb", "training_s", "sharpness_s",
                "process_wall_s", "load_average_1min")},
        }
        results.append_row(path, {column: row.get(column) for column in SETUP_RUN_COLUMNS})
    return record


# --- configs as JSON (the worker's spec) ------------------------------------------------------

def gap_config_to_dict(config: gap.GapConfig) -> dict:
    """``config`` as JSON-ready data; ``gap_config_from_dict`` inverts it."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def gap_config_from_dict(value: dict) -> gap.GapConfig:
    """The ``GapConfig`` of ``gap_config_to_dict``'s data."""

    def tuples(value):  # JSON has no tuples (batch_schedule nests them).
        return tuple(tuples(v) for v in value) if isinstance(value, list) else value

    def train_config(item):
        item = {key: tuples(value) for key, value in item.items()}
        if item.get("synthetic") is not None:
            spec = dict(item["synthetic"])
            spec["input_shape"] = tuple(spec["input_shape"])
            item["synthetic"] = data.SyntheticSpec(**spec)
        return train.TrainConfig(**item)

    plan = {key: tuple(items) if isinstance(items, list) else items
            for key, items in value["sharpness"].items()}
    return gap.GapConfig(models=tuple(value["models"]), sb=train_config(value["sb"]),
                         lb=train_config(value["lb"]), trials=value["trials"],
                         first_seed=value["first_seed"], sharpness=gap.SharpnessPlan(**plan))
