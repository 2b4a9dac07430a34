"""The remedies experiment end to end on synthetic data: same x0, rows, table, resume, the
remedy grammar and its errors."""

import dataclasses
import os

import pytest

from lbgap_tf import data, gap, results, train
from lbgap_tf.experiments import remedies
from lbgap_tf.reporting import remedies_table
from tests import binaries

SPEC = data.SyntheticSpec(num_train=128, num_test=32, input_shape=(16,), num_classes=4,
                          seed=1, noise=2.0)


def _config(remedy_list, **overrides):
    settings = dict(model="F1", dataset="synthetic", synthetic=SPEC, epochs=2,
                    steps_per_call=8, eval_batch_size=64)
    values = dict(
        models=("F1",),
        sb=train.TrainConfig(**settings, regime="SB", batch_size=32),
        lb=train.TrainConfig(**settings, regime="LB", batch_size=64),
        remedies=remedies.parse_remedies(remedy_list),
        sharpness=gap.SharpnessPlan(epsilons=(1e-3,), subspace_dims=(None,),
                                    solvers=("lbfgsb",), max_iter=1, eval_examples=64,
                                    eval_batch_size=64))
    values.update(overrides)
    return remedies.RemediesConfig(**values)


def test_grammar_parses_components_and_parameters():
    parsed = remedies.parse_remedies(["sqrt_lr:warmup=2+ghost_bn:ghost=250+adapt", "grow"])
    assert [r.label for r in parsed] == ["plain", "sqrt_lr:warmup=2+ghost_bn:ghost=250+adapt",
                                         "grow"]
    context = remedies._Context(sb_batch=256, lb_batch=6000, replicas=2, sb_epochs=50,
                                lb_epochs=40)
    assert parsed[1].fields(context) == {
        "lr_scaling": "sqrt", "reference_batch": 256, "warmup_epochs": 2, "ghost_batch": 250,
        "regime_adaptation": True, "epochs": 50}
    # Defaults: the largest divisor of the per-replica batch (3000) not above 256; one jump
    # from the SB to the LB batch after a quarter of the LB epochs.
    assert remedies.parse_remedy("ghost_bn").fields(context) == {"ghost_batch": 250}
    assert parsed[2].fields(context) == {"batch_size": 256, "batch_schedule": ((11, 6000),)}
    assert remedies.parse_remedy("grow:schedule=3@1024/6@6000").fields(context)[
        "batch_schedule"] == ((3, 1024), (6, 6000))
    assert remedies.parse_remedy("augment").retrains_sb
    assert remedies.parse_remedy("asam:rho=0.5:eta=0.1").fields(context) == {
        "step_remedy": "asam", "sam_rho": 0.5, "asam_eta": 0.1}
    assert remedies.parse_remedy("conservative").fields(context) == {
        "step_remedy": "conservative"}  # The TrainConfig defaults: lambda 1e-3, 3 iterations.
    for text, message in [("magic", "unknown remedy 'magic'"),
                          ("sqrt_lr:warm=2", "KEY one of: warmup"),
                          ("sqrt_lr:warmup", "KEY=VALUE"),
                          ("plain+sqrt_lr", "combines plain"),
                          ("grow:schedule=3-1024", "EPOCH@BATCH"),
                          ("sam+conservative", "combines step remedies"),
                          ("sam:rho=-1", "must be a number >= 0")]:
        with pytest.raises(remedies.RemedyError, match=message):
            remedies.parse_remedy(text).fields(context)
    with pytest.raises(remedies.RemedyError, match="repeats an entry"):
        remedies.parse_remedies(["grow", "grow"])
    assert remedies.gap_closed(2.0, 0.5) == pytest.approx(0.75)
    assert remedies.gap_closed(-1.0, 0.5) is None


