"""`python -m benchmarks.train`: run records, resume after a kill, bad input, two workers."""

import glob
import json
import os
import signal
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest

from lbgap_tf import data, results, train
from tests import binaries

SMOKE = ["--model=F1", "--dataset=synthetic", "--synthetic_train_examples=256",
         "--synthetic_test_examples=64", "--batch_size=64", "--eval_batch_size=64"]


def _start(*args, env=None):
    return binaries.start("benchmarks.train", *args, env=env)


def _run(*args, timeout=240):
    return binaries.run("benchmarks.train", *args, timeout=timeout)


@pytest.mark.slow
def test_a_run_writes_one_complete_row_and_a_rerun_adds_none(tmp_path):
    out_dir = tmp_path / "out"
    code, out, err = _run(*SMOKE, "--epochs=2", "--strategy=mirrored", "--cpu_devices=2",
                          "--quiet", f"--output_dir={out_dir}")
    assert code == 0, err
    rows = results.read_rows(out_dir / "runs.csv")
    assert len(rows) == 1
    row = rows[0]
    assert tuple(row) == train.RUN_COLUMNS
    assert row["replicas"] == "2" and row["strategy"] == "mirrored"
    assert row["global_batch_size"] == "64" and row["per_replica_batch_size"] == "32"
    assert row["epochs_run"] == "2" and row["stop_reason"] == "epochs"
    assert row["regime"] == "SB" and row["bn_sync"] == "True" and row["optimizer"] == "adam"
    assert float(row["examples_per_s"]) > 0 and 0 <= float(row["test_accuracy"]) <= 1
    assert json.loads(row["nondefault_flags"])["cpu_devices"] == 2
    run_dir = out_dir / "runs" / row["run_id"]
    for name in ("config.json", "x0.npz", "history.csv", "model.keras"):
        assert (run_dir / name).exists(), name
    assert len(results.read_rows(run_dir / "history.csv")) == 2
    assert json.loads((run_dir / "config.json").read_text())["config"]["batch_size"] == 64

    code, out, err = _run(*SMOKE, "--epochs=2", "--strategy=mirrored", "--cpu_devices=2",
                          "--quiet", f"--output_dir={out_dir}")
    assert code == 0, err
    assert "already complete" in out and row["run_id"] in out
    assert len(results.read_rows(out_dir / "runs.csv")) == 1


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_uninterrupted_weights(tmp_path):
    """SIGKILL right after epoch 2's checkpoint (the binary's test hook), then the same command
    again: the run resumes at epoch 3 and ends with the weights of an uninterrupted run."""
    args = [*SMOKE, "--epochs=4", "--synthetic_train_examples=512", "--quiet"]
    killed = _start(*args, f"--output_dir={tmp_path / 'out'}",
                    env=binaries.environment(LBGAP_TEST_SIGKILL_AFTER_EPOCH="2"))
    straight = _start(*args, f"--output_dir={tmp_path / 'straight'}")
    code, _, err = binaries.finish(killed)
    assert code == -signal.SIGKILL, err[-3000:]
    assert not (tmp_path / "out" / "runs.csv").exists()  # A killed run leaves no row.
    (run_dir,) = (tmp_path / "out").glob("runs/*")
    assert [r["epoch"] for r in results.read_rows(run_dir / "history.csv")] == ["1", "2"]

    code, _, err = _run(*args, f"--output_dir={tmp_path / 'out'}")
    assert code == 0, err
    history = results.read_rows(run_dir / "history.csv")
    assert [int(r["epoch"]) for r in history] == [1, 2, 3, 4]
    rows = results.read_rows(tmp_path / "out" / "runs.csv")
    assert len(rows) == 1 and rows[0]["epochs_run"] == "4"
    code, _, err = binaries.finish(straight)
    assert code == 0, err
    (straight_row,) = results.read_rows(tmp_path / "straight" / "runs.csv")
    assert straight_row["run_id"] == rows[0]["run_id"]
    straight_dir = tmp_path / "straight" / "runs" / straight_row["run_id"]
    assert [r["train_loss"] for r in history] == [
        r["train_loss"] for r in results.read_rows(straight_dir / "history.csv")]
    resumed = keras.models.load_model(run_dir / train.MODEL_FILE, compile=False)
    uninterrupted = keras.models.load_model(straight_dir / train.MODEL_FILE, compile=False)
    assert len(resumed.weights) == 32
    for a, b in zip(resumed.weights, uninterrupted.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)


