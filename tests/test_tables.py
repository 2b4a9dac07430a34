"""Tables 2-4 from hand-made rows: mean ± std checked against NumPy."""

import csv
import dataclasses
import math

import numpy as np
import pytest

from lbgap_tf import gap, report, sharpness, sharpness_rows, tables, train
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


def _solver_rows(solver, sb, lb, subspace="full", distribution=""):
    _, _, sharp = make_rows(sb_test=[0.9] * len(sb), lb_test=[0.9] * len(lb), sb_sharp=sb,
                            lb_sharp=lb, solver=solver)
    for row in sharp:
        row.update(subspace=subspace, subspace_dim="" if subspace == "full" else "100",
                   subspace_distribution=distribution, seed=row["run_id"].rsplit("-", 1)[1])
    return sharp


def test_best_lower_bound_per_run_and_one_group_per_distribution():
    rows = (_solver_rows("lbfgsb", [2.0, 4.0], [0.001, 500.0])
            + _solver_rows("ascent", [3.0, 1.0], [300.0, 100.0])
            + _solver_rows("lbfgsb", [0.5], [10.0], "random", "normal")
            + _solver_rows("lbfgsb", [0.05], [0.002], "random", "normal_1_over_p"))
    full = tables.sharpness_table(rows, subspace="full")
    assert [row["solver"] for row in full] == ["ascent", "lbfgsb"]
    # Per run the larger of the two solvers: SB [3, 4], LB [300, 500].
    for row in full:
        assert row["eps0.001_SB_best_mean"] == pytest.approx(3.5)
        assert row["eps0.001_LB_best_mean"] == pytest.approx(400.0)
        assert row["eps0.001_LB_best_std"] == pytest.approx(np.std([300, 500], ddof=1))
        assert row["eps0.001_best_ratio"] == pytest.approx(400 / 3.5)
    assert full[1]["eps0.001_ratio"] == pytest.approx(250.0005 / 3.0)
    random = tables.sharpness_table(rows, subspace="random")
    assert [(row["subspace_distribution"], row["eps0.001_ratio"]) for row in random] == [
        ("normal", pytest.approx(20.0)), ("normal_1_over_p", pytest.approx(0.04))]


def test_summary_flags_disagreeing_and_stalled_solvers_and_names_table4_a():
    rows = (_solver_rows("lbfgsb", [2.0], [0.001]) + _solver_rows("ascent", [3.0], [300.0])
            + _solver_rows("lbfgsb", [0.5], [10.0], "random", "normal"))
    for row in rows:
        row.update(eval_examples="100", eval_batch_size="100", bn_mode="batch", max_iter="10")
    rows[0]["radius_fraction"] = "0.5"
    rows[1]["radius_fraction"] = "1e-4"  # LB lbfgsb stayed near y = 0.
    lines = report.solver_checks(rows, disagreement_factor=10, stall_fraction=0.01)
    assert lines == [
        "- **STALLED**: F1 LB seed 0, full space, ε=0.001, lbfgsb: its best point has "
        "‖y‖/‖r‖ = 0.0001 (< 0.01), value 0.001: a lower bound that may be far below the "
        "maximum.",
        "- **SOLVERS DISAGREE** by 3e+05x (> 10x): F1 LB seed 0, full space, ε=0.001: "
        "ascent 300, lbfgsb 0.001; trust the best lower bound."]
    assert report.solver_checks(rows, disagreement_factor=1e6, stall_fraction=0) == []
    runs, pairs, _ = make_rows(sb_test=[0.9], lb_test=[0.89], sb_sharp=[1], lb_sharp=[1])
    for run in runs:
        run.update(global_batch_size="256", stop_rule="epochs", epochs_run="1")
    outcome = gap.GapOutcome(
        run_rows=runs, pair_rows=pairs, sharpness_rows=rows,
        table2=tables.table2(runs, pairs), table3=tables.sharpness_table(rows, subspace="full"),
        table4=tables.sharpness_table(rows, subspace="random"), wall_time_s=1.0,
        table4_distribution="normal")
    text = report.summary(outcome, disagreement_factor=10)
    assert "**SOLVERS DISAGREE** by 3e+05x" in text
    assert "The paper's row stands beside A = normal" in text
    assert "| F1 (paper) | fashion_mnist | ? | lbfgsb |" not in text  # Not the paper's data.
    assert "| F1 | fashion_mnist | normal | lbfgsb | 1 | 0.500 ± 0.000 | 10.00 ± 0.00 | 20 |" \
        in text


def test_distribution_of_a_is_part_of_the_measurement_key_and_of_gap_id():
    def key(dim, distribution):
        return sharpness_rows.measurement_key(
            "run", subspace_dim=dim, subspace_seed=1, epsilon=1e-3, solver="lbfgsb",
            max_iter=10, eval_examples=100, eval_seed=None, eval_batch_size=100,
            subspace_distribution=distribution)

    keys = {key(100, distribution) for distribution in sharpness.SUBSPACE_DISTRIBUTIONS}
    assert len(keys) == len(sharpness.SUBSPACE_DISTRIBUTIONS)
    assert key(None, "normal") == key(None, "uniform")  # The full space has no A.
    row = dict(zip(sharpness_rows.KEY_COLUMNS, key(100, "uniform"), strict=True))
    assert sharpness_rows.row_key(row) == key(100, "uniform")
    config = train.TrainConfig(model="F1", dataset="synthetic", regime="SB", batch_size=8)
    ids = {gap.GapConfig(models=("F1",), sb=config,
                         lb=dataclasses.replace(config, regime="LB"),
                         sharpness=gap.SharpnessPlan(subspace_distributions=(d,))).gap_id("F1")
           for d in sharpness.SUBSPACE_DISTRIBUTIONS}
    assert len(ids) == len(sharpness.SUBSPACE_DISTRIBUTIONS)
    with pytest.raises(sharpness.SharpnessError, match="unknown subspace distribution 'x'"):
        gap.SharpnessPlan(subspace_distributions=("x",))
