"""Kill -9 campaign on the gap benchmark: results survive crashes at every stage, and two
processes on one output folder lose or duplicate nothing.

    python scripts/kill_campaign.py --workdir=/tmp/kill_campaign [--seed=0] [--kills_per_stage=1]
        [--stages=training SB,pair,...]

1. Reference: ``python -m benchmarks.gap`` with ``GAP_FLAGS`` (synthetic data, one trial, F1,
   SB 64 / LB 256 for 3 epochs each, sharpness in the full space and a random 8-dimensional
   subspace, both solvers, one epsilon: every stage of the real experiment, in deterministic
   mode) runs uninterrupted into WORKDIR/reference; the arrival times of its log lines give
   each stage's duration.
2. Kills: into WORKDIR/killed, the same command is started once per target and SIGKILLed at
   a random moment of the targeted stage: startup (data), SB training, SB checkpoint write,
   LB training, LB checkpoint write, the pair (distances), each of the 8 sharpness
   measurements (SB and LB x full/subspace x ascent/L-BFGS-B), and table writing. A target is
   aimed from the log ("[gap k/N, ...] training F1 SB ...", "... sharpness, full space,
   ascent ...") with a delay drawn uniformly over the stage's duration in the reference, or,
   for a checkpoint write, from the file system: the kill follows the moment a new epoch
   reaches the run's history.csv, before the checkpoint of that epoch is saved and the epoch
   is logged. Tables are targeted when sharpness.csv holds every measurement. A process that
   gets past its target stage without being killed (the stage was finished earlier, or too
   short) is killed at once. The stage a kill actually hit is classified from what the
   process had logged and written by then (a kill that lands later than aimed counts for the
   later stage). After the targets, the
   command is rerun until it completes.
3. Concurrency: two processes started at once into WORKDIR/concurrent; each must complete or
   end with the one-line error of the binaries' contract; then reruns until complete.
4. Comparison of each folder with the reference: runs.csv, pairs.csv, sharpness.csv, every
   run's history.csv and table2/3/4.csv. Rows are matched by key (run id, pair, measurement
   key, epoch; tables by position); cells must be equal as strings, except provenance
   columns (``PROVENANCE``: wall times, rates, timestamps, host) and the folder's own path in
   a cell (LB's x0 path, the output_dir in nondefault_flags). Duplicate keys, missing or
   extra rows, different cells, leftover temporary files and a non-zero exit without a kill
   are failures.

Prints the kills per stage, rows compared and duplicates found, and exits 1 on any mismatch.
It takes minutes (every restart imports TensorFlow), so it is a script, not a test.
"""

from __future__ import annotations

import argparse
import csv
import glob
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

GAP_FLAGS = (
    "--models=F1", "--dataset=synthetic", "--synthetic_train_examples=512",
    "--synthetic_test_examples=128", "--trials=1", "--seed=0", "--sb_batch_size=64",
    "--lb_batch_size=256", "--sb_epochs=3", "--lb_epochs=3", "--eval_batch_size=256",
    "--epsilons=1e-3", "--subspace_dims=full,8", "--solvers=ascent,lbfgsb",
    "--sharpness_max_iter=2", "--sharpness_examples=256", "--sharpness_batch_size=128",
    "--deterministic", "--strategy=default",
)
SHARPNESS_STAGES = [f"sharpness {regime} {space} {solver}" for regime in ("SB", "LB")
                    for space in ("full space", "random subspace p=8")
                    for solver in ("ascent", "lbfgsb")]
# The stages in the order the experiment reaches them.
STAGES = ["startup", "training SB", "checkpoint write SB", "training LB",
          "checkpoint write LB", "pair", *SHARPNESS_STAGES, "tables"]
EXPECTED_MEASUREMENTS = len(SHARPNESS_STAGES)  # One epsilon: one row per stage.

# Columns that say when, how fast or where a row was produced, not what was measured.
PROVENANCE = re.compile(r"(_s$|^seconds$|_per_s$|finished_at|started|hostname|"
                        r"^load_average|_mb$)")
KEYS = {"runs.csv": ("run_id",), "pairs.csv": ("gap_id", "sb_run_id", "lb_run_id"),
        "history.csv": ("epoch",)}
STAGE_LINE = re.compile(r"\] \[gap \d+/\d+, [^]]*\] (.*)$")
EPOCH_LINE = re.compile(r"\] epoch (\d+)/\d+: ")
RESUME_LINE = re.compile(r"\] resuming \S+ after epoch (\d+)")