def _suite_modules():
    names = set()
    for package in ("lbgap_tf", "benchmarks"):
        for _, _, files in os.walk(os.path.join(binaries.REPO, package)):
            names.update(name for name in files if name.endswith(".py"))
    return names


def test_the_log_shows_the_suites_own_lines_and_verbosity_brings_tensorflows_back(tmp_path):
    """Two epochs (two checkpoints) under XLA: at the default verbosity every stderr line is
    a native line or a log line of the suite's own modules; --verbosity=1 brings back
    TensorFlow's Python INFO records (one per checkpoint) and its native INFO records."""
    args = [*SMOKE, "--epochs=2", "--jit_compile"]
    default = _start(*args, f"--output_dir={tmp_path / 'default'}")
    verbose = _start(*args, "--verbosity=1", f"--output_dir={tmp_path / 'verbose'}")
    code, out, err = binaries.finish(default)
    assert code == 0, err
    native, own = binaries.split_stderr(err, "train.py")
    suite = _suite_modules()
    for line in own:
        match = binaries.PYTHON_LOG_LINE.match(line)
        assert match and match.group(0).split()[-1].split(":")[0] in suite, line
    assert any("epoch 2/2: loss" in line for line in own) and "epochs (epochs)" in out
    for chatter in ("Sharding callback duration", "assert_op.cc", "retracing"):
        assert chatter not in err, chatter
    # TF_CPP_MIN_LOG_LEVEL=2: no native INFO or WARNING record but what TensorFlow prints
    # before it reads the variable (absl's notice, oneDNN's).
    chatty = [line for line in native if binaries.NATIVE_RECORD_START.match(line)
              and line[0] in "IW" and "port.cc:" not in line
              and not line.startswith("WARNING: All log messages")]
    assert not chatty, chatty

    code, _, err = binaries.finish(verbose)
    assert code == 0, err
    assert err.count("functional_saver.py") >= 2 and "Sharding callback duration" in err
    native, _ = binaries.split_stderr(err, "train.py")
    assert any(line.startswith("I") and "port.cc:" not in line for line in native), native
    assert "assert_op.cc" not in err  # The steps hold no Assert for XLA to ignore.


# The first case splits the CPU, so it must run before any case initialises TensorFlow.
BAD_INPUTS = {
    "batch not divisible": ([*SMOKE, "--batch_size=63", "--strategy=mirrored",
                             "--cpu_devices=2"], "not divisible by the 2 replicas"),
    "unknown model": (["--model=F9"], "--model=F9: value should be one of"),
    "unknown dataset": (["--dataset=svhn"], "--dataset=svhn: value should be one of"),
    "batch larger than the data": ([*SMOKE, "--batch_size=300"],
                                   "larger than the training set (256 examples"),
    "zero epochs": ([*SMOKE, "--epochs=0"], "--epochs must be a positive integer"),
    "zero learning rate": ([*SMOKE, "--learning_rate=0"], "--learning_rate must be positive"),
    "negative learning rate": ([*SMOKE, "--learning_rate=-0.1"],
                               "--learning_rate must be positive"),
    "zero batch": ([*SMOKE, "--batch_size=0"], "--batch_size must be a positive integer"),
    "missing x0": ([*SMOKE, "--x0=/nonexistent/x0.npz"], "does not exist"),
    "garbage x0": ([*SMOKE, "--x0={garbage}"], "cannot read initial weights"),
    "missing data": (["--model=F2"], "no timit train data found"),
    "stray argument": ([*SMOKE, "extra"], "unexpected arguments ['extra']"),
    "cpu split without mirrored": ([*SMOKE, "--cpu_devices=2"],
                                   "--cpu_devices > 1 makes replicas only for"),
    "negative proximal weight": ([*SMOKE, "--step_remedy=conservative",
                                  "--conservative_lambda=-1e-3"],
                                 "--conservative_lambda must be >= 0"),
    "negative sam radius": ([*SMOKE, "--step_remedy=sam", "--sam_rho=-0.05"],
                            "--sam_rho must be >= 0"),
    "negative fgsm radius": ([*SMOKE, "--step_remedy=adversarial", "--adversarial_eps=-0.1"],
                             "--adversarial_eps must be >= 0"),
    "unknown step remedy": ([*SMOKE, "--step_remedy=mixup"],
                            "--step_remedy=mixup: value should be one of"),
}

