"""Accelerator setups: the grammar and its errors, the spread-aware verdict rule against hand
computations, a three-setup comparison end to end (inline, on 2 logical CPUs), TensorBoard
events, and the binaries (worker processes, bad setups, merging folders of two machines)."""

import csv
import dataclasses
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from lbgap_tf import data, gap, results, train
from lbgap_tf.experiments import setups
from lbgap_tf.reporting import comparison, resultsets, setups_table

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = data.SyntheticSpec(num_train=256, num_test=64, input_shape=(16,), num_classes=4,
                          seed=0)
SETUPS = ("default/float32", "default/mixed_bfloat16", "mirrored:2/float32")
NO_ACCELERATOR = setups.Machine(gpus=0, tpu=False)


# --- grammar -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text,fields", [
    ("default/float32", ("default", None, None, "float32", False)),
    ("default/float32/xla", ("default", None, None, "float32", True)),
    ("mirrored:2/mixed_bfloat16", ("mirrored", 2, None, "mixed_bfloat16", False)),
    ("mirrored:4@gpu/mixed_float16", ("mirrored", 4, "gpu", "mixed_float16", False)),
    ("one_device@cpu/float32/xla", ("one_device", None, "cpu", "float32", True)),
    ("tpu/mixed_bfloat16", ("tpu", None, None, "mixed_bfloat16", False)),
])
def test_setups_parse_and_print_back(text, fields):
    setup = setups.parse_setup(text)
    assert (setup.strategy, setup.replicas, setup.device, setup.precision, setup.xla) == fields
    assert setup.name == text
    assert "/" not in setup.slug and ":" not in setup.slug


@pytest.mark.parametrize("text,words", [
    ("foo/float32", ["unknown strategy 'foo'", "mirrored"]),
    ("default/float64", ["unknown precision 'float64'", "mixed_bfloat16"]),
    ("default:2/float32", ["runs one replica", "mirrored:2/float32"]),
    ("mirrored:2/float32/xla", ["single-replica strategies", "drop /xla"]),
    ("tpu/float32/xla", ["always compiles with XLA"]),
    ("mirrored:0/float32", ["positive integer"]),
    ("mirrored@fpga/float32", ["unknown device 'fpga'"]),
    ("default/float32/fast", ["unknown option 'fast'"]),
    ("default", ["STRATEGY[:REPLICAS]"]),
])
def test_a_bad_setup_is_one_line_naming_problem_and_fix(text, words):
    with pytest.raises(setups.SetupError) as error:
        setups.parse_setup(text)
    message = str(error.value)
    assert "\n" not in message and text in message
    for word in words:
        assert word in message


def test_every_bad_setup_of_a_list_gets_its_line():
    with pytest.raises(setups.SetupError) as error:
        setups.parse_setups(["foo/float32", "default/float32", "default/float32",
                             "default/bf16"])
    lines = str(error.value).splitlines()
    assert len(lines) == 3
    assert "foo" in lines[0] and "bf16" in lines[1] and "given twice" in lines[2]
    with pytest.raises(setups.SetupError, match="at least two setups"):
        setups.parse_setups(["default/float32"])


def test_a_gap_config_goes_to_the_worker_and_back_unchanged():
    config = _experiment()
    config = dataclasses.replace(config, sb=dataclasses.replace(config.sb, snapshot_epochs=(1,)))
    assert setups.gap_config_from_dict(setups.gap_config_to_dict(config)) == config
    grown = dataclasses.replace(config, lb=dataclasses.replace(
        config.lb, batch_schedule=((2, 256),), lr_scaling="sqrt"))
    assert setups.gap_config_from_dict(setups.gap_config_to_dict(grown)) == grown


def test_replicas_must_divide_both_global_batches():
    parsed = setups.parse_setups(["default/float32", "mirrored:7/float32", "mirrored:5/float32"])
    with pytest.raises(setups.SetupError) as error:
        setups.check_batches(parsed, {"SB": 256, "LB": 6000})
    lines = str(error.value).splitlines()
    assert len(lines) == 2  # 7 divides neither; 5 divides 6000 but not 256.
    assert "mirrored:7" in lines[0] and "SB 256, LB 6000" in lines[0]
    assert "mirrored:5" in lines[1] and "LB" not in lines[1].split("batch (")[1].split(")")[0]
    setups.check_batches(parsed[:1], {"SB": 256, "LB": 6000})


