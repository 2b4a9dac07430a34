"""Gap result folders read back as setups, and the experiment keys that match them.

A gap result folder (written by ``benchmarks.gap``, one setup of ``benchmarks.setups``, or
any machine's copy of them) holds ``runs.csv``, ``pairs.csv``, ``sharpness.csv`` and
``runs/<run_id>/history.csv``; a setups folder adds ``processes.csv`` (peak memory, stage
times) and, for mixed precision, ``sharpness_native.csv``. ``load_folder`` finds every such
folder below a path and splits its rows by the setup that produced them (``SETUP_FIELDS``:
device, strategy, replicas, precision, XLA, TensorFlow version), so one folder that mixes
setups still compares correctly.

Runs on different setups are the same experiment when ``run_experiment`` agrees: network,
data, regime, seed and every training setting that is not part of the setup (batch, optimizer,
learning rate, BN, stopping rule, evaluation batch). An SB/LB pair's experiment is its two
runs' keys without the seed (trials are matched by seed), a sharpness measurement's adds the
measurement's own settings.
"""

from __future__ import annotations

import dataclasses
import os

from lbgap_tf import results

RUNS_FILE, PAIRS_FILE, SHARPNESS_FILE = "runs.csv", "pairs.csv", "sharpness.csv"
PROCESSES_FILE, NATIVE_SHARPNESS_FILE = "processes.csv", "sharpness_native.csv"
HISTORY_FILE = "history.csv"

SETUP_FIELDS = ("device_kind", "strategy", "replicas", "workers", "precision", "jit",
                "tf_version")
RUN_SETTINGS = ("model", "dataset", "regime", "global_batch_size", "optimizer",
                "learning_rate", "bn_mode", "bn_sync", "eval_batch_size", "stop_rule")
PROVENANCE_FIELDS = ("keras_version", "git_revision", "hostname")


@dataclasses.dataclass
class SetupResults:
    """The rows one setup produced in one folder (or, for a skipped setup, only why not).

    ``label`` names the setup in tables; ``setup`` holds the ``SETUP_FIELDS`` values;
    ``histories`` maps run ids to their ``history.csv`` rows.
    """

    label: str
    folder: str
    setup: dict
    runs: list[dict] = dataclasses.field(default_factory=list)
    pairs: list[dict] = dataclasses.field(default_factory=list)
    sharpness: list[dict] = dataclasses.field(default_factory=list)
    native_sharpness: list[dict] = dataclasses.field(default_factory=list)
    processes: list[dict] = dataclasses.field(default_factory=list)
    histories: dict = dataclasses.field(default_factory=dict)
    status: str = "ran"
    reason: str = ""

    @property
    def replicas(self) -> int:
        return int(self.setup.get("replicas") or 1)

    def provenance(self) -> dict:
        """Every distinct value of the provenance columns (and setup fields) of its runs."""
        fields = SETUP_FIELDS + PROVENANCE_FIELDS
        return {field: sorted({row.get(field, "") for row in self.runs}) for field in fields}


def describe_setup(setup: dict) -> str:
    """A setup in the setups grammar's words, e.g. "mirrored:2/float32/xla"."""
    text = setup.get("strategy", "?")
    if str(setup.get("replicas", "1")) != "1":
        text += f":{setup['replicas']}"
    text += f"/{setup.get('precision', '?')}"
    return text + ("/xla" if str(setup.get("jit")) == "True" else "")


def run_experiment(row: dict) -> tuple:
    """What makes two runs the same experiment (setup excluded), with the seed."""
    return tuple(str(row.get(field, "")) for field in RUN_SETTINGS) + (str(row["seed"]),)


def pair_experiment(pair: dict, runs_by_id: dict) -> tuple | None:
    """The experiment of an SB/LB pair (both runs' settings, no seed); None when a run of the
    pair is missing from the rows."""
    sb, lb = runs_by_id.get(pair["sb_run_id"]), runs_by_id.get(pair["lb_run_id"])
    if sb is None or lb is None:
        return None
    return run_experiment(sb)[:-1] + run_experiment(lb)[:-1]