# Runs every bad-input case through the binary's own flag parsing and error handling (what
# common.run hands to absl.app.run), then parses every training preset, all in ONE process,
# so TensorFlow is imported once.
_DRIVER = """
import contextlib, glob, io, json, os, sys
from absl import flags
from benchmarks import common, train as binary
cases = {}
requests = json.loads(sys.argv[1])
sys.argv[0] = "train.py"  # The program name of the binary's error lines.
for name, argv, out_dir in requests:
    flags.FLAGS.unparse_flags()
    err = io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err):
        try:
            common.guard(binary.main)(common.parse_flags(["train.py", *argv]))
        except SystemExit as exit_:
            code = exit_.code
    cases[name] = [code, err.getvalue(), os.path.exists(out_dir)]
presets = {}
for path in sorted(glob.glob("flags/train_*.flags") + glob.glob("flags/cpu/train_*.flags")):
    flags.FLAGS.unparse_flags()
    common.parse_flags(["train.py", f"--flagfile={path}"])
    config = common.train_config()
    presets[path] = [config.model, config.dataset, config.regime, config.batch_size,
                     config.bn_mode, config.epochs, config.adam_epsilon]
print(json.dumps({"cases": cases, "presets": presets}))
"""


@pytest.fixture(scope="module")
def driver_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    garbage = root / "garbage.npz"
    garbage.write_bytes(b"no archive")
    cases = []
    for name, (args, _) in BAD_INPUTS.items():
        out_dir = str(root / name.replace(" ", "_"))
        args = [arg.format(garbage=garbage) for arg in args]
        cases.append([name, [*args, "--quiet", f"--output_dir={out_dir}"], out_dir])
    done = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps(cases)], cwd=binaries.REPO,
                          env=binaries.environment(), capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_bad_input_ends_in_one_error_line_and_no_output(driver_report):
    assert set(driver_report["cases"]) == set(BAD_INPUTS)
    for name, (code, err, wrote) in driver_report["cases"].items():
        assert code in (1, 2), (name, code)
        assert BAD_INPUTS[name][1] in binaries.error_message(err, "train.py"), (name, err)
        assert not wrote, name  # No row, no run directory.


def test_every_train_preset_parses_into_its_config(driver_report):
    report = driver_report["presets"]
    paper = {"F1": "mnist", "F2": "timit", "C1": "cifar10", "C2": "cifar10", "C3": "cifar100",
             "C4": "cifar100"}
    for model, dataset in paper.items():
        for regime in ("sb", "lb"):
            name, ds, label, batch, bn_mode, _, epsilon = report[
                f"flags/train_{model}_{regime}.flags"]
            assert (name, ds, label, bn_mode) == (model, dataset, regime.upper(), "batch")
            assert epsilon == 1e-8  # The authors' Keras 1 ADAM epsilon.
            assert batch == (256 if regime == "sb" else None)  # LB: 10% of the data.
    assert report["flags/cpu/train_F1_fmnist_sb.flags"][:4] == ["F1", "fashion_mnist", "SB", 256]
    assert report["flags/cpu/train_F1_fmnist_lb.flags"][:4] == ["F1", "fashion_mnist", "LB", None]
    assert {values[-1] for values in report.values()} == {1e-8}