def test_what_this_machine_cannot_run_is_skipped_with_a_reason():
    cpu_only, one_gpu = NO_ACCELERATOR, setups.Machine(gpus=1, tpu=False)
    assert "no GPU" in setups.skip_reason(setups.parse_setup("one_device@gpu/float32"), cpu_only)
    assert "no TPU" in setups.skip_reason(setups.parse_setup("tpu/float32"), cpu_only)
    assert "cluster" in setups.skip_reason(
        setups.parse_setup("multi_worker_mirrored:2/float32"), cpu_only)
    assert "1 GPU" in setups.skip_reason(setups.parse_setup("mirrored:2/float32"), one_gpu)
    for runnable in ("mirrored:2/float32", "mirrored:2@cpu/float32", "default/float32/xla"):
        assert setups.skip_reason(setups.parse_setup(runnable), cpu_only) is None
    assert setups.skip_reason(setups.parse_setup("mirrored:2@cpu/float32"), one_gpu) is None
    assert setups.cpu_devices(setups.parse_setup("mirrored:2@cpu/float32"), one_gpu) == 2


# --- the verdict rule -------------------------------------------------------------------------

def test_additive_metrics_agree_within_tolerance_plus_the_spread():
    tol = comparison.Tolerances(accuracy_pp=0.5, ratio_factor=2, spread_sigmas=2)
    own, ref = {0: 90.0, 1: 92.0}, {0: 88.0, 1: 88.4}
    judged = comparison.judge(own, ref, "test_accuracy SB", "x", tol)
    # Welch: sqrt(var_own / 2 + var_ref / 2) with sample variances 2.0 and 0.08.
    spread = math.sqrt(2.0 / 2 + 0.08 / 2)
    assert judged.difference == pytest.approx(91.0 - 88.2)
    assert judged.limit == pytest.approx(0.5 + 2 * spread)
    assert judged.status == comparison.DIFFERS  # 2.8 > 0.5 + 2.04.
    wide = comparison.judge({0: 90.0, 1: 94.0}, ref, "test_accuracy SB", "x", tol)
    assert wide.status == comparison.AGREES  # The same shift inside a wider spread.


def test_ratios_compare_as_factors_and_one_trial_is_undetermined():
    tol = comparison.Tolerances(accuracy_pp=1, ratio_factor=2, spread_sigmas=0)
    # The same seed on two CPUs gave SB sharpness 12.7 and 5.3: a factor 2.4 is beyond 2.
    judged = comparison.judge({0: 12.7, 1: 12.7}, {0: 5.3, 1: 5.3}, "sharpness_ratio[x]",
                              "x", tol)
    assert judged.scale == "ratio" and judged.difference == pytest.approx(12.7 / 5.3)
    assert judged.limit == pytest.approx(2.0) and judged.status == comparison.DIFFERS
    single = comparison.judge({0: 12.7}, {0: 5.3}, "sharpness_ratio[x]", "x", tol)
    assert single.status == comparison.UNDETERMINED and "no spread" in single.note
    zero = comparison.judge({0: 0.0, 1: 1.0}, {0: 1.0, 1: 1.0}, "distance_ratio", "x", tol)
    assert zero.status == comparison.UNDETERMINED


# --- three setups end to end, inline on the test process's 2 logical CPUs ----------------------

