"""Checks that every install variant in setup.cfg resolves against the package index.

For each extra of setup.cfg (cpu, gpu, tpu, each together with test), pip resolves the whole
dependency tree of ``.[EXTRA,test]`` for this Python as ``pip install`` would on a fresh
machine, and installs nothing (``--dry-run --ignore-installed``). A pin that the index does
not have, or pins that conflict, fail the check with pip's own message.

pip reads each wheel's metadata through HTTP range requests (``--use-feature=fast-deps``)
instead of downloading the wheel: the gpu variant's CUDA wheels weigh about 3 GB, the
metadata pip needs some 30 MB. pip runs ``--isolated`` (no user configuration, no ``PIP_*``
variables, so no local mirror or find-links) and sees the index a fresh machine sees: PyPI,
unless the machine-wide pip configuration names another. Where that index is unreachable the
check says so and is skipped.

    .venv/bin/python scripts/check_extras.py    # .ci/run runs it before the test suite

Exit status 0: every variant resolves (or the index is unreachable, or pip lost it twice while
resolving a variant: that variant is reported SKIPPED); 1: one does not resolve.
"""

import configparser
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_EXTRA = "test"
SHOWN = ("tensorflow", "tensorflow-cpu", "tensorflow-tpu", "libtpu", "keras",
         "tensorflow-datasets", "numpy", "nvidia-cudnn-cu12")
PIP = [sys.executable, "-m", "pip", "--isolated", "--disable-pip-version-check",
       "--timeout", "30", "--retries", "2"]


def variants() -> list[str]:
    """Every extra of setup.cfg but test, each together with test: e.g. ["cpu,test", ...]."""
    config = configparser.ConfigParser()
    config.read(os.path.join(REPO, "setup.cfg"))
    extras = list(config["options.extras_require"])
    return [f"{extra},{TEST_EXTRA}" for extra in extras if extra != TEST_EXTRA]


def index_reachable() -> bool:
    """Whether pip reaches its index: it lists the versions of pip itself there."""
    probe = subprocess.run([*PIP, "index", "versions", "pip"], capture_output=True, text=True)
    return probe.returncode == 0


NETWORK_TROUBLE = ("Could not fetch URL", "Max retries exceeded", "Read timed out",
                   "ConnectionError", "Connection reset", "Temporary failure in name resolution",
                   "HTTP error 5")


def resolve(variant: str) -> tuple[bool | None, str]:
    """(resolves, what pip chose or why not) for ``.[variant]``; resolves is None when pip
    failed on the network rather than on the pins (so nothing was decided)."""
    with tempfile.TemporaryDirectory() as scratch:
        report = os.path.join(scratch, "report.json")
        done = subprocess.run(
            [*PIP, "install", "--dry-run", "--ignore-installed", "--quiet",
             "--use-feature=fast-deps", "--report", report, f".[{variant}]"],
            cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")
                      and not line.startswith("ERROR: Ignored the following versions")]
            if any(marker in done.stderr for marker in NETWORK_TROUBLE):
                return None, "pip lost the index: " + done.stderr.strip().splitlines()[-1]
            return False, "\n".join(errors or done.stderr.splitlines()[-5:])
        with open(report, encoding="utf-8") as handle:
            chosen = {item["metadata"]["name"].lower().replace("_", "-"):
                      item["metadata"]["version"] for item in json.load(handle)["install"]}
    shown = ", ".join(f"{name} {chosen[name]}" for name in SHOWN if name in chosen)
    return True, f"{len(chosen)} packages: {shown}"


def main() -> int:
    python = ".".join(map(str, sys.version_info[:2]))
    if not index_reachable():
        print("check_extras: SKIPPED: the package index is unreachable from here, so the "
              "install variants could not be resolved")
        return 0
    failed = []
    for variant in variants():
        began = time.perf_counter()
        resolves, detail = resolve(variant)
        if resolves is None:  # One more try before calling the network flaky.
            resolves, detail = resolve(variant)
        seconds = time.perf_counter() - began
        if resolves is None:
            print(f"check_extras: .[{variant}] SKIPPED: {detail}", flush=True)
            continue
        verdict = "resolves" if resolves else "DOES NOT RESOLVE"
        print(f"check_extras: .[{variant}] on Python {python} {verdict} ({seconds:.0f} s): "
              f"{detail}", flush=True)
        if not resolves:
            failed.append(variant)
    if failed:
        print(f"check_extras: FAILED: {', '.join(failed)}: fix the pins in setup.cfg "
              "(pip index versions NAME lists what the index has)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