@pytest.mark.slow
def test_remedies_end_to_end_from_the_same_x0(tmp_path):
    # Batch growth trains in tests/test_data_remedies.py; here it is one remedy less to train.
    config = _config(["plain", "sqrt_lr:warmup=1+ghost_bn:ghost=32+sam:rho=0.05"])
    out = str(tmp_path)
    outcome = remedies.run(config, output_dir=out, quiet=True)
    rows = outcome.remedy_rows
    assert [row["remedy"] for row in rows] == [
        "plain", "sqrt_lr:warmup=1+ghost_bn:ghost=32+sam:rho=0.05"]
    assert '"step_remedy":"sam"' in rows[1]["lb_settings"]
    runs = {row["run_id"]: row for row in results.read_rows(os.path.join(out, "runs.csv"))}
    assert len(runs) == 3  # SB, plain LB and the remedied LB run.
    sb_id = rows[0]["sb_run_id"]
    x0 = train.load_x0(os.path.join(out, "runs", sb_id, train.X0_FILE))
    for row in rows:
        assert row["sb_run_id"] == sb_id and row["plain_lb_run_id"] == rows[0]["lb_run_id"]
        lb_x0 = train.load_x0(os.path.join(out, "runs", row["lb_run_id"], train.X0_FILE))
        assert all((a == b).all() for a, b in zip(lb_x0, x0, strict=True))  # Same x0.
        sb, lb = runs[row["sb_run_id"]], runs[row["lb_run_id"]]
        gap_pp = 100 * (float(sb["test_accuracy"]) - float(lb["test_accuracy"]))
        assert float(row["gap_pp"]) == pytest.approx(gap_pp)
        plain = float(rows[0]["plain_gap_pp"])
        if plain > 0:
            assert float(row["gap_closed"]) == pytest.approx(1 - gap_pp / plain)
    assert len({row["lb_run_id"] for row in rows}) == 2
    assert runs[rows[1]["lb_run_id"]]["learning_rate"] == "0.001"  # The reference rate.
    # Updates and last batch: 2 epochs of 128 // 64 = 2 updates each.
    assert [(int(r["lb_updates"]), int(r["lb_last_batch"])) for r in rows] == [
        (4, 64), (4, 64)]
    # Every run's full-space sharpness is measured once.
    measured = [row["run_id"] for row in outcome.sharpness_rows]
    assert sorted(measured) == sorted(runs)
    table = remedies_table.table(rows, outcome.sharpness_rows, outcome.run_rows)
    assert [(line["run"], line["remedy"]) for line in table] == [
        ("SB", ""), ("LB", "plain"), ("LB", "sqrt_lr:warmup=1+ghost_bn:ghost=32+sam:rho=0.05")]
    sharp = {row["run_id"]: float(row["sharpness"]) for row in outcome.sharpness_rows}
    assert table[0]["sharpness_lbfgsb_eps0.001"] == pytest.approx(sharp[sb_id])
    assert table[2]["sharpness_lbfgsb_eps0.001"] == pytest.approx(sharp[rows[1]["lb_run_id"]])
    assert table[2]["updates"] == 4 and table[1]["test_accuracy_pct"] == pytest.approx(
        100 * float(rows[0]["lb_test_accuracy"]))
    text = remedies_table.markdown(table)
    label = rows[1]["remedy"]
    assert f"| LB | {label} |" in text and f"- {label}: gap" in text

    # A rerun repeats nothing: no new run, measurement or remedy row.
    sizes = {name: len(results.read_rows(os.path.join(out, name)))
             for name in ("runs.csv", "sharpness.csv", "remedies.csv")}
    again = remedies.run(config, output_dir=out, quiet=True)
    assert {name: len(results.read_rows(os.path.join(out, name))) for name in sizes} == sizes
    assert again.remedy_rows == rows


def test_a_remedy_that_cannot_apply_fails_before_anything_is_written(tmp_path):
    for remedy, message in [("augment", "F1 takes flat vectors"),
                            ("ghost_bn:ghost=48", "does not divide the per-replica batch"),
                            ("grow:schedule=2@16", "each batch must grow"),
                            ("grow:schedule=2@256", "at most the training set")]:
        config = _config(["plain", remedy])
        with pytest.raises(remedies.RemedyError, match=message):
            remedies.run(config, output_dir=str(tmp_path), quiet=True)
        assert os.listdir(tmp_path) == []
    with pytest.raises(remedies.RemedyError, match="must not set augment"):
        _config(["plain"], lb=dataclasses.replace(_config(["plain"]).lb, model="C1",
                                                  augment=True))


def test_binary_refuses_a_bad_remedy_in_one_line(tmp_path):
    code, _, err = binaries.run(
        "benchmarks.remedies", "--dataset=synthetic", "--remedies=plain,augment",
        f"--output_dir={tmp_path}")
    assert code == 1
    # The data is loaded (and logged) before the check; no training, nothing written.
    message = binaries.error_message(err, "remedies.py", only_own_line=False)
    assert "F1 takes flat vectors" in message
    assert os.listdir(tmp_path) == []


def _line(run, remedy, test, gap_pp, closed, sharp, trials, std=None):
    return {"model": "F1", "dataset": "fashion_mnist", "run": run, "remedy": remedy,
            "trials": trials, "test_accuracy_pct": test, "test_accuracy_pct_std": std,
            "train_accuracy_pct": 99.0, "train_accuracy_pct_std": std, "gap_pp": gap_pp,
            "gap_pp_std": std, "gap_closed": closed, "gap_closed_std": std,
            "sharpness_lbfgsb_eps0.001": sharp, "sharpness_lbfgsb_eps0.001_std": std,
            "epochs": 20, "updates": 200, "wall_time_s": 100.0}


@pytest.mark.parametrize("trials, std", [(1, None), (3, 0.25)])
def test_one_trial_shows_no_spread_and_says_its_verdicts_are_hints(trials, std):
    table = [_line("SB", "", 89.5, None, None, 25.0, trials, std),
             _line("LB", "plain", 88.5, 1.0, 0.0, 800.0, trials, std),
             _line("LB", "sqrt_lr", 89.3, 0.2, 0.8, 200.0, trials, std)]
    text = remedies_table.markdown(table)
    assert ("± " in text) == (trials > 1)
    assert ("no spread known" in text) == (trials == 1)
    assert ("ONE trial" in text) == (trials == 1)
    assert "- sqrt_lr: gap +0.20 pp, 80% of the plain gap closed (closes it); sharpness 200 " \
           "vs plain LB 800 (0.25x: flatter)" in text
