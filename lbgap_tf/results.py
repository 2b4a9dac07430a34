"""Run records: one finished run = one CSV row, appended atomically, with provenance.

A results CSV (``runs.csv``, ``sharpness.csv``, ...) is append-only. ``append_row`` makes
every append safe when several processes write the same file at once (parallel trials,
several workers of a sweep, two binaries on one output folder): it takes an exclusive
``fcntl`` lock, writes the whole encoded row (and the header, when it creates the file) with a
single ``os.write`` and ``fsync``s before unlocking, so rows never interleave. Given a ``key``,
it re-reads the rows under that lock and appends nothing when a row of the same key is there:
two processes that measured the same thing record it once. A row's columns must equal the
file's header, so one file never mixes two record layouts.

A writer killed in the middle of its ``os.write`` (the kernel may stop a write at a page
boundary on SIGKILL; a full disk stops it anywhere) leaves a fragment of a row after the last
complete one. No reader counts it: a record is complete when its last line ends with a newline
outside quotes. The next ``append_row`` cuts the fragment off before appending, and a writer
that sees its own write fall short truncates it away before raising.

``read_rows`` returns the complete rows as dicts of strings (``pandas.read_csv`` reads the same
files with types). ``provenance`` collects what a row needs to be trusted later: TensorFlow and
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
from collections.abc import Callable, Hashable, Mapping, Sequence

_REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ResultsError(ValueError):
    """A results file cannot take or give a row (wrong columns, unreadable file, ...)."""


def _encode(values: Sequence[object]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(
        ["" if value is None else value for value in values]
    )
    return buffer.getvalue()


def _read_all(fd: int) -> bytes:
    """The whole content of the open file ``fd``."""
    chunks, offset = [], 0
    while True:
        chunk = os.pread(fd, 1 << 20, offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)


def _complete_records(data: bytes, path: str) -> tuple[list[list[str]], int]:
    """The complete CSV records of ``data`` (blank lines dropped) and the number of bytes they
    span. A record is complete when its last line ends with a newline and its quotes are
    closed; what follows the last complete record is the fragment of an interrupted write.

    Raises:
      ResultsError: ``data`` (the file ``path``) is malformed before its end, so it was not
        written by ``append_row`` alone; nothing is cut off such a file.
    """
    lines, start = [], 0
    while start < len(data):
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end + 1
        lines.append(data[start:end])
        start = end
    consumed = 0

    def feed():
        nonlocal consumed
        for line in lines:
            consumed += len(line)
            yield line.decode("utf-8", errors="replace")

    records, complete = [], 0
    try:
        for record in csv.reader(feed(), strict=True):
            if data[consumed - 1:consumed] != b"\n":
                break
            complete = consumed
            if record:
                records.append(record)
    except csv.Error as error:
        if consumed < len(data) or "unexpected end of data" not in str(error):
            raise ResultsError(f"{path} is not a CSV file of this suite ({error} near byte "
                               f"{consumed}): move it away or repair it") from error
        # Else an unclosed quote at the end: the fragment of an interrupted write.
    return records, complete


def _checked_write(fd: int, path: str, data: bytes, keep: int) -> None:
    """Writes ``data`` in one ``os.write``; on a short or failed write, truncates the file
    back to ``keep`` bytes (no fragment stays) and raises ``ResultsError``."""
    try:
        written = os.write(fd, data)
    except OSError as error:
        os.ftruncate(fd, keep)
        raise ResultsError(f"cannot write to {path}: {error.strerror}; check free disk space "
                           "and permissions") from error
    if written != len(data):
        os.ftruncate(fd, keep)
        raise ResultsError(
            f"short write to {path} ({written} of {len(data)} bytes, undone): check free disk "
            "space")


def append_row(path: str | os.PathLike, row: Mapping[str, object], *,
               key: Callable[[dict[str, str]], Hashable] | None = None) -> bool:
    """Appends ``row`` to the CSV file ``path``, creating it (with a header) if needed.

    Safe under concurrent writers from several processes: the header check, the ``key``
    check and the append happen under an exclusive ``fcntl.flock``, the encoded bytes go out
    in one ``os.write`` and are ``fsync``ed before the lock is released. Values are written
    with ``str()``; ``None`` becomes an empty field. The row's column order is the file's
    header order. A fragment left by a writer that died mid-write is cut off first.

    Args:
      key: when given, a function of a row as ``read_rows`` returns it (a dict of strings);
        the row is not appended when a row of the file has the same key.

    Returns:
      Whether the row was appended (False: a row of the same ``key`` was there already).

    Raises:
      ResultsError: the row is empty, its columns differ from the existing header, or the
        write failed (the file is left as it was).
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
        data = _read_all(fd)
        records, complete = _complete_records(data, path)
        if complete < len(data):
            os.ftruncate(fd, complete)  # The fragment of a writer that died mid-write.
        if not records:
            header = list(row)
            payload = _encode(header) + _encode([row[column] for column in header])
        else:
            header = records[0]
            if set(header) != set(row) or len(header) != len(row):
                missing = [column for column in header if column not in row]
                extra = [column for column in row if column not in header]
                raise ResultsError(
                    f"row columns do not match the header of {path}: missing {missing}, "
                    f"unexpected {extra}; write this kind of record to a new file (another "
                    "--output_dir) or move the old file away"
                )
            payload = _encode([row[column] for column in header])
            if key is not None:
                [written_back] = _complete_records(payload.encode("utf-8"), path)[0]
                wanted = key(dict(zip(header, written_back, strict=True)))
                if any(key(dict(zip(header, record, strict=False))) == wanted
                       for record in records[1:]):
                    return False
        _checked_write(fd, path, payload.encode("utf-8"), complete)
        os.fsync(fd)
        return True
    finally:
        os.close(fd)  # Closing releases the lock.


def read_rows(path: str | os.PathLike) -> list[dict[str, str]]:
    """All complete rows of the CSV file ``path`` as dicts of strings; [] if the file does not
    exist. Reads under a shared lock, so a concurrent ``append_row`` is seen whole or not at
    all; the fragment of a writer that died mid-write is not a row.
    """
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return []
    except OSError as error:
        raise ResultsError(f"cannot read results file {path}: {error.strerror}") from error
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        records, _ = _complete_records(_read_all(fd), path)
    finally:
        os.close(fd)
    if not records:
        return []
    header = records[0]
    return [dict(zip(header, record, strict=False)) for record in records[1:]]


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


def measured_where(strategy: Mapping[str, object], precision: str,
                   nondefault_flags: str = "") -> dict[str, object]:
    """The closing columns of a measurement row: where it ran (``strategy``, a
    ``distribute.describe`` dict: strategy, replicas, device_kind), the model's ``precision``,
    the software (tf_version, keras_version, git_revision), when it finished (UTC) and the
    binary's non-default flags."""
    record = provenance()
    return {
        "strategy": strategy["strategy"],
        "replicas": strategy["replicas"],
        "device_kind": strategy["device_kind"],
        "precision": precision,
        "tf_version": record["tf_version"],
        "keras_version": record["keras_version"],
        "git_revision": record["git_revision"],
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "nondefault_flags": nondefault_flags,
    }


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
