"""The binaries' error contract under TensorFlow's noisiest native logging, their logging
policy, and their --helpshort."""

import os
import platform

import pytest

from benchmarks import native_log_level
from tests import binaries

# stderr of a failing binary as TensorFlow 2.21 writes it on an AVX-512 machine with native
# logging on, plus a record in TensorFlow's older TSL format and a multi-line absl record.
RECORDED_STDERR = """\
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1795889463.976715    6218 port.cc:153] oneDNN custom operations are on. You may \
see slightly different numerical results due to floating-point round-off errors from \
different computation orders. To turn them off, set the environment variable \
`TF_ENABLE_ONEDNN_OPTS=0`.
I0000 00:00:1795889464.013613    6218 cpu_feature_guard.cc:227] This TensorFlow binary is \
optimized to use available CPU instructions in performance-critical operations.
To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 FMA, in other \
operations, rebuild TensorFlow with the appropriate compiler flags.
2023-06-01 12:00:00.123456: I tensorflow/core/platform/cpu_feature_guard.cc:182] This \
TensorFlow binary is optimized to use available CPU instructions.
To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow.
I1128 18:15:41.935439 140045082045312 data.py:290] synthetic/train: 256 examples
W0000 00:00:1795890383.549004   12043 assert_op.cc:39] Ignoring Assert operator Assert
I0000 00:00:1795890383.393582   12043 service.cc:161]   StreamExecutor [0]: Host
E1128 18:16:00.000001    6218 external/local_xla/xla/pjrt/cpu/cpu_client.cc:1] a record
spanning two lines
train.py: error: global batch size 300 is larger than the training set
"""


def test_the_pattern_separates_native_records_from_the_binarys_own_lines():
    native, own = binaries.split_stderr(RECORDED_STDERR, "train.py")
    assert own == [
        "I1128 18:15:41.935439 140045082045312 data.py:290] synthetic/train: 256 examples",
        "train.py: error: global batch size 300 is larger than the training set",
    ]
    assert len(native) == 10
    assert native[4].startswith("2023-06-01 12:00:00.123456: I tensorflow/core/")
    assert native[-1] == "spanning two lines"
    assert binaries.error_message(RECORDED_STDERR, "train.py", only_own_line=False) == (
        "global batch size 300 is larger than the training set")
    with pytest.raises(AssertionError):  # A progress line is an own line too.
        binaries.error_message(RECORDED_STDERR, "train.py")
    with pytest.raises(AssertionError):  # The error line must be the last line.
        binaries.error_message(RECORDED_STDERR + "I0000 00:00:1.0 1 port.cc:1] late\n",
                               "train.py")
    with pytest.raises(AssertionError):  # A traceback breaks the contract wherever it is.
        binaries.error_message("Traceback (most recent call last):\n" + RECORDED_STDERR,
                               "train.py", only_own_line=False)


def test_the_native_threshold_follows_the_verbosity_asked_for(tmp_path):
    flagfile = tmp_path / "debug.flags"
    flagfile.write_text("--verbosity=1\n")
    assert native_log_level(["train.py", "--model=F1"]) == "2"
    assert native_log_level(["train.py", "--verbosity=1", "--model=F1"]) == "0"
    assert native_log_level(["train.py", "-v", "2"]) == "0"
    assert native_log_level(["train.py", f"--flagfile={flagfile}"]) == "0"
    assert native_log_level(["train.py", "--verbosity=x"]) == "2"  # Reported by absl later.
    assert native_log_level(["train.py", "--flagfile=/nonexistent"]) == "2"


# (binary, arguments, exit status, part of the error message); every case fails before
# writing anything, under TensorFlow's noisiest native logging. benchmarks.sharpness,
# benchmarks.gap and benchmarks.parametric are checked the same way in their own test files;
# every binary fails through the same benchmarks.common.run.
NOISY_FAILURES = [
    ("benchmarks.train", ["--model=F1", "--dataset=synthetic", "--synthetic_train_examples=64",
                          "--synthetic_test_examples=8", "--batch_size=128", "--quiet"],
     1, "global batch size 128 is larger than the training set (64 examples"),
    ("benchmarks.train_throughput", ["--methods=fit,nope"], 2, "--methods takes a subset of"),
]