def test_every_training_preset_sets_the_authors_adam_epsilon():
    """Every preset of a binary that trains (train, gap, setups, figures: those that set the
    stopping budget) sets ADAM's epsilon to the Keras 1 value 1e-8 (Keras 3's default is
    1e-7); the sharpness presets train nothing."""
    presets = sorted(glob.glob(os.path.join(binaries.REPO, "flags", "**", "*.flags"),
                               recursive=True))
    training = [path for path in presets if "sharpness" not in os.path.basename(path)]
    assert len(training) == len(presets) - 2 >= 30
    for path in training:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
        assert any("epochs=" in line for line in lines), path  # A preset that trains.
        assert lines.count("--adam_epsilon=1e-8") == 1, path


def test_an_unknown_model_on_the_command_line_is_one_line_without_traceback(tmp_path):
    code, out, err = _run("--model=F9", f"--output_dir={tmp_path / 'out'}")
    assert code == 2 and out == ""
    assert binaries.error_message(err, "train.py") == (
        "flag --model=F9: value should be one of <F1|F2|C1|C2|C3|C4> (see --helpfull)")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["unwritable output folder", "batch not divisible",
                                  "missing x0"])
@pytest.mark.slow
def test_bad_input_in_a_real_process_is_one_line_without_traceback(tmp_path, case):
    """The real binary (not its main called in-process): one error line, exit status 1,
    nothing written. /proc cannot hold a folder, not even for root."""
    cases = {
        "unwritable output folder": (["--output_dir=/proc/lbgap_x"], "/proc/lbgap_x",
                                     "cannot create the run directory /proc/lbgap_x/runs/"),
        "batch not divisible": (["--batch_size=63", "--strategy=mirrored", "--cpu_devices=2",
                                 f"--output_dir={tmp_path / 'out'}"], tmp_path / "out",
                                "not divisible by the 2 replicas"),
        "missing x0": (["--x0=/nonexistent/x0.npz", f"--output_dir={tmp_path / 'out'}"],
                       tmp_path / "out", "initial weights file /nonexistent/x0.npz does not "
                                         "exist"),
    }
    args, out_dir, message = cases[case]
    code, out, err = _run(*SMOKE, "--epochs=1", "--quiet", *args)
    assert code == 1 and out == "", err
    assert message in binaries.error_message(err, "train.py")
    assert not os.path.exists(out_dir)


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_report_the_losses_of_one_device(tmp_path):
    workers = [f"localhost:{port}" for port in _free_ports(2)]
    args = [*SMOKE, "--epochs=2", "--strategy=multi_worker_mirrored", "--quiet",
            f"--output_dir={tmp_path / 'workers'}"]
    processes = []
    for index in range(2):
        env = binaries.environment(TF_CONFIG=json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}))
        processes.append(_start(*args, env=env))
    outcomes = [binaries.finish(process, timeout=180) for process in processes]
    for code, _, err in outcomes:
        assert code == 0, err[-3000:]
    (row,) = results.read_rows(tmp_path / "workers" / "runs.csv")  # The chief's row only.
    assert row["strategy"] == "multi_worker_mirrored" and row["workers"] == "2"
    assert row["replicas"] == "2"
    history = results.read_rows(tmp_path / "workers" / "runs" / row["run_id"] / "history.csv")

    spec = data.SyntheticSpec(num_train=256, num_test=64, input_shape=(784,), num_classes=10)
    config = train.TrainConfig(model="F1", dataset="synthetic", synthetic=spec, batch_size=64,
                               epochs=2, eval_batch_size=64)
    one = train.train(config, *train.load_data(config), run_dir=str(tmp_path / "one"),
                      quiet=True)
    np.testing.assert_allclose([float(r["train_loss"]) for r in history],
                               [r["train_loss"] for r in one.history], rtol=1e-5)
    assert float(row["test_loss"]) == pytest.approx(one.test.loss, rel=1e-4)