def _experiment():
    shared = dict(model="F1", dataset="synthetic", synthetic=SPEC, epochs=2,
                  eval_batch_size=256, steps_per_call=4, bn_mode="batch",
                  eval_every_epoch=True)
    return gap.GapConfig(
        models=("F1",), trials=2, first_seed=5,
        sb=train.TrainConfig(regime="SB", batch_size=32, **shared),
        lb=train.TrainConfig(regime="LB", batch_size=128, **shared),
        sharpness=gap.SharpnessPlan(epsilons=(1e-3,), subspace_dims=(None,),
                                    solvers=("ascent",), max_iter=2, eval_examples=128,
                                    eval_batch_size=128))


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("setups"))
    config = setups.SetupsConfig(experiment=_experiment(),
                                 setups=setups.parse_setups(SETUPS + ("one_device@gpu/float32",)))
    outcome = setups.run(config, output_dir=output_dir, machine=NO_ACCELERATOR,
                         isolation="inline", quiet=True, log=lambda line: None)
    groups = []
    for status in outcome.statuses:
        if status.status == "ran":
            [group] = resultsets.load_gap_folder(status.directory)
            group.label = status.setup.name
        else:
            group = resultsets.SetupResults(status.setup.name, status.directory, {},
                                            status=status.status, reason=status.reason)
        groups.append(group)
    result = comparison.compare(groups, targets=comparison.Targets(train_loss=10.0))
    return output_dir, outcome, groups, result


@pytest.mark.slow
def test_every_setup_trains_from_the_same_x0_and_gets_its_rows(compared):
    output_dir, outcome, _, _ = compared
    assert [s.status for s in outcome.statuses] == ["ran", "ran", "ran", "skipped"]
    rows = results.read_rows(os.path.join(output_dir, setups.SETUP_RUNS_FILE))
    assert len(rows) == 3 * 2 * 2  # Setups x trials x regimes.
    assert tuple(rows[0]) == setups.SETUP_RUN_COLUMNS
    for seed in ("5", "6"):
        digests = {row["x0_sha256"] for row in rows if row["seed"] == seed}
        assert len(digests) == 1  # One x0 per seed, whatever the setup.
    mirrored = [row for row in rows if row["setup"] == "mirrored:2/float32"]
    assert {row["replicas"] for row in mirrored} == {"2"}
    assert {row["precision"] for row in rows if row["setup"] == "default/mixed_bfloat16"} == {
        "mixed_bfloat16"}
    assert outcome.work_s > 0 and outcome.wall_time_s >= outcome.work_s


@pytest.mark.slow
def test_mirrored_agrees_and_mixed_sharpness_is_measured_in_float32(compared):
    output_dir, _, groups, result = compared
    by_label = {group.label: group for group in groups}
    # Two replicas follow the one-device trajectory up to float reassociation.
    reference, mirrored = by_label["default/float32"], by_label["mirrored:2/float32"]
    def order(rows):
        return sorted(rows, key=lambda row: (row["regime"], row["seed"]))

    for one, two in zip(order(reference.runs), order(mirrored.runs), strict=True):
        assert float(one["train_loss"]) == pytest.approx(float(two["train_loss"]), rel=1e-3)
    assert result.verdicts["mirrored:2/float32"].startswith("agrees")
    mixed = by_label["default/mixed_bfloat16"]
    assert {row["precision"] for row in mixed.sharpness} == {"float32"}
    assert {row["precision"] for row in mixed.native_sharpness} == {"mixed_bfloat16"}
    assert len(mixed.native_sharpness) == 2 * 2  # Trials x regimes, full space only.
    [native] = [row for row in result.native_sharpness if row["setup"] == mixed.label]
    assert native["native"] is not None and native["float32"] is not None
    assert result.skipped == [("one_device@gpu/float32", "skipped",
                               "needs 1 GPU(s), this machine has no GPU")]


