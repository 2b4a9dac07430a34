"""Run records: one finished run = one CSV row, appended atomically, with provenance.

A results CSV (``runs.csv``, ``sharpness.csv``, ...) is append-only. ``append_row`` makes
every append safe when several processes write the same file at once (parallel trials,
several workers of a sweep): it takes an exclusive ``fcntl`` lock, writes the whole encoded
row (and the header, when it creates the file) with a single ``os.write`` and ``fsync``s
before unlocking, so rows never interleave and a crashed writer leaves no partial row. A
row's columns must equal the file's header, so one file never mixes two record layouts.

``read_rows`` returns the rows as dicts of strings (``pandas.read_csv`` reads the same files
with types). ``provenance`` collects what a row needs to be trusted later: TensorFlow and
Keras versions, the git revision of the code, the host and (given a strategy) the device.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import math
import os
import platform
import socket
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence

_REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ResultsError(ValueError):
    """A results file cannot take or give a row (wrong columns, unreadable file, ...)."""


def _encode(values: Sequence[object]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(
        ["" if value is None else value for value in values]
    )
    return buffer.getvalue()


def _read_header(fd: int) -> list[str] | None:
    """The header of the open CSV file ``fd`` (None when the file is empty)."""
    chunks = []
    offset = 0
    while True:
        chunk = os.pread(fd, 65536, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
        if b"\n" in chunk:
            break
    if not chunks:
        return None
    first_line = b"".join(chunks).split(b"\n", 1)[0].decode("utf-8")
    return next(csv.reader([first_line]))


def append_row(path: str | os.PathLike, row: Mapping[str, object]) -> None:
    """Appends ``row`` to the CSV file ``path``, creating it (with a header) if needed.

    Safe under concurrent writers from several processes: the header check and the append
    happen under an exclusive ``fcntl.flock``, the encoded bytes go out in one ``os.write``
    and are ``fsync``ed before the lock is released. Values are written with ``str()``;
    ``None`` becomes an empty field. The row's column order is the file's header order.

    Raises:
      ResultsError: the row is empty, or its columns differ from the existing header.
    """
    if not row:
        raise ResultsError("cannot append an empty row: give at least one column")
    path = os.fspath(path)
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        header = _read_header(fd)
        if header is None:
            header = list(row)
            payload = _encode(header) + _encode([row[key] for key in header])
        else:
            if set(header) != set(row) or len(header) != len(row):
                missing = [key for key in header if key not in row]
                extra = [key for key in row if key not in header]
                raise ResultsError(
                    f"row columns do not match the header of {path}: missing {missing}, "
                    f"unexpected {extra}; write this kind of record to a new file (another "
                    "--output_dir) or move the old file away"
                )
            payload = _encode([row[key] for key in header])
        data = payload.encode("utf-8")
        written = os.write(fd, data)
        if written != len(data):
            raise ResultsError(
                f"short write to {path} ({written} of {len(data)} bytes): check free disk space"
            )
        os.fsync(fd)
    finally:
        os.close(fd)  # Closing releases the lock.


def read_rows(path: str | os.PathLike) -> list[dict[str, str]]:
    """All rows of the CSV file ``path`` as dicts of strings; [] if the file does not exist.

    Reads under a shared lock, so a concurrent ``append_row`` is seen whole or not at all.
    """
    path = os.fspath(path)
    try:
        handle = open(path, newline="", encoding="utf-8")  # noqa: SIM115 (locked below)
    except FileNotFoundError:
        return []
    except OSError as error:
        raise ResultsError(f"cannot read results file {path}: {error.strerror}") from error
    with handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
        return list(csv.DictReader(handle))


def git_revision(repo_dir: str = _REPO_DIR) -> str:
    """The commit hash of ``repo_dir`` (with "-dirty" if tracked files changed), else "unknown"."""
    try:
        revision = subprocess.run(
            ["git", "-C", repo_dir, "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", repo_dir, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not revision:
        return "unknown"
    return revision + ("-dirty" if status else "")


def provenance(strategy=None) -> dict[str, object]:
    """Where and with what a result was produced, as row columns.

    Keys: tf_version, keras_version, python_version, git_revision, hostname, and, when a
    ``tf.distribute.Strategy`` is given, strategy, replicas, workers and device_kind (see
    ``lbgap_tf.distribute.describe``).
    """
    import keras
    import tensorflow as tf

    record: dict[str, object] = {
        "tf_version": tf.__version__,
        "keras_version": keras.__version__,
        "python_version": platform.python_version(),
        "git_revision": git_revision(),
        "hostname": socket.gethostname(),
    }
    if strategy is not None:
        from lbgap_tf import distribute

        record.update(distribute.describe(strategy))
    return record


def new_run_id(key: Mapping[str, object] | None = None, *, prefix: str = "") -> str:
    """A run id: deterministic from ``key`` when given, else unique.

    With ``key`` (a JSON-serialisable mapping, e.g. a resolved config), the id is
    ``prefix`` + the first 12 hex digits of the SHA-256 of its canonical JSON, so the same
    configuration always maps to the same id (a rerun finds and resumes its run directory).
    Without it, the id is a UTC timestamp plus random hex, unique across processes.
    """
    if key is not None:
        canonical = json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)
        return prefix + hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return f"{prefix}{stamp}-{uuid.uuid4().hex[:8]}"


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for a single value) of ``values``."""
    if not values:
        raise ResultsError("mean_std needs at least one value")
    count = len(values)
    mean = math.fsum(values) / count
    if count == 1:
        return mean, 0.0
    variance = math.fsum((value - mean) ** 2 for value in values) / (count - 1)
    return mean, math.sqrt(variance)


def format_mean_std(mean: float, std: float, digits: int = 2) -> str:
    """The paper's "mean ± std" cell, e.g. ``format_mean_std(98.031, 0.07) == "98.03 ± 0.07"``."""
    return f"{mean:.{digits}f} ± {std:.{digits}f}"