def sharpness_key_columns() -> tuple[str, ...]:
    """The library's measurement key (``lbgap_tf.sharpness_rows.KEY_COLUMNS``)."""
    sys.path.insert(0, REPO)
    from lbgap_tf import sharpness_rows

    return tuple(sharpness_rows.KEY_COLUMNS)


def read_csv(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def count_rows(path: str) -> int:
    try:
        with open(path, encoding="utf-8") as handle:
            return max(0, sum(1 for _ in handle) - 1)
    except OSError:
        return 0


def last_epoch(path: str) -> int:
    rows = read_csv(path)
    try:
        return int(rows[-1]["epoch"]) if rows else 0
    except (KeyError, ValueError):
        return 0


class Process:
    """One ``benchmarks.gap`` process with its stderr read line by line (with arrival times)
    and the state the stage classification needs."""

    def __init__(self, folder: str):
        self.folder = folder
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="-1")
        env.pop("TF_CPP_MIN_LOG_LEVEL", None)
        self.started = time.monotonic()
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.gap", *GAP_FLAGS, f"--output_dir={folder}"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[tuple[float, str]] = []
        self.killed = False
        self._threads = [threading.Thread(target=self._read, args=(stream, keep), daemon=True)
                         for stream, keep in ((self.popen.stderr, True),
                                              (self.popen.stdout, False))]
        for thread in self._threads:
            thread.start()

    def _read(self, stream, keep: bool) -> None:
        for line in stream:
            if keep:
                self.lines.append((time.monotonic(), line.rstrip("\n")))

    def stage_lines(self) -> list[tuple[float, str]]:
        """(time, description) of every stage this process started (not the skipped ones)."""
        found = []
        for when, line in list(self.lines):
            match = STAGE_LINE.search(line)
            if match and not match.group(1).endswith("skipped"):
                found.append((when, match.group(1)))
        return found

    def stage(self) -> str:
        """The stage the process is in now, from its log and the files it has written."""
        stages = self.stage_lines()
        if not stages:
            return "startup"
        name = stage_name(stages[-1][1])
        if name.startswith("training"):
            regime = name.split()[1]
            run_id = re.search(r"\((\S+)\)$", stages[-1][1]).group(1)
            logged = 0
            since = stages[-1][0]
            for when, line in list(self.lines):
                if when < since:
                    continue
                for pattern in (EPOCH_LINE, RESUME_LINE):
                    match = pattern.search(line)
                    if match:
                        logged = max(logged, int(match.group(1)))
            history = os.path.join(self.folder, "runs", run_id, "history.csv")
            if last_epoch(history) > logged:
                return f"checkpoint write {regime}"
            return name
        if name == SHARPNESS_STAGES[-1] and count_rows(
                os.path.join(self.folder, "sharpness.csv")) >= EXPECTED_MEASUREMENTS:
            return "tables"
        return name

    def kill(self) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGKILL)
            self.killed = True

    def wait(self, timeout: float) -> int:
        try:
            code = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.popen.wait()
        for thread in self._threads:
            thread.join(timeout=10)
        return code

    def last_line(self) -> str:
        return self.lines[-1][1] if self.lines else ""


def stage_name(description: str) -> str:
    """A progress line's description as a ``STAGES`` name."""
    if description.startswith("training "):
        return f"training {description.split()[2]}"
    if "distances from x0" in description:
        return "pair"
    match = re.match(r"\S+ (SB|LB) seed \d+: sharpness, (full space|random subspace p=\d+), "
                     r"(\w+)", description)
    if match:
        return f"sharpness {match.group(1)} {match.group(2)} {match.group(3)}"
    return description


def durations(process: Process, total: float) -> dict[str, float]:
    """Seconds of each stage of an uninterrupted process, from its log's arrival times."""
    marks = [(process.started, "startup")] + [(when, stage_name(text))
                                              for when, text in process.stage_lines()]
    marks.append((process.started + total, "end"))
    seconds = {}
    for (began, name), (ended, _) in zip(marks, marks[1:], strict=False):
        seconds[name] = seconds.get(name, 0.0) + ended - began
    # Tables: after the last measurement's row; a share of the last stage is a fair bound.
    seconds["tables"] = max(0.05, 0.2 * seconds.get(SHARPNESS_STAGES[-1], 0.5))
    return seconds


def complete(folder: str, attempts: int, timeout: float, log) -> tuple[int, list[str]]:
    """Reruns the command into ``folder`` until it exits 0; (reruns, failures)."""
    failures = []
    for attempt in range(1, attempts + 1):
        process = Process(folder)
        code = process.wait(timeout)
        if code == 0:
            return attempt, failures
        failures.append(f"rerun {attempt} exited {code}: {process.last_line()}")
        log(failures[-1])
    return attempts, failures