@pytest.mark.slow
def test_speed_and_time_to_target_follow_the_histories(compared):
    _, _, groups, result = compared
    reference = groups[0]
    histories = [reference.histories[row["run_id"]] for row in reference.runs
                 if row["regime"] == "SB"]
    rates = [float(h["examples_per_s"]) for history in histories for h in history[1:]]
    [speed] = [r for r in result.speed if r["setup"] == reference.label and r["regime"] == "SB"]
    assert speed["timed_epochs"] == 2  # Epoch 2 of both trials.
    assert speed["examples_per_s"] == pytest.approx(np.mean(rates))
    assert speed["examples_per_s_se"] == pytest.approx(np.std(rates, ddof=1) / np.sqrt(2))
    mirrored = next(r for r in result.speed if r["setup"] == "mirrored:2/float32"
                    and r["regime"] == "SB")
    assert mirrored["scaling_efficiency"] == pytest.approx(
        mirrored["examples_per_s"] / (2 * speed["examples_per_s"]))
    # A training loss of 10 (chance level is ln 4) is reached by the first epoch's mean.
    [reached] = [r for r in result.to_target if r["setup"] == reference.label
                 and r["regime"] == "SB" and r["target"] == "train_loss"]
    assert reached["reached"] == 2 and reached["updates"] == 256 // 32
    assert reached["seconds"] == pytest.approx(np.mean(
        [float(history[0]["epoch_time_s"]) for history in histories]))
    model = next(r for r in result.performance_model if r["setup"] == "mirrored:2/float32"
                 and r["target"] == "train_loss")
    lb_one = next(r for r in result.speed if r["setup"] == reference.label
                  and r["regime"] == "LB")["examples_per_s"]
    assert model["required_efficiency"] == pytest.approx(
        model["lb_updates"] * 128 / (2 * lb_one * model["sb_seconds"]))


@pytest.mark.slow
def test_tables_show_speed_science_and_the_skipped_setup(compared):
    output_dir, _, _, result = compared
    text = setups_table.markdown(result)
    csv_path, md_path = setups_table.write(result, output_dir, "setups", text)
    assert "## Verdicts" in text and "## Speed" in text and "## Science" in text
    assert "skipped: needs 1 GPU(s)" in text and "Appendix C" in text
    with open(csv_path, newline="", encoding="utf-8") as handle:
        sections = {row["section"] for row in csv.DictReader(handle)}
    assert {"speed", "science", "verdict", "to_target", "performance_model", "skipped",
            "native_sharpness"} <= sections


@pytest.mark.slow
def test_each_run_writes_tensorboard_scalars_matching_its_history(compared):
    from tensorboard.backend.event_processing import event_accumulator

    _, _, groups, _ = compared
    run = groups[0].runs[0]
    run_dir = os.path.join(groups[0].folder, "runs", run["run_id"])
    events = event_accumulator.EventAccumulator(os.path.join(run_dir, "tensorboard"),
                                                size_guidance={"tensors": 0})
    events.Reload()
    history = groups[0].histories[run["run_id"]]
    for tag, column in (("train/loss", "train_loss"), ("eval/test_accuracy", "test_accuracy"),
                        ("train/examples_per_s", "examples_per_s")):
        points = events.Tensors(tag)
        assert [p.step for p in points] == [1, 2]
        values = [float(np.asarray(tf_value(p))) for p in points]
        assert values == pytest.approx([float(h[column]) for h in history], rel=1e-6)


def tf_value(point):
    import tensorflow as tf

    return tf.make_ndarray(point.tensor_proto)


# --- binaries ------------------------------------------------------------------------------------

TINY = ["--models=F1", "--dataset=synthetic", "--synthetic_train_examples=256",
        "--synthetic_test_examples=64", "--trials=1", "--sb_batch_size=64",
        "--lb_batch_size=128", "--sb_epochs=2", "--lb_epochs=2", "--epsilons=1e-3",
        "--subspace_dims=full", "--solvers=ascent", "--sharpness_max_iter=2",
        "--sharpness_examples=128", "--sharpness_batch_size=128", "--eval_batch_size=256",
        "--quiet"]


def _binary(name, *args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    return subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_setups_binary_runs_workers_in_processes_and_reports_skips(tmp_path):
    out = tmp_path / "out"
    done = _binary("setups", *TINY, f"--output_dir={out}",
                   "--setups=mirrored:2/float32,tpu/float32")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "skipped: no TPU" in done.stdout and "## Speed" in done.stdout
    processes = results.read_rows(out / "mirrored-2_float32" / "processes.csv")
    assert len(processes) == 1 and float(processes[0]["peak_rss_mb"]) > 100
    runs = results.read_rows(out / "mirrored-2_float32" / gap.RUNS_FILE)
    assert {row["replicas"] for row in runs} == {"2"}  # The worker split its CPU.
    assert (out / "setups.md").exists() and (out / "setups.csv").exists()


def test_bad_setups_are_a_line_each_and_write_nothing(tmp_path):
    out = tmp_path / "out"
    done = _binary("setups", *TINY, f"--output_dir={out}",
                   "--setups=default/float32,gpu/float32,default/float64,"
                   "mirrored:2/float32/xla,mirrored:3/float32")
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("setups.py: error:")]
    assert len(errors) == 3  # gpu, float64, mirrored xla; replica checks come after parsing.
    assert not out.exists()
    done = _binary("setups", *TINY, f"--output_dir={out}",
                   "--setups=default/float32,mirrored:3/float32")
    assert done.returncode == 2 and "3 replicas do not divide" in done.stderr
    assert not out.exists()


