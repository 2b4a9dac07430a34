"""Run records: atomic concurrent CSV appends, header checks, provenance and run ids."""

import fcntl
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf

from lbgap_tf import results


def test_append_creates_header_and_round_trips_awkward_values(tmp_path):
    path = tmp_path / "sub" / "runs.csv"
    awkward = 'comma, "quote" and\nnewline'
    results.append_row(path, {"run_id": "a", "note": awkward, "loss": 0.25, "empty": None})
    results.append_row(path, {"loss": 1.5, "empty": "x", "run_id": "b", "note": "plain"})
    rows = results.read_rows(path)
    assert rows == [
        {"run_id": "a", "note": awkward, "loss": "0.25", "empty": ""},
        {"run_id": "b", "note": "plain", "loss": "1.5", "empty": "x"},
    ]
    assert path.read_text().splitlines()[0] == "run_id,note,loss,empty"


def test_mismatched_columns_are_rejected_and_leave_the_file_unchanged(tmp_path):
    path = tmp_path / "runs.csv"
    results.append_row(path, {"run_id": "a", "loss": 1.0})
    before = path.read_bytes()
    with pytest.raises(results.ResultsError, match=r"missing \['loss'\].*unexpected \['acc'\]"):
        results.append_row(path, {"run_id": "b", "acc": 0.5})
    with pytest.raises(results.ResultsError, match=r"unexpected \['acc'\]"):
        results.append_row(path, {"run_id": "b", "loss": 1.0, "acc": 0.5})
    with pytest.raises(results.ResultsError, match="empty row"):
        results.append_row(path, {})
    assert path.read_bytes() == before


def test_read_rows_of_a_missing_file_is_empty(tmp_path):
    assert results.read_rows(tmp_path / "absent.csv") == []


_WRITER = textwrap.dedent(
    """
    import sys
    from lbgap_tf import results
    path, writer, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    for index in range(count):
        # 6 kB rows: far beyond PIPE_BUF, so only the lock keeps rows whole.
        results.append_row(path, {"writer": writer, "index": index,
                                  "payload": writer * 6000})
    """
)


def test_concurrent_appends_from_several_processes_keep_every_row_intact(tmp_path):
    path = tmp_path / "runs.csv"
    writers, count = "ABCD", 60
    processes = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(path), writer, str(count)])
        for writer in writers
    ]
    for process in processes:
        assert process.wait(timeout=120) == 0
    rows = results.read_rows(path)
    assert len(rows) == len(writers) * count
    for row in rows:
        assert row["payload"] == row["writer"] * 6000
    for writer in writers:
        indices = [int(row["index"]) for row in rows if row["writer"] == writer]
        assert indices == list(range(count))  # Each writer's rows in its own order.
    assert path.read_text().count("writer,index,payload") == 1


# Appends the row of key "k" (a measurement another process may record first), then "m".
_KEYED_WRITER = textwrap.dedent(
    """
    import sys
    from lbgap_tf import results
    path = sys.argv[1]
    print("appending", flush=True)
    for key in ("k", "m"):
        appended = results.append_row(path, {"key": key, "value": "writer"},
                                       key=lambda row: row["key"])
        print(key, appended, flush=True)
    """
)


def _waits_for_lock(pid: int, path) -> bool:
    """Whether process ``pid`` is queued for a flock on ``path`` (a "->" line of
    /proc/locks: the kernel's list of blocked lock requests)."""
    inode = os.stat(path).st_ino
    with open("/proc/locks", encoding="ascii") as handle:
        for line in handle:
            fields = line.split()
            if "->" in fields and str(pid) in fields \
                    and fields[-3].rsplit(":", 1)[-1] == str(inode):
                return True
    return False


@pytest.mark.skipif(not os.path.exists("/proc/locks"), reason="needs Linux /proc/locks")
def test_a_writer_waits_for_the_lock_and_rechecks_the_rows_under_it(tmp_path):
    path = tmp_path / "sharpness.csv"
    results.append_row(path, {"key": "a", "value": "earlier"})
    before = path.read_bytes()
    fd = os.open(path, os.O_RDWR | os.O_APPEND)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # This test holds the writers' lock ...
        writer = subprocess.Popen([sys.executable, "-c", _KEYED_WRITER, str(path)],
                                  stdout=subprocess.PIPE, text=True)
        assert writer.stdout.readline() == "appending\n"
        deadline = time.monotonic() + 120
        while not _waits_for_lock(writer.pid, path):  # ... and the writer queues for it.
            assert writer.poll() is None, "the writer appended without taking the lock"
            assert time.monotonic() < deadline, "the writer never asked for the lock"
            time.sleep(0.02)
        assert path.read_bytes() == before
        # Meanwhile another process records the measurement of key "k" (under the lock).
        os.write(fd, b"k,other process\n")
    finally:
        os.close(fd)  # Releases the lock.
    output, _ = writer.communicate(timeout=120)
    assert writer.returncode == 0
    assert output.splitlines() == ["k False", "m True"]  # "k" re-checked, not repeated.
    assert results.read_rows(path) == [{"key": "a", "value": "earlier"},
                                       {"key": "k", "value": "other process"},
                                       {"key": "m", "value": "writer"}]


