"""Running the benchmark binaries in tests, and reading their stderr by the error contract.

The contract (README, "Errors and logs"; ``benchmarks/common.py``): a failing binary's error is
exactly one line, ``PROGRAM: error: MESSAGE``, the LAST line on stderr; every other stderr
line is TensorFlow's native log output or one of the binary's own log lines. A native record
starts with a line matching ``NATIVE_RECORD_START`` and continues over the following lines up
to the next line that starts a native record, an own log line (``PYTHON_LOG_LINE``), a Python
traceback or the error line. ``split_stderr`` applies exactly that; every binary test reads
stderr through it, so no test depends on whether TensorFlow printed native lines.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_NATIVE_SOURCE = r"[^\s\]]+\.(?:cc|cpp|cxx|c|h|hpp|hh|inc):\d+\] "
NATIVE_RECORD_START = re.compile(
    r"^(?:[IWEF]\d{4} \d{2}:\d{2}:\d+\.\d+ +\d+ " + _NATIVE_SOURCE  # absl's C++ format
    + r"|\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d+: [IWEF] " + _NATIVE_SOURCE  # TSL's format
    + r"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to "
      r"STDERR$)")
PYTHON_LOG_LINE = re.compile(r"^[IWEF]\d{4} \d{2}:\d{2}:\d{2}\.\d+ +\d+ [^\s\]]+\.py:\d+\] ")
TRACEBACK = "Traceback (most recent call last):"

# What the noise test sets: every native record TensorFlow logs, and oneDNN's notice, which
# x86-64 builds print when oneDNN's custom operations are on.
NOISY_TENSORFLOW = {"TF_CPP_MIN_LOG_LEVEL": "0", "TF_ENABLE_ONEDNN_OPTS": "1"}


def environment(**overrides: str) -> dict:
    """The test process's environment for a binary: no TF_CONFIG and no TF_CPP_MIN_LOG_LEVEL
    (the binary applies its own logging policy, as for a user), plus ``overrides``."""
    env = dict(os.environ)
    for name in ("TF_CONFIG", "TF_CPP_MIN_LOG_LEVEL"):
        env.pop(name, None)
    env.update(overrides)
    return env


def start(module: str, *args: str, env: dict | None = None) -> subprocess.Popen:
    """``python -m module *args`` from the repository root, stdout and stderr captured."""
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO,
                            env=env or environment(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of a started binary; fails the test on a timeout."""
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"{process.args} timed out; stderr:\n{err[-3000:]}")
    return process.returncode, out, err


def run(module: str, *args: str, env: dict | None = None,
        timeout: float = 300) -> tuple[int, str, str]:
    """``start`` then ``finish``."""
    return finish(start(module, *args, env=env), timeout)


def program_name(module: str) -> str:
    """The PROGRAM of a binary's error line: its file name, e.g. ``train.py``."""
    return module.rsplit(".", 1)[-1] + ".py"


def split_stderr(err: str, program: str) -> tuple[list[str], list[str]]:
    """(TensorFlow's native lines, the binary's own lines) of ``err``, each in order."""
    native, own = [], []
    in_native_record = False
    for line in err.splitlines():
        if NATIVE_RECORD_START.match(line):
            in_native_record = True
        elif (PYTHON_LOG_LINE.match(line) or line.startswith(TRACEBACK)
              or line.startswith(f"{program}: ")):
            in_native_record = False
        (native if in_native_record else own).append(line)
    return native, own


def error_message(err: str, program: str, *, only_own_line: bool = True) -> str:
    """MESSAGE of the error line, after checking ``err`` against the contract: the last line
    is ``PROGRAM: error: MESSAGE``, no traceback anywhere and, with ``only_own_line``, no
    other own line."""
    _, own = split_stderr(err, program)
    lines = err.splitlines()
    assert lines, "stderr is empty: no error line"
    prefix = f"{program}: error: "
    assert lines[-1].startswith(prefix), f"the last stderr line is no error line:\n{err}"
    assert TRACEBACK not in err, err
    assert sum(line.startswith(prefix) for line in own) == 1, err
    if only_own_line:
        assert own == [lines[-1]], f"own lines besides the error line: {own[:-1]}\n{err}"
    return lines[-1][len(prefix):]