@pytest.mark.slow
def test_compare_merges_two_machines_and_lists_mismatches(compared, tmp_path):
    output_dir, _, _, _ = compared
    machine_a, machine_b = tmp_path / "machine_a", tmp_path / "machine_b"
    shutil.copytree(os.path.join(output_dir, "default_float32"), machine_a)
    shutil.copytree(os.path.join(output_dir, "mirrored-2_float32"), machine_b)
    # Machine B ran another TensorFlow on another host, and an extra experiment (other LB
    # batch) that machine A does not have.
    runs = results.read_rows(machine_b / gap.RUNS_FILE)
    os.remove(machine_b / gap.RUNS_FILE)
    for row in runs:
        results.append_row(machine_b / gap.RUNS_FILE,
                           dict(row, tf_version="2.99.0", hostname="gpu-box"))
    extra = dict(runs[1], run_id="F1-extra-LB", global_batch_size="64", tf_version="2.99.0")
    results.append_row(machine_b / gap.RUNS_FILE, extra)
    pair = results.read_rows(machine_b / gap.PAIRS_FILE)[0]
    results.append_row(machine_b / gap.PAIRS_FILE, dict(pair, lb_run_id="F1-extra-LB"))
    done = _binary("compare", f"--results={machine_a},{machine_b}",
                   f"--output_dir={tmp_path / 'merged'}")
    assert done.returncode == 0, done.stderr[-3000:]
    text = done.stdout
    assert "machine_b: mirrored:2/float32" in text and "2.99.0" in text and "gpu-box" in text
    assert "## Unmatched experiments" in text and "LB batch 64" in text
    assert "agrees within tolerance" in text
    assert (tmp_path / "merged" / "compare.csv").exists()
    missing = _binary("compare", f"--results={machine_a},{tmp_path / 'nowhere'}")
    assert missing.returncode == 1 and "does not exist" in missing.stderr


# --- the checkpoint interval ------------------------------------------------------------------

def test_a_checkpoint_interval_saves_less_and_a_killed_run_restarts_from_the_last_one(tmp_path):
    import tensorflow as tf

    config = train.TrainConfig(model="F1", dataset="synthetic", synthetic=SPEC, batch_size=64,
                               epochs=3, eval_batch_size=256, steps_per_call=4)
    splits = train.load_data(config)
    run_dir = str(tmp_path / "run")
    with pytest.raises(train.TrainError, match="checkpoint_every_s"):
        train.train(config, *splits, run_dir=run_dir, quiet=True, checkpoint_every_s=-1)

    def interrupt_after_two(epoch, row):
        if epoch == 2:
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        train.train(config, *splits, run_dir=run_dir, quiet=True, checkpoint_every_s=3600,
                    on_epoch_end=interrupt_after_two)
    checkpoints = os.path.join(run_dir, train.CHECKPOINT_DIR)
    assert tf.train.latest_checkpoint(checkpoints) is None  # None due within the hour.
    assert len(results.read_rows(os.path.join(run_dir, train.HISTORY_FILE))) == 2
    seen = []
    result = train.train(config, *splits, run_dir=run_dir, quiet=True, checkpoint_every_s=3600,
                         on_epoch_end=lambda epoch, row: seen.append(epoch))
    assert seen == [1, 2, 3]  # Nothing was checkpointed, so the run started over.
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert tf.train.latest_checkpoint(checkpoints).endswith("-3")  # The last epoch is saved.
