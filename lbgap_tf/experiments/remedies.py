"""Remedies for the generalization gap compared from the same x0 (``benchmarks.remedies``).

For each network and trial (seed ``first_seed + trial``): the plain SB run (x0 drawn from the
seed and saved), the plain LB run from the SAME x0, and for each remedy of the list the LB run
with that remedy from that x0 too (augmentation also retrains SB with augmentation, the
paper's protocol, and the remedy's gap is taken against that SB). Every run's final weights
get full-space sharpness (Metric 2.1) for each epsilon and solver of the plan. Runs live in
the gap benchmark's layout (``runs.csv``, ``runs/<run_id>/``, ``sharpness.csv``), so the plain
SB and LB runs of a ``benchmarks.gap`` output folder with the same settings are reused, and
one ``remedies.csv`` row per (network, trial, remedy) records the comparison: accuracies,
the SB - LB test gap, the fraction of the plain gap the remedy closes, epochs and updates
used, and wall time. A rerun repeats nothing finished; an interrupted run resumes.

Remedy grammar (``parse_remedy``): a remedy is one or more components joined by ``+``, each
``NAME`` or ``NAME:KEY=VALUE:KEY=VALUE``, e.g. ``sqrt_lr:warmup=2``, ``ghost_bn:ghost=250``,
``sqrt_lr+ghost_bn+adapt`` (Hoffer et al.'s recipe) or ``grow:schedule=5@1024/10@6000``.
The components (``COMPONENTS``) and what they set on the LB run:

  plain         nothing: the plain LB run (always compared; listed or not)
  augment       ``augment``: flips, rotations up to 10 degrees, translations up to 0.2 of the
                image size; SB is trained augmented too. Image networks only: F1/F2 take flat
                vectors, so ``augment`` on them is refused (the CPU preset leaves it out).
  linear_lr     ``lr_scaling="linear"`` relative to the SB batch; ``warmup`` epochs (0)
  sqrt_lr       ``lr_scaling="sqrt"`` relative to the SB batch; ``warmup`` epochs (0)
  ghost_bn      ``ghost_batch``: ``ghost`` examples (default: the largest divisor of the
                per-replica LB batch not above the SB batch, e.g. 250 for 6000)
  adapt         ``regime_adaptation``: as many updates as SB's epochs of SB's batch
  grow          ``batch_schedule`` from the SB batch: ``schedule=E@B/E@B`` (default: the SB
                batch for the first quarter of the LB epochs, then the LB batch)
  conservative  Li et al.'s proximal step: ``lambda`` (1e-3), ``iterations`` (3)
  adversarial   FGSM inputs (Goodfellow et al.): ``eps``
  sam, asam     sharpness-aware minimization: ``rho`` (0.05); asam also ``eta``

The step remedies (conservative, adversarial, sam, asam) set the training step's
``TrainConfig.step_remedy`` and its parameters (``lbgap_tf.train.remedies``); a remedy takes
at most one of them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence

import tensorflow as tf

from lbgap_tf import data, gap, models, results, train
from lbgap_tf.experiments import common

REMEDIES_FILE = "remedies.csv"
BENCHMARK = "remedies"
PLAIN = "plain"

REMEDY_COLUMNS = (
    "experiment_id", "model", "dataset", "trial", "seed", "remedy", "lb_settings",
    "sb_run_id", "plain_lb_run_id", "lb_run_id", "sb_train_accuracy", "sb_test_accuracy",
    "lb_train_accuracy", "lb_test_accuracy", "plain_gap_pp", "gap_pp", "gap_closed",
    "lb_epochs", "lb_updates", "lb_last_batch", "lb_wall_time_s", "strategy", "replicas",
    "device_kind", "tf_version", "keras_version", "git_revision", "hostname", "finished_at",
    "nondefault_flags",
)


class RemedyError(ValueError):
    """A remedy list that cannot be run; the message names the problem and the fix."""


@dataclasses.dataclass(frozen=True)
class _Context:
    """What a component needs to know: the resolved SB and LB settings."""

    sb_batch: int
    lb_batch: int
    replicas: int
    sb_epochs: int
    lb_epochs: int


def _int(name: str, text: str) -> int:
    if not text.isdigit() or int(text) < 0:
        raise RemedyError(f"remedy parameter {name}={text!r} must be an integer >= 0")
    return int(text)


def _float(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0:
        raise RemedyError(f"remedy parameter {name}={text!r} must be a number >= 0")
    return value


def _lr(rule: str):
    def apply(params, context):
        return {"lr_scaling": rule, "reference_batch": context.sb_batch,
                "warmup_epochs": _int("warmup", params.get("warmup", "0"))}
    return apply


def _ghost(params, context):
    if "ghost" in params:
        return {"ghost_batch": _int("ghost", params["ghost"])}
    local = context.lb_batch // context.replicas
    return {"ghost_batch": max(d for d in range(1, min(local, context.sb_batch) + 1)
                               if local % d == 0)}


def _grow(params, context):
    if "schedule" in params:
        entries = []
        for text in params["schedule"].split("/"):
            parts = text.split("@")
            if len(parts) != 2:
                raise RemedyError(f"grow schedule entry {text!r} must be EPOCH@BATCH, e.g. "
                                  "grow:schedule=5@1024/10@6000")
            entries.append((_int("epoch", parts[0]), _int("batch", parts[1])))
        schedule = tuple(entries)
    else:
        schedule = ((max(2, context.lb_epochs // 4 + 1), context.lb_batch),)
    return {"batch_size": context.sb_batch, "batch_schedule": schedule}


def _step(remedy: str, fields: dict[str, tuple[str, Callable]]):
    def apply(params, context):
        values = {"step_remedy": remedy}
        for key, (field, parse) in fields.items():
            if key in params:
                values[field] = parse(key, params[key])
        return values
    return apply


# name -> (parameter names, apply(params, context) -> TrainConfig fields of the LB run,
#          whether SB is retrained with the same fields)
COMPONENTS: dict[str, tuple[tuple[str, ...], Callable, bool]] = {
    PLAIN: ((), lambda params, context: {}, False),
    "augment": ((), lambda params, context: {"augment": True}, True),
    "linear_lr": (("warmup",), _lr("linear"), False),
    "sqrt_lr": (("warmup",), _lr("sqrt"), False),
    "ghost_bn": (("ghost",), _ghost, False),
    "adapt": ((), lambda params, context: {"regime_adaptation": True,
                                           "reference_batch": context.sb_batch,
                                           "epochs": context.sb_epochs}, False),
    "grow": (("schedule",), _grow, False),
    "conservative": (("lambda", "iterations"), _step("conservative", {
        "lambda": ("conservative_lambda", _float),
        "iterations": ("conservative_iterations", _int)}), False),
    "adversarial": (("eps",), _step("adversarial", {"eps": ("adversarial_eps", _float)}),
                    False),
    "sam": (("rho",), _step("sam", {"rho": ("sam_rho", _float)}), False),
    "asam": (("rho", "eta"), _step("asam", {"rho": ("sam_rho", _float),
                                           "eta": ("asam_eta", _float)}), False),
}
_STEP_COMPONENTS = ("conservative", "adversarial", "sam", "asam")


@dataclasses.dataclass(frozen=True)
class Remedy:
    """One remedy of the list: its components with their parameters, as written."""

    label: str
    components: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]

    @property
    def retrains_sb(self) -> bool:
        return any(COMPONENTS[name][2] for name, _ in self.components)

    def fields(self, context: _Context) -> dict:
        """The TrainConfig fields the remedy sets on the LB run."""
        values = {}
        for name, params in self.components:
            values.update(COMPONENTS[name][1](dict(params), context))
        return values

    def sb_fields(self, context: _Context) -> dict:
        """The fields SB is retrained with (augmentation only), {} for the plain SB."""
        values = {}
        for name, params in self.components:
            if COMPONENTS[name][2]:
                values.update(COMPONENTS[name][1](dict(params), context))
        return values


def parse_remedy(text: str) -> Remedy:
    """A ``Remedy`` from its text (module docstring grammar); RemedyError when malformed."""
    text = text.strip()
    components = []
    for part in text.split("+"):
        name, *assignments = part.split(":")
        if name not in COMPONENTS:
            raise RemedyError(
                f"unknown remedy {name!r} in {text!r}: choose from {', '.join(COMPONENTS)} "
                "(join several with +, parameters as NAME:KEY=VALUE)")
        params = []
        for assignment in assignments:
            key, sep, value = assignment.partition("=")
            if not sep or key not in COMPONENTS[name][0] or not value:
                allowed = ", ".join(COMPONENTS[name][0]) or "none"
                raise RemedyError(f"bad parameter {assignment!r} of remedy {name!r}: write "
                                  f"KEY=VALUE with KEY one of: {allowed}")
            params.append((key, value))
        components.append((name, tuple(params)))
    names = [name for name, _ in components]
    if len(set(names)) != len(names) or (PLAIN in names and len(names) > 1):
        raise RemedyError(f"remedy {text!r} repeats a component or combines plain with others")
    steps = [name for name in names if name in _STEP_COMPONENTS]
    if len(steps) > 1:
        raise RemedyError(f"remedy {text!r} combines step remedies {steps}: a step takes one")
    return Remedy(text, tuple(components))


def parse_remedies(texts: Sequence[str]) -> tuple[Remedy, ...]:
    """The remedies of a list, plain first (added when missing), each once."""
    remedies = [parse_remedy(text) for text in texts if text.strip()]
    labels = [remedy.label for remedy in remedies]
    if len(set(labels)) != len(labels):
        raise RemedyError(f"the remedy list repeats an entry: {labels}")
    plain = [remedy for remedy in remedies if remedy.label == PLAIN]
    return tuple(plain or [parse_remedy(PLAIN)]) + tuple(
        remedy for remedy in remedies if remedy.label != PLAIN)


@dataclasses.dataclass(frozen=True)
class RemediesConfig:
    """One remedies experiment: the plain SB and LB settings (model and seed set per network
    and trial), the remedies, trials and the full-space sharpness plan."""

    models: tuple[str, ...]
    sb: train.TrainConfig
    lb: train.TrainConfig
    remedies: tuple[Remedy, ...]
    trials: int = 1
    first_seed: int = 0
    sharpness: gap.SharpnessPlan = gap.SharpnessPlan(subspace_dims=(None,))

    def __post_init__(self):
        if not self.models:
            raise RemedyError("no model given: pass e.g. --models=F1")
        if self.trials < 1:
            raise RemedyError(f"trials must be at least 1, got {self.trials}")
        if self.sb.regime != "SB" or self.lb.regime != "LB":
            raise RemedyError("the sb and lb settings must have regimes SB and LB")
        if self.sharpness.subspace_dims != (None,):
            raise RemedyError("the remedies table compares full-space sharpness only")
        plain = dict(train.config.REMEDY_DEFAULTS, step_remedy="none")
        for name, off in plain.items():
            if getattr(self.sb, name) != off or getattr(self.lb, name) != off:
                raise RemedyError(f"the plain SB and LB settings must not set {name}: give "
                                  "remedies in the remedy list")

    @property
    def seeds(self) -> range:
        return range(self.first_seed, self.first_seed + self.trials)

    def context(self, model: str, num_train: int, replicas: int) -> _Context:
        """The resolved plain SB and LB batches and epochs of ``model``."""
        sb = train.resolve(dataclasses.replace(self.sb, model=model), num_train, replicas)
        lb = train.resolve(dataclasses.replace(self.lb, model=model), num_train, replicas)
        return _Context(sb.batch_size, lb.batch_size, replicas, sb.epochs, lb.epochs)

    def remedy_configs(self, remedy: Remedy, model: str, seed: int, num_train: int,
                       replicas: int, x0_path: str | None = None
                       ) -> tuple[train.TrainConfig, train.TrainConfig, dict]:
        """(SB, LB, LB fields) of ``remedy`` for one network and trial, both resolved once
        as a check. SB is the plain SB run's settings (drawing x0 from the seed) unless the
        remedy retrains SB; then, as every remedied LB run, it starts from ``x0_path``.

        Raises:
          RemedyError: the remedy cannot apply to this network or batch.
        """
        try:
            context = self.context(model, num_train, replicas)
            fields = remedy.fields(context)
            lb = dataclasses.replace(self.lb, model=model, seed=seed, x0_path=x0_path,
                                     **fields)
            sb = dataclasses.replace(self.sb, model=model, seed=seed)
            if remedy.retrains_sb:
                sb = dataclasses.replace(sb, x0_path=x0_path, **remedy.sb_fields(context))
            train.resolve(lb, num_train, replicas)
            train.resolve(sb, num_train, replicas)
        except train.TrainError as error:
            raise RemedyError(f"remedy {remedy.label!r} on {model}: {error}") from error
        return sb, lb, fields

    def experiment_id(self, model: str) -> str:
        """Identifies the experiment's settings for one network (not its trials or list)."""
        key = {"sb": train.config_dict(dataclasses.replace(self.sb, model=model, seed=0)),
               "lb": train.config_dict(dataclasses.replace(self.lb, model=model, seed=0)),
               "sharpness": dataclasses.asdict(self.sharpness)}
        return results.new_run_id(key, prefix=f"{model}-")


