"""Checks flag files with the binary each belongs to, without training or loading data.

    python scripts/check_flagfiles.py                 # every file under flags/ and flags/cpu/
    python scripts/check_flagfiles.py my_run.flags    # named files

A flag file belongs to the binary its name starts with (``BINARIES``: ``gap_C1.flags`` to
``benchmarks.gap``, ``train_F1_lb.flags`` to ``benchmarks.train``, ...). For each file the
binary's own flags are parsed from it (absl's parser with the binary's validators, as
``python -m benchmarks.NAME --flagfile=FILE`` would) and the binary's config getters build its
frozen configs, whose constructors check the combinations; every training config inside is
then resolved against the size of its data set (``TRAIN_EXAMPLES``), which checks the global
batch sizes (LB = 10% of the set) against the set and the replica count. The setups binary's
check reads the training set itself (as the binary does before it writes anything).

Everything runs in this one process: the binaries are imported one after another, each binary's
flags removed again before the next is imported (their flag names overlap), which costs one
TensorFlow import for all files instead of one per file. Prints one line per file,
``ok FILE (BINARY): SUMMARY`` or ``FAIL FILE (BINARY): ERROR``, and exits 1 when any file
fails. The test suite runs it on every shipped preset (``tests/test_flagfiles.py``).
"""

from __future__ import annotations

import dataclasses
import glob
import importlib
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

import benchmarks  # noqa: E402  (the binaries' package: sets TensorFlow's log threshold)
from lbgap_tf import models, train  # noqa: E402

FLAGS = flags.FLAGS

# File name prefix -> binary module under benchmarks/.
BINARIES = {
    "gap_": "gap",
    "train_": "train",
    "table3_sharpness": "sharpness",
    "table4_sharpness": "sharpness",
    "fig3_parametric_": "parametric",
    "fig4_batch_sweep_": "batch_sweep",
    "fig5_warm_start_": "warm_start",
    "fig6_along_training_": "along_training",
    "setups_": "setups",
    "remedies_": "remedies",
}

# Training-set sizes of the paper's data sets (TIMIT: the frame count recalled in PAPER.md;
# the real count depends on the Kaldi recipe that produced the files).
TRAIN_EXAMPLES = {"mnist": 60000, "fashion_mnist": 60000, "cifar10": 50000,
                  "cifar100": 50000, "timit": 721329}

# Each binary's function that builds its configs from the parsed flags.
CONFIG_GETTERS = {
    "gap": "gap_config",
    "train": None,  # benchmarks.common.train_config
    "sharpness": "_dims",
    "parametric": "parametric_config",
    "batch_sweep": "sweep_config",
    "warm_start": "warm_start_config",
    "along_training": "along_training_config",
    "setups": "_checked_config",
    "remedies": "remedies_config",
}


def default_flagfiles() -> list[str]:
    """Every flag file shipped with the suite, sorted."""
    return sorted(glob.glob(os.path.join(REPO, "flags", "*.flags"))
                  + glob.glob(os.path.join(REPO, "flags", "cpu", "*.flags")))


def binary_of(path: str) -> str:
    """The binary module name a flag file belongs to, from its file name."""
    name = os.path.basename(path)
    for prefix, binary in BINARIES.items():
        if name.startswith(prefix):
            return binary
    raise ValueError(f"{name} starts with none of {', '.join(BINARIES)}: name it after its "
                     "binary")


def _train_configs(value) -> list:
    """Every ``TrainConfig`` inside a config (dataclass fields, tuples), depth first."""
    if isinstance(value, train.TrainConfig):
        return [value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [found for field in dataclasses.fields(value)
                for found in _train_configs(getattr(value, field.name))]
    if isinstance(value, (tuple, list)):
        return [found for item in value for found in _train_configs(item)]
    return []


def _num_train(config) -> int:
    dataset = config.dataset or models.spec(config.model).dataset
    if dataset == "synthetic":
        return config.synthetic.num_train
    return TRAIN_EXAMPLES[dataset]


def _resolved(config) -> list:
    """The training configs of ``config`` resolved against their data sets' sizes on one
    replica (a sweep's runs: one per batch size)."""
    configs = _train_configs(config)
    if hasattr(config, "run_config"):  # A batch sweep: its runs are made per batch size.
        configs += [config.run_config(batch, config.first_seed, None)
                    for batch in config.batch_sizes]
    if hasattr(config, "remedy_configs"):  # Remedies: SB and LB of each network and remedy.
        configs += [item for model in config.models for remedy in config.remedies
                    for item in config.remedy_configs(
                        remedy, model, config.first_seed,
                        _num_train(dataclasses.replace(config.sb, model=model)), 1)[:2]]
    return [train.resolve(item, _num_train(item), 1) for item in configs]


def _check_file(binary: str, module, path: str) -> str:
    """Parses ``path`` with the binary's flags and builds its configs; returns a summary.

    Raises:
      flags.Error: a flag the binary does not know, or a value its validators refuse.
      ValueError: a config the library refuses (the binaries' exit-status-1 errors).
    """
    FLAGS.unparse_flags()
    remaining = FLAGS([f"{binary}.py", f"--flagfile={path}"])
    if len(remaining) > 1:
        raise ValueError(f"unexpected arguments {remaining[1:]}")
    if binary == "train":
        from benchmarks import common

        config = common.train_config()
    else:
        try:
            config = getattr(module, CONFIG_GETTERS[binary])()
        except SystemExit as exit_:  # setups reports a bad --setups as a flag error.
            raise ValueError(f"the binary exited with status {exit_.code}") from None
    if binary == "sharpness":
        return f"spaces {config}"
    resolved = _resolved(config)
    batches = sorted({item.batch_size for item in resolved})
    return f"{len(resolved)} training config(s), global batch sizes {batches}"


def check(paths: list[str]) -> list[tuple[str, str, bool, str]]:
    """(path, binary, ok, summary or error) for each file, binaries imported one at a time."""
    by_binary: dict[str, list[str]] = {}
    outcome = []
    for path in paths:
        try:
            by_binary.setdefault(binary_of(path), []).append(path)
        except ValueError as error:
            outcome.append((path, "?", False, str(error)))
    absl_flags = set(FLAGS)
    for binary, files in by_binary.items():
        for name in [name for name in sys.modules if name.startswith("benchmarks.")]:
            del sys.modules[name]  # Re-imported: each binary defines its flags at import.
            if hasattr(benchmarks, name.split(".")[1]):
                delattr(benchmarks, name.split(".")[1])
        module = importlib.import_module(f"benchmarks.{binary}")
        for path in files:
            try:
                outcome.append((path, binary, True, _check_file(binary, module, path)))
            except (flags.Error, ValueError) as error:
                outcome.append((path, binary, False, " ".join(str(error).split())))
        for name in set(FLAGS) - absl_flags:
            if name in FLAGS:  # A short name goes with its long name.
                delattr(FLAGS, name)
    return outcome


def main(argv: list[str]) -> int:
    paths = argv or default_flagfiles()
    if not paths:
        print("check_flagfiles.py: error: no flag files found", file=sys.stderr)
        return 1
    outcome = check(paths)
    for path, binary, ok, text in outcome:
        print(f"{'ok' if ok else 'FAIL'} {os.path.relpath(path, REPO)} ({binary}): {text}")
    failed = sum(not ok for *_, ok, _ in outcome)
    print(f"{len(outcome) - failed} of {len(outcome)} flag file(s) valid")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