COMPLETE = b'run_id,note,loss\na,plain,0.5\n'
# A row with a quoted newline, doubled quotes and a two-byte character: a writer killed
# mid-write leaves any prefix of it.
ROW = 'b,"line one\nline \u00e9 ""two""",1.5\n'.encode()


def test_a_write_cut_short_at_any_byte_leaves_no_partial_row(tmp_path):
    path = tmp_path / "runs.csv"
    for cut in range(1, len(ROW)):
        path.write_bytes(COMPLETE + ROW[:cut])
        assert results.read_rows(path) == [{"run_id": "a", "note": "plain", "loss": "0.5"}], cut
        assert results.append_row(path, {"run_id": "c", "note": "n", "loss": 2})
        assert path.read_bytes() == COMPLETE + b"c,n,2\n", cut
    path.write_bytes(COMPLETE + ROW)
    assert results.read_rows(path)[1] == {"run_id": "b", "note": 'line one\nline é "two"',
                                          "loss": "1.5"}


def test_a_file_malformed_before_its_end_is_an_error_not_a_fragment(tmp_path):
    path = tmp_path / "runs.csv"
    damaged = b'run_id,note,loss\na,"quoted"x,0.5\nb,plain,1.5\n'
    path.write_bytes(damaged)
    with pytest.raises(results.ResultsError, match="is not a CSV file of this suite"):
        results.read_rows(path)
    with pytest.raises(results.ResultsError, match="is not a CSV file of this suite"):
        results.append_row(path, {"run_id": "c", "note": "n", "loss": 2})
    assert path.read_bytes() == damaged  # Nothing cut off.


_LIMITED_WRITER = textwrap.dedent(
    """
    import resource, sys
    from lbgap_tf import results
    path, limit = sys.argv[1], int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        results.append_row(path, {"run_id": "big", "note": "x" * 20000, "loss": 1})
    except results.ResultsError as error:
        print(error)
    """
)


def test_a_write_that_falls_short_is_undone(tmp_path):
    # A file size limit 100 bytes above the file makes the kernel write only part of the
    # 20 kB row, as a full disk would.
    path = tmp_path / "runs.csv"
    path.write_bytes(COMPLETE)
    done = subprocess.run([sys.executable, "-c", _LIMITED_WRITER, str(path),
                           str(len(COMPLETE) + 100)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"short write to {path} (100 of 20007 bytes, undone)")
    assert path.read_bytes() == COMPLETE


def test_run_ids_are_deterministic_from_the_key_and_unique_without_one():
    key = {"model": "F1", "batch_size": 256, "nested": {"seed": 3}}
    same = {"nested": {"seed": 3}, "batch_size": 256, "model": "F1"}
    run_id = results.new_run_id(key, prefix="F1-")
    assert run_id == results.new_run_id(same, prefix="F1-")
    assert run_id.startswith("F1-") and len(run_id) == 3 + 12
    assert run_id != results.new_run_id({**key, "batch_size": 6000}, prefix="F1-")
    fresh = {results.new_run_id() for _ in range(50)}
    assert len(fresh) == 50


def test_provenance_names_versions_revision_and_strategy():
    record = results.provenance(tf.distribute.get_strategy())
    assert record["tf_version"] == tf.__version__
    try:  # The checkout's commit, or "unknown" without git or from a source tarball.
        head = subprocess.run(
            ["git", "-C", os.path.dirname(os.path.dirname(results.__file__)), "rev-parse",
             "HEAD"], capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        head = "unknown"
    assert record["git_revision"].removesuffix("-dirty") == head
    assert record["replicas"] == 1 and record["strategy"] == "default"
    assert record["device_kind"].startswith("CPU")


def test_git_revision_outside_a_repository_is_unknown(tmp_path):
    assert results.git_revision(str(tmp_path)) == "unknown"


def test_mean_std_matches_numpy_sample_std():
    values = [99.61, 99.70, 99.66, 99.72, 99.60]
    mean, std = results.mean_std(values)
    assert mean == pytest.approx(np.mean(values), abs=1e-12)
    assert std == pytest.approx(np.std(values, ddof=1), abs=1e-12)
    assert results.mean_std([2.5]) == (2.5, 0.0)
    assert results.format_mean_std(98.031, 0.07) == "98.03 ± 0.07"
    with pytest.raises(results.ResultsError):
        results.mean_std([])


def test_a_measurement_recorded_by_another_process_is_not_appended_twice(tmp_path):
    from lbgap_tf import sharpness_rows

    path = str(tmp_path / "sharpness.csv")
    row = {column: "" for column in sharpness_rows.SHARPNESS_COLUMNS}
    row.update(run_id="r", subspace="full", epsilon=0.001, solver="ascent", max_iter=10,
               eval_examples=100, eval_seed=0, eval_batch_size=50, sharpness=1.5)
    assert sharpness_rows.append(path, row)
    # The same measurement with another outcome (a racing process) is refused ...
    assert not sharpness_rows.append(path, dict(row, sharpness=2.5, epsilon="1e-3"))
    # ... the same settings on another evaluation subset are a measurement of their own.
    assert sharpness_rows.append(path, dict(row, eval_seed=1, sharpness=3.5))
    assert [r["sharpness"] for r in results.read_rows(path)] == ["1.5", "3.5"]