HELPSHORT = {
    "benchmarks.train": ["--model", "--dataset", "--regime", "--batch_size", "--epochs",
                         "--strategy", "--output_dir", "--seed"],
    "benchmarks.gap": ["--models", "--trials", "--sb_batch_size", "--lb_batch_size",
                       "--dataset", "--epsilons", "--strategy", "--output_dir", "--baseline"],
    "benchmarks.remedies": ["--models", "--trials", "--remedies", "--sb_batch_size",
                            "--lb_batch_size", "--dataset", "--epsilons", "--solvers",
                            "--strategy", "--output_dir"],
    "benchmarks.sharpness": ["--runs", "--epsilons", "--subspace_dims", "--solvers",
                             "--strategy", "--output_dir"],
    "benchmarks.curvature": ["--runs", "--measures", "--k", "--trace_tol", "--trace_max_probes",
                             "--rho", "--rho_l2", "--strategy", "--output_dir"],
    "benchmarks.train_throughput": ["--model", "--dataset", "--methods", "--strategy",
                                    "--output_dir"],
    "benchmarks.parametric": ["--model", "--dataset", "--alphas", "--paths", "--sb_batch_size",
                              "--lb_batch_size", "--strategy", "--output_dir", "--replot"],
    "benchmarks.batch_sweep": ["--model", "--dataset", "--batch_sizes", "--trials", "--epochs",
                               "--epsilons", "--strategy", "--output_dir", "--replot"],
    "benchmarks.warm_start": ["--model", "--dataset", "--start_epochs", "--sb_batch_size",
                              "--lb_batch_size", "--epsilons", "--strategy", "--output_dir"],
    "benchmarks.along_training": ["--model", "--dataset", "--sb_snapshots", "--lb_snapshots",
                                  "--epsilons", "--strategy", "--output_dir"],
    "benchmarks.predictors": ["--results", "--output_dir", "--alpha"],
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Every process of this module, started together, all under TensorFlow's noisiest native
    logging: the failures and every binary's --helpshort."""
    out_dir = tmp_path_factory.mktemp("contract")
    noisy = binaries.environment(**binaries.NOISY_TENSORFLOW)
    started = {}
    for module, args, _, _ in NOISY_FAILURES:
        started[("noisy", module)] = binaries.start(
            module, *args, f"--output_dir={out_dir / module}", env=noisy)
    for module in HELPSHORT:
        started[("helpshort", module)] = binaries.start(module, "--helpshort", env=noisy)
    return {key: binaries.finish(process) for key, process in started.items()}, out_dir


@pytest.mark.parametrize("module,args,status,message", NOISY_FAILURES,
                         ids=[case[0] for case in NOISY_FAILURES])
def test_the_error_line_is_last_and_alone_with_every_native_log_line_on(
        outcomes, module, args, status, message):
    processes, out_dir = outcomes
    code, out, err = processes[("noisy", module)]
    assert code == status, err
    assert message in binaries.error_message(err, binaries.program_name(module)), err
    assert out == ""
    assert not os.path.exists(out_dir / module)
    native, _ = binaries.split_stderr(err, binaries.program_name(module))
    if platform.machine() in ("x86_64", "AMD64"):
        # oneDNN's notice at least: the contract was checked with native lines present.
        assert native, f"TensorFlow printed no native line under {binaries.NOISY_TENSORFLOW}"


@pytest.mark.parametrize("module", list(HELPSHORT))
def test_helpshort_lists_the_main_flags(outcomes, module):
    processes, _ = outcomes
    code, out, err = processes[("helpshort", module)]
    assert code in (0, 1), err  # absl ends --helpshort with status 1.
    _, own = binaries.split_stderr(err, binaries.program_name(module))
    assert own == [], own  # Importing the binary writes nothing of its own to stderr.
    listed = {line.split(":")[0].strip().replace("--[no]", "--")
              for line in out.splitlines() if line.startswith("  --")}
    missing = [name for name in HELPSHORT[module] if name not in listed]
    assert not missing, f"--helpshort of {module} lacks {missing}:\n{out}"
