"""``--deterministic`` turns on TensorFlow op determinism when the flags are parsed, for the
whole process: a gap experiment resumed by a process that trains nothing (its runs were
trained by an earlier, killed process) measures sharpness with the deterministic kernels, as
the uninterrupted run did. Without that, such a process measured other values (relative
differences near 1e-6, found by scripts/kill_campaign.py)."""

import subprocess
import sys

import pytest

from tests import binaries

_DRIVER = """
from absl import flags
from tensorflow.python.framework import config

from benchmarks import common, gap  # noqa: F401  (gap defines the binary's flags)

states = []
for argv in (["gap.py", "--nodeterministic"], ["gap.py"]):
    flags.FLAGS.unparse_flags()
    common.parse_flags(argv)
    states.append(config.is_op_determinism_enabled())
print(states)
"""


@pytest.mark.slow
def test_deterministic_flag_enables_op_determinism_at_parse_time():
    done = subprocess.run([sys.executable, "-c", _DRIVER], cwd=binaries.REPO,
                          env=binaries.environment(), capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[False, True]"
