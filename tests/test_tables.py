"""Tables 2-4 from hand-made rows: mean ± std checked against NumPy."""

import csv
import math

import numpy as np
import pytest

from lbgap_tf import tables
from tests.gap_rows import make_rows


@pytest.fixture
def rows():
    return make_rows(sb_test=[0.90, 0.92, 0.91], lb_test=[0.89, 0.90, 0.86],
                     sb_sharp=[2.0, 4.0, 3.0], lb_sharp=[300.0, 500.0, 400.0],
                     sb_train=[0.990, 0.995, 1.0], distance_ratio=[3.0, 5.0, 7.0])


def test_table2_mean_and_sample_std(rows):
    runs, pairs, _ = rows
    [row] = tables.table2(runs, pairs)
    assert (row["model"], row["dataset"], row["trials"]) == ("F1", "fashion_mnist", 3)
    sb_test = np.array([90.0, 92.0, 91.0])
    assert row["test_SB_mean"] == pytest.approx(sb_test.mean())
    assert row["test_SB_std"] == pytest.approx(sb_test.std(ddof=1))
    assert row["test_SB"] == "91.00 ± 1.00"
    assert row["train_SB_mean"] == pytest.approx(np.mean([99.0, 99.5, 100.0]))
    # Gaps 1, 2, 5 pp: mean 8/3, sample variance (ddof=1) (25 + 4 + 49) / 9 / 2 = 13/3.
    assert row["test_gap_mean"] == pytest.approx(8 / 3)
    assert row["test_gap_std"] == pytest.approx(math.sqrt(13 / 3))
    # Ratios 3, 5, 7: mean 5, sample std (ddof=1) exactly 2 (ddof=0 would give 1.63).
    assert (row["distance_ratio_mean"], row["distance_ratio_std"]) == (5.0, 2.0)
    assert row["distance_ratio"] == "5.00 ± 2.00"


def test_sharpness_table_ratio_and_formatting(rows):
    _, _, sharp = rows
    [row] = tables.sharpness_table(sharp, subspace="full")
    assert row["eps0.001_SB_mean"] == pytest.approx(3.0)
    assert row["eps0.001_LB_std"] == pytest.approx(np.std([300, 500, 400], ddof=1))
    assert row["eps0.001_ratio"] == pytest.approx(400.0 / 3.0)
    assert tables.sharpness_table(sharp, subspace="random") == []


def test_small_values_keep_three_significant_digits():
    _, _, sharp = make_rows(sb_test=[0.9], lb_test=[0.9], sb_sharp=[0.0113],
                            lb_sharp=[0.5])
    [row] = tables.sharpness_table(sharp, subspace="full")
    assert row["eps0.001_SB"] == "0.0113 ± 0.0000"
    assert row["eps0.001_LB"] == "0.500 ± 0.000"


def test_single_trial_has_zero_std(rows):
    runs, pairs, _ = make_rows(sb_test=[0.9], lb_test=[0.8], sb_sharp=[1], lb_sharp=[2])
    [row] = tables.table2(runs, pairs)
    assert row["test_gap_std"] == 0.0


def test_write_table_round_trips_through_csv(rows, tmp_path):
    runs, pairs, _ = rows
    path = tmp_path / "table2.csv"
    tables.write_table(path, tables.table2(runs, pairs))
    with open(path, newline="", encoding="utf-8") as handle:
        [row] = list(csv.DictReader(handle))
    assert float(row["test_SB_mean"]) == pytest.approx(91.0)
    assert row["test_SB"] == "91.00 ± 1.00"
    assert [p.name for p in tmp_path.iterdir()] == ["table2.csv"]  # No temp files left.
