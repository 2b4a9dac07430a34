"""Session-wide test setup: the suite runs on the CPU, split into two logical devices.

Devices are chosen explicitly so that the same suite passes on a CPU machine and on a GPU host
(`LBGAP_EXTRAS=gpu,test scripts/run_tests.sh`):

- GPUs are hidden from TensorFlow (``CUDA_VISIBLE_DEVICES=-1``, set here before TensorFlow is
  imported, so it holds for this process and every binary a test starts). The suite's
  assertions compare against NumPy float64 references and between one CPU and two CPU
  replicas at tolerances down to rel=1e-6; on a GPU the same ops run with other kernels and
  reduction orders, and recent NVIDIA GPUs run float32 matmuls and convolutions in TF32 by
  default (10-bit mantissa, relative errors near 1e-3). With GPUs visible, ``--strategy=
  mirrored`` would also replicate over the GPUs and refuse ``--cpu_devices=2`` ("drop
  cpu_devices"). ``HOST_CUDA_VISIBLE_DEVICES`` keeps the host's own setting, for
  ``tests/test_gpu.py``, which runs the binaries on the host's GPUs (TF32 off) and checks
  them against the CPU.
- The CPU is split into ``TEST_CPU_DEVICES`` logical devices, so multi-replica behaviour is
  tested. That must happen before TensorFlow initialises its devices, which is why it happens
  at import time of the conftest, before any test module runs a TensorFlow op.
"""

import os

UNSET = object()
HOST_CUDA_VISIBLE_DEVICES = os.environ.get("CUDA_VISIBLE_DEVICES", UNSET)
os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from lbgap_tf import distribute  # noqa: E402

if tf.config.list_physical_devices("GPU"):
    raise RuntimeError("TensorFlow sees GPUs although tests/conftest.py hid them: something "
                       "imported TensorFlow before the conftest; run the suite with "
                       "CUDA_VISIBLE_DEVICES=-1")

TEST_CPU_DEVICES = 2
distribute.split_cpu(TEST_CPU_DEVICES)


@pytest.fixture(autouse=True)
def _collective_keys_of_its_own():
    """Gives the MirroredStrategy objects of each test collective group keys of their own.

    TensorFlow starts every MirroredStrategy's group keys at 1 + the class attribute
    ``_collective_key_base`` (instance keys at 100), so a strategy of a later test whose
    synchronised BN all-reduces tensors of another shape than an earlier test's would fail
    with "Shape mismatch in the collective instance 100" in this one process.
    """
    tf.distribute.MirroredStrategy._collective_key_base += 1000
    yield


def pytest_collection_modifyitems(config, items):
    """Deselects tests marked ``slow`` unless a ``-m`` expression is given (``-m slow`` runs
    them; BUILD.md lists them): they cover the same code paths as faster tests at a larger
    scale, and the default suite must fit CI's 10 minutes."""
    if config.getoption("markexpr"):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]
