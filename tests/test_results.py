"""Run records: atomic concurrent CSV appends, header checks, provenance and run ids."""

import os
import subprocess
import sys
import textwrap

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