@dataclasses.dataclass(frozen=True)
class RemediesOutcome:
    """This experiment's rows: remedies.csv, and the runs.csv and sharpness.csv rows of its
    runs."""

    remedy_rows: list[dict]
    run_rows: list[dict]
    sharpness_rows: list[dict]
    wall_time_s: float


def _updates_and_last_batch(run: common.FinishedRun) -> tuple[int, int]:
    history = results.read_rows(os.path.join(run.run_dir, train.HISTORY_FILE))
    if not history:
        return 0, int(run.config.batch_size)
    last = history[-1]
    return (sum(int(row["steps"]) for row in history),
            int(last["examples"]) // int(last["steps"]))


class _Experiment:
    def __init__(self, config: RemediesConfig, output_dir: str, strategy, data_dirs: dict,
                 quiet: bool, nondefault_flags: str):
        self.config, self.output_dir, self.strategy = config, output_dir, strategy
        self.data_dirs, self.nondefault_flags = data_dirs, nondefault_flags
        self.store = common.RunStore(output_dir, strategy=strategy, benchmark=BENCHMARK,
                                     quiet=quiet, nondefault_flags=nondefault_flags)
        self.path = os.path.join(output_dir, REMEDIES_FILE)
        runs_per_trial = 2 + sum(1 + remedy.retrains_sb for remedy in config.remedies[1:])
        self.progress = common.Progress(
            BENCHMARK, len(config.models) * config.trials * (
                runs_per_trial * (1 + common.sharpness_steps(config.sharpness))
                + len(config.remedies)))

        self._splits = {}

    def splits(self, model: str) -> tuple[data.SplitData, data.SplitData]:
        """The (train, test) splits of ``model``'s data, loaded once per data set and shape."""
        settings = dataclasses.replace(self.config.sb, model=model)
        key = (settings.dataset or models.spec(model).dataset, models.spec(model).flat_input)
        if key not in self._splits:
            self._splits[key] = train.load_data(settings, **self.data_dirs)
        return self._splits[key]

    def check(self) -> None:
        """Applies every remedy to every network's resolved settings without training, so a
        remedy that cannot apply fails before any run starts and nothing is written."""
        for model in self.config.models:
            num_train = self.splits(model)[0].info.num_examples
            for remedy in self.config.remedies:
                self.config.remedy_configs(remedy, model, self.config.first_seed, num_train,
                                           self.strategy.num_replicas_in_sync, "x0.npz")

    def run(self) -> tuple[list[str], set]:
        run_ids, sharpness_run_ids = [], set()
        for model in self.config.models:
            train_data, test_data = self.splits(model)
            for trial, seed in enumerate(self.config.seeds):
                ids = self._trial(model, trial, seed, train_data, test_data)
                run_ids += ids
                sharpness_run_ids |= set(ids)
        return run_ids, sharpness_run_ids

    def _finished(self, config, train_data, test_data, seed) -> common.FinishedRun:
        run = self.store.get(config, train_data, test_data, self.progress)
        common.measure_sharpness(
            lambda: self.store.model(run), run.row, plan=self.config.sharpness, seed=seed,
            train_data=train_data, output_dir=self.output_dir, strategy=self.strategy,
            benchmark=BENCHMARK, precision=run.config.precision,
            nondefault_flags=self.nondefault_flags, progress=self.progress)
        return run

    def _trial(self, model, trial, seed, train_data, test_data) -> list[str]:
        num_train = train_data.info.num_examples
        replicas = self.strategy.num_replicas_in_sync
        plain = self.config.remedies[0]
        sb_settings = self.config.remedy_configs(plain, model, seed, num_train, replicas)[0]
        sb = self._finished(sb_settings, train_data, test_data, seed)
        lb_settings = self.config.remedy_configs(plain, model, seed, num_train, replicas,
                                                 sb.x0_path)[1]
        plain_lb = self._finished(lb_settings, train_data, test_data, seed)
        plain_gap = 100 * (float(sb.row["test_accuracy"]) - float(plain_lb.row["test_accuracy"]))
        run_ids = [sb.run_id, plain_lb.run_id]
        experiment_id = self.config.experiment_id(model)
        done = {_row_key(row) for row in results.read_rows(self.path)}
        for remedy in self.config.remedies:
            sb_config, lb_config, fields = self.config.remedy_configs(
                remedy, model, seed, num_train, replicas, sb.x0_path)
            remedy_sb = sb
            if remedy.retrains_sb:
                remedy_sb = self._finished(sb_config, train_data, test_data, seed)
                run_ids.append(remedy_sb.run_id)
            lb = plain_lb if remedy.label == PLAIN else self._finished(
                lb_config, train_data, test_data, seed)
            run_ids.append(lb.run_id)
            if (experiment_id, str(seed), remedy.label) in done:
                self.progress.stage(f"{model} seed {seed} {remedy.label}: recorded earlier")
                continue
            self.progress.stage(f"{model} seed {seed} {remedy.label}: recording")
            gap_pp = 100 * (float(remedy_sb.row["test_accuracy"])
                            - float(lb.row["test_accuracy"]))
            updates, last_batch = _updates_and_last_batch(lb)
            row = {
                "experiment_id": experiment_id, "model": model,
                "dataset": sb.config.dataset, "trial": trial, "seed": seed,
                "remedy": remedy.label,
                "lb_settings": json.dumps(fields, sort_keys=True, separators=(",", ":")),
                "sb_run_id": remedy_sb.run_id, "plain_lb_run_id": plain_lb.run_id,
                "lb_run_id": lb.run_id,
                "sb_train_accuracy": remedy_sb.row["train_accuracy"],
                "sb_test_accuracy": remedy_sb.row["test_accuracy"],
                "lb_train_accuracy": lb.row["train_accuracy"],
                "lb_test_accuracy": lb.row["test_accuracy"],
                "plain_gap_pp": plain_gap, "gap_pp": gap_pp,
                "gap_closed": gap_closed(plain_gap, gap_pp),
                "lb_epochs": lb.row["epochs_run"], "lb_updates": updates,
                "lb_last_batch": last_batch, "lb_wall_time_s": lb.row["wall_time_s"],
                "strategy": lb.row["strategy"], "replicas": lb.row["replicas"],
                "device_kind": lb.row["device_kind"], **common.row_provenance(),
                "finished_at": common.utc_now(), "nondefault_flags": self.nondefault_flags,
            }
            if train.is_chief(self.strategy):
                results.append_row(self.path, {key: row[key] for key in REMEDY_COLUMNS},
                                   key=_row_key)
        return list(dict.fromkeys(run_ids))


def _row_key(row: dict) -> tuple[str, str, str]:
    """What identifies a remedies.csv row: experiment, seed and remedy."""
    return str(row["experiment_id"]), str(row["seed"]), str(row["remedy"])


def gap_closed(plain_gap_pp: float, gap_pp: float) -> float | None:
    """The fraction of the plain SB - LB test gap a remedy closes: 1 - gap / plain gap (1:
    the gap is gone, 0: unchanged, < 0: wider, > 1: LB overtakes SB); None when the plain gap
    is not positive (nothing to close)."""
    if not plain_gap_pp > 0:
        return None
    return 1.0 - gap_pp / plain_gap_pp


def run(config: RemediesConfig, *, output_dir: str,
        strategy: tf.distribute.Strategy | None = None, data_dirs: dict | None = None,
        quiet: bool = False, nondefault_flags: str = "") -> RemediesOutcome:
    """Runs (or resumes) the experiment into ``output_dir``; returns this experiment's rows.

    Raises:
      RemedyError: a remedy that cannot apply (e.g. augmentation on a flat network, a ghost
        batch that does not divide the LB batch), checked for every network and remedy
        before any training.
    """
    started = time.perf_counter()
    strategy = strategy or tf.distribute.get_strategy()
    experiment = _Experiment(config, output_dir, strategy, data_dirs or {}, quiet,
                             nondefault_flags)
    experiment.check()
    run_ids, measured = experiment.run()
    remedy_rows = [row for row in results.read_rows(experiment.path)
                   if row["experiment_id"] in {config.experiment_id(m) for m in config.models}
                   and int(row["seed"]) in config.seeds
                   and row["remedy"] in {remedy.label for remedy in config.remedies}]
    wanted = set(run_ids)
    run_rows = [row for row in results.read_rows(os.path.join(output_dir, common.RUNS_FILE))
                if row["run_id"] in wanted]
    plan = config.sharpness
    sharpness_rows = [
        row for row in results.read_rows(os.path.join(output_dir, common.SHARPNESS_FILE))
        if row["run_id"] in measured and row["subspace"] == "full"
        and row["solver"] in plan.solvers and float(row["epsilon"]) in plan.epsilons
        and int(row["max_iter"]) == plan.max_iter]
    return RemediesOutcome(remedy_rows, run_rows, sharpness_rows,
                           time.perf_counter() - started)