def describe_experiment(key: tuple) -> str:
    """E.g. "F1 on fashion_mnist, SB batch 256 (epochs=50) / LB batch 6000 (epochs=100), adam
    lr 0.001, BN batch"."""
    sb = dict(zip(RUN_SETTINGS, key[:len(RUN_SETTINGS)], strict=True))
    lb = dict(zip(RUN_SETTINGS, key[len(RUN_SETTINGS):], strict=True))
    return (f"{sb['model']} on {sb['dataset']}, SB batch {sb['global_batch_size']} "
            f"({sb['stop_rule']}) / LB batch {lb['global_batch_size']} ({lb['stop_rule']}), "
            f"{sb['optimizer']} lr {sb['learning_rate']}, BN {sb['bn_mode']}")


def _gap_folders(path: str) -> list[str]:
    """Folders below ``path`` (itself included) holding a runs.csv, in sorted order; run
    directories (``runs/<id>``) are not searched."""
    found = []
    for folder, subfolders, files in os.walk(path):
        subfolders[:] = sorted(d for d in subfolders if d != "runs")
        if RUNS_FILE in files:
            found.append(folder)
    return found


def _signature(row: dict) -> tuple:
    return tuple(str(row.get(field, "")) for field in SETUP_FIELDS)


def load_gap_folder(folder: str, label_prefix: str = "") -> list[SetupResults]:
    """One ``SetupResults`` per setup found in the rows of the gap folder ``folder``."""
    runs = results.read_rows(os.path.join(folder, RUNS_FILE))
    pairs = results.read_rows(os.path.join(folder, PAIRS_FILE))
    measured = results.read_rows(os.path.join(folder, SHARPNESS_FILE))
    native = results.read_rows(os.path.join(folder, NATIVE_SHARPNESS_FILE))
    processes = results.read_rows(os.path.join(folder, PROCESSES_FILE))
    by_signature: dict[tuple, list[dict]] = {}
    for row in runs:
        by_signature.setdefault(_signature(row), []).append(row)
    groups = []
    for signature, rows in by_signature.items():
        ids = {row["run_id"] for row in rows}
        setup = dict(zip(SETUP_FIELDS, signature, strict=True))
        groups.append(SetupResults(
            label=label_prefix + describe_setup(setup), folder=folder, setup=setup, runs=rows,
            pairs=[p for p in pairs if p["sb_run_id"] in ids and p["lb_run_id"] in ids],
            sharpness=[m for m in measured if m["run_id"] in ids],
            native_sharpness=[m for m in native if m["run_id"] in ids],
            processes=processes if len(by_signature) == 1 else [],
            histories={run_id: _history(folder, run_id) for run_id in ids}))
    return groups


def _history(folder: str, run_id: str) -> list[dict]:
    return results.read_rows(os.path.join(folder, "runs", run_id, HISTORY_FILE))


def load_folder(path: str, label: str | None = None) -> list[SetupResults]:
    """Every setup in every gap folder below ``path``; labels are "LABEL: setup" (LABEL
    defaults to the folder's base name), with the subfolder when there are several."""
    if not os.path.isdir(path):
        raise results.ResultsError(f"result folder {path} does not exist: pass folders "
                                   "written by benchmarks.gap or benchmarks.setups")
    folders = _gap_folders(path)
    if not folders:
        raise results.ResultsError(f"{path} holds no runs.csv (in it or below it): pass "
                                   "folders written by benchmarks.gap or benchmarks.setups")
    name = label or os.path.basename(os.path.normpath(path))
    groups = []
    for folder in folders:
        sub = os.path.relpath(folder, path)
        prefix = f"{name}: " if sub == "." else f"{name}/{sub}: "
        groups += load_gap_folder(folder, label_prefix=prefix)
    return groups