def kill_at(target: str, folder: str, rng: random.Random, seconds: dict, timeout: float,
            log) -> dict:
    """Starts the command into ``folder`` and SIGKILLs it at a random moment of ``target``."""
    process = Process(folder)
    fire_at = None
    deadline = time.monotonic() + timeout
    while process.popen.poll() is None and time.monotonic() < deadline:
        now = time.monotonic()
        if fire_at is None:
            stage = process.stage()
            passed = stage in STAGES and STAGES.index(stage) > STAGES.index(target)
            if passed:
                fire_at = now  # The target stage went by (done earlier or too short): kill.
            elif target == "startup":
                fire_at = process.started + rng.uniform(0.5, max(0.6, seconds["startup"]))
            elif target.startswith("checkpoint write"):
                if stage == target:
                    fire_at = now
            elif target == "tables":
                if stage == "tables":
                    fire_at = now + rng.uniform(0, seconds["tables"])
            elif stage == target:
                fire_at = now + rng.uniform(0, 0.9 * seconds.get(target, 1.0))
        if fire_at is not None and now >= fire_at:
            hit = process.stage()
            process.kill()
            process.wait(60)
            log(f"target {target!r}: killed at {now - process.started:.2f} s, in {hit!r}")
            return {"target": target, "hit": hit, "killed": True, "error": None}
        time.sleep(0.002)
    code = process.wait(max(1.0, deadline - time.monotonic()))
    error = None if code == 0 else f"exited {code} without a kill: {process.last_line()}"
    log(f"target {target!r}: not reached, the process ended with status {code}")
    return {"target": target, "hit": None, "killed": False, "error": error}


def concurrent(folder: str, timeout: float, log) -> list[str]:
    """Two processes started at once on ``folder``; the problems (a failure that is not the
    contract's one-line error)."""
    processes = [Process(folder), Process(folder)]
    problems = []
    for index, process in enumerate(processes):
        code = process.wait(timeout)
        last = process.last_line()
        log(f"concurrent process {index}: exit {code}, last stderr line: {last[:200]}")
        if code != 0 and not (code in (1, 2) and last.startswith("gap.py: error: ")):
            problems.append(f"concurrent process {index} exited {code}: {last[:300]}")
        if any(line.startswith("Traceback") for _, line in process.lines):
            problems.append(f"concurrent process {index} printed a traceback")
    return problems


# --- comparison ------------------------------------------------------------------------------

def _normalised(row: dict, folder: str) -> dict:
    absolute = os.path.abspath(folder)
    return {column: (value or "").replace(absolute, "<OUT>").replace(folder, "<OUT>")
            for column, value in row.items() if not PROVENANCE.search(column)}


def _keyed(rows: list[dict], key: tuple[str, ...] | None) -> tuple[dict, int]:
    """Rows by key (position when ``key`` is None) and the number of duplicate keys."""
    keyed, duplicates = {}, 0
    for index, row in enumerate(rows):
        name = (index,) if key is None else tuple(row.get(column, "") for column in key)
        duplicates += name in keyed
        keyed[name] = row
    return keyed, duplicates


