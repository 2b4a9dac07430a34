"""The Markdown summary's findings on hand-made results: the gap's sign, whether both regimes
fit the training set, per-trial LB/SB sharpness ratios (undefined ones explained), the
distance ratio and the data set."""

from lbgap_tf import gap, report, tables
from tests.gap_rows import make_rows


def _outcome(rows):
    runs, pairs, sharp = rows
    for run in runs:  # What the summary's setup lines read besides the findings.
        run.update(global_batch_size="256" if run["regime"] == "SB" else "6000",
                   stop_rule="epochs", epochs_run="20")
    for row in sharp:
        row["bn_mode"] = "batch"
    return gap.GapOutcome(
        run_rows=runs, pair_rows=pairs, sharpness_rows=sharp,
        table2=tables.table2(runs, pairs),
        table3=tables.sharpness_table(sharp, subspace="full"),
        table4=tables.sharpness_table(sharp, subspace="random"), wall_time_s=60.0)


def _findings(text):
    block = text.split("## Findings\n\n", 1)[1].split("\n\n", 1)[0]
    return block.splitlines()


def test_findings_of_the_papers_sign_with_fitted_regimes():
    # Gaps 2 and 4 pp (mean 3, std 1.41); LB/SB sharpness 50 and 20; data set MNIST (F1's).
    rows = make_rows(sb_test=[0.98, 0.97], lb_test=[0.96, 0.93], sb_sharp=[2.0, 5.0],
                     lb_sharp=[100.0, 100.0], sb_train=[0.999, 1.0], lb_train=[0.995, 0.993],
                     distance_ratio=[4.0, 6.0], dataset="mnist")
    assert _findings(report.summary(_outcome(rows))) == [
        "- **F1 on mnist**: SB − LB test accuracy = 3.00 ± 1.41 percentage points over 2 "
        "trial(s): SB generalises better than LB, the paper's sign.",
        "  Both regimes fit the training set (SB 99.95 ± 0.07 %, LB 99.40 ± 0.14 %; ≥ 99 %), "
        "so the comparison is between minimizers.",
        "  LB/SB sharpness, full space, lbfgsb, ε=0.001: per trial [50, 20], smallest 20x.",
        "  ‖x_SB−x0‖ / ‖x_LB−x0‖ = 5.00 ± 1.41 (paper: 3 – 10).",
    ]


def test_findings_of_a_reversed_gap_under_training_and_a_stuck_solver():
    rows = make_rows(sb_test=[0.90, 0.90], lb_test=[0.91, 0.92], sb_sharp=[0.0, 2.0],
                     lb_sharp=[0.0, 3.0], sb_train=[0.95, 0.97], lb_train=[0.999, 0.999],
                     dataset="fashion_mnist")
    findings = _findings(report.summary(_outcome(rows)))
    assert findings[0].endswith(
        "= -1.50 ± 0.71 percentage points over 2 trial(s): LB generalises better than SB: "
        "the gap is REVERSED relative to the paper.")
    assert findings[1] == (
        "  Training accuracy SB 96.00 ± 1.41 %, LB 99.90 ± 0.00 %: not both ≥ 99 %, so the "
        "test gap may reflect under-training rather than sharpness.")
    assert findings[2] == (
        "  LB/SB sharpness, full space, lbfgsb, ε=0.001: per trial [undefined: LB and SB "
        "sharpness both 0: the solver found nothing above f(x), stuck at y = 0 (a false flat "
        "minimum), 1.5], smallest 1.5x.")
    assert findings[4] == ("  Data: fashion_mnist, not the paper's mnist; the paper's numbers "
                           "are not shown beside these.")
