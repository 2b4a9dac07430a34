"""Session-wide test setup: two logical CPU devices, so multi-replica behaviour is tested.

The CPU must be split before TensorFlow initialises its devices, which is why this happens at
import time of the conftest, before any test module runs a TensorFlow op.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from lbgap_tf import distribute  # noqa: E402

TEST_CPU_DEVICES = 2
distribute.split_cpu(TEST_CPU_DEVICES)