def compare(reference: str, folder: str) -> dict:
    """Rows compared, duplicates and mismatches of ``folder`` against ``reference``."""
    sharpness_key = sharpness_key_columns()
    files = {"runs.csv": KEYS["runs.csv"], "pairs.csv": KEYS["pairs.csv"],
             "sharpness.csv": sharpness_key,
             "table2.csv": None, "table3.csv": None, "table4.csv": None}
    for path in sorted(glob.glob(os.path.join(reference, "runs", "*", "history.csv"))):
        files[os.path.relpath(path, reference)] = KEYS["history.csv"]
    report = {"rows": 0, "duplicates": 0, "mismatches": []}
    for name, key in files.items():
        expected_rows = read_csv(os.path.join(reference, name))
        got_rows = read_csv(os.path.join(folder, name))
        expected, reference_duplicates = _keyed(expected_rows, key)
        got, duplicates = _keyed(got_rows, key)
        report["duplicates"] += duplicates
        if reference_duplicates:
            report["mismatches"].append(f"reference {name}: {reference_duplicates} duplicate(s)")
        if duplicates:
            report["mismatches"].append(f"{name}: {duplicates} duplicate row(s)")
        if not expected:
            report["mismatches"].append(f"reference {name}: no rows")
        for missing in expected.keys() - got.keys():
            report["mismatches"].append(f"{name}: row {missing} missing")
        for extra in got.keys() - expected.keys():
            report["mismatches"].append(f"{name}: extra row {extra}")
        for name_key in expected.keys() & got.keys():
            report["rows"] += 1
            want = _normalised(expected[name_key], reference)
            have = _normalised(got[name_key], folder)
            for column in sorted(want.keys() | have.keys()):
                if want.get(column) != have.get(column):
                    report["mismatches"].append(
                        f"{name} {name_key} {column}: {have.get(column)!r}, reference "
                        f"{want.get(column)!r}")
    run_dirs = {os.path.basename(path) for path in glob.glob(os.path.join(folder, "runs", "*"))}
    expected_dirs = {os.path.basename(path)
                     for path in glob.glob(os.path.join(reference, "runs", "*"))}
    if run_dirs != expected_dirs:
        report["mismatches"].append(f"run directories {sorted(run_dirs)}, reference "
                                    f"{sorted(expected_dirs)}")
    leftovers = [path for path in glob.glob(os.path.join(folder, "**", "*"), recursive=True)
                 if path.endswith(".tmp") or "_temp" in os.path.basename(path)]
    if leftovers:
        report["mismatches"].append(f"temporary files left: {leftovers}")
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True,
                        help="Folder for the reference, killed and concurrent outputs "
                             "(emptied first).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the kill moments.")
    parser.add_argument("--kills_per_stage", type=int, default=1,
                        help="Targets per stage (each stage of STAGES this many times).")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help="Comma-separated stages to target (default: every stage).")
    parser.add_argument("--timeout", type=float, default=900,
                        help="Seconds one process may take.")
    args = parser.parse_args()
    targets = args.stages.split(",")
    if not set(targets) <= set(STAGES):
        parser.error(f"--stages takes names from: {', '.join(STAGES)}")
    began = time.monotonic()
    rng = random.Random(args.seed)

    def log(text: str) -> None:
        print(f"[{time.monotonic() - began:7.1f} s] {text}", flush=True)

    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)
    folders = {name: os.path.join(args.workdir, name)
               for name in ("reference", "killed", "concurrent")}
    failures = []

    reference = Process(folders["reference"])
    code = reference.wait(args.timeout)
    total = time.monotonic() - reference.started
    if code != 0:
        print(f"kill_campaign.py: error: the reference run failed ({code}): "
              f"{reference.last_line()}", file=sys.stderr)
        return 1
    seconds = durations(reference, total)
    log(f"reference run: {total:.1f} s; stage seconds "
        + ", ".join(f"{name} {value:.1f}" for name, value in seconds.items()))

    outcomes = [kill_at(target, folders["killed"], rng, seconds, args.timeout, log)
                for target in targets for _ in range(args.kills_per_stage)]
    failures += [outcome["error"] for outcome in outcomes if outcome["error"]]
    reruns, rerun_failures = complete(folders["killed"], 3, args.timeout, log)
    failures += rerun_failures

    failures += concurrent(folders["concurrent"], args.timeout, log)
    concurrent_reruns, rerun_failures = complete(folders["concurrent"], 3, args.timeout, log)
    failures += rerun_failures

    comparisons = {name: compare(folders["reference"], folders[name])
                   for name in ("killed", "concurrent")}
    for name, report in comparisons.items():
        failures += [f"{name}: {text}" for text in report["mismatches"]]

    kills = [outcome for outcome in outcomes if outcome["killed"]]
    by_stage = {stage: sum(outcome["hit"] == stage for outcome in kills) for stage in STAGES}
    print("\nkill -9 campaign on benchmarks.gap (" + " ".join(GAP_FLAGS) + ")")
    print(f"kills survived: {len(kills)} of {len(outcomes)} targets "
          f"(reruns to complete afterwards: {reruns})")
    for stage in STAGES:
        print(f"  {stage:38s} {by_stage[stage]}")
    unclassified = [outcome["hit"] for outcome in kills if outcome["hit"] not in STAGES]
    if unclassified:
        print(f"  other: {unclassified}")
    for name, report in comparisons.items():
        print(f"{name}: {report['rows']} rows compared with the reference, "
              f"{report['duplicates']} duplicate(s), {len(report['mismatches'])} mismatch(es)")
    print(f"concurrent: two processes at once, then {concurrent_reruns} run(s) to complete")
    print(f"wall time: {time.monotonic() - began:.0f} s")
    if failures:
        print(f"\nFAILED: {len(failures)} problem(s)")
        for text in failures[:50]:
            print(f"  {text}")
        return 1
    print("\nOK: every kill survived; final CSVs equal the uninterrupted run's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
