"""The train binary on the host's GPU, checked against the same run on the CPU.

The rest of the suite runs on the CPU whatever the host (tests/conftest.py hides the GPUs);
these tests give the GPUs back to the binary they start (the host's ``CUDA_VISIBLE_DEVICES``)
with TF32 off (``NVIDIA_TF32_OVERRIDE=0``), so that float32 matmuls keep float32 precision and
the GPU run can be compared with the CPU run at a float32 tolerance. They are skipped where
TensorFlow has no CUDA support or the host has no NVIDIA device (a CPU machine).
"""

import glob

import pytest
import tensorflow as tf

from lbgap_tf import results
from tests import binaries, conftest

SMOKE = ["--model=F1", "--dataset=synthetic", "--synthetic_train_examples=256",
         "--synthetic_test_examples=64", "--batch_size=64", "--eval_batch_size=64",
         "--epochs=2", "--seed=3", "--quiet"]

pytestmark = pytest.mark.skipif(
    not (tf.test.is_built_with_cuda() and glob.glob("/dev/nvidia[0-9]*")
         and conftest.HOST_CUDA_VISIBLE_DEVICES not in ("-1", "")),
    reason="no GPU on this host (or TensorFlow without CUDA, or CUDA_VISIBLE_DEVICES hides it)")


def _gpu_environment() -> dict:
    env = binaries.environment(NVIDIA_TF32_OVERRIDE="0")
    if conftest.HOST_CUDA_VISIBLE_DEVICES is conftest.UNSET:
        del env["CUDA_VISIBLE_DEVICES"]
    else:
        env["CUDA_VISIBLE_DEVICES"] = conftest.HOST_CUDA_VISIBLE_DEVICES
    return env


def test_a_run_on_the_gpu_matches_the_same_run_on_the_cpu(tmp_path):
    rows = {}
    for device, env in (("gpu", _gpu_environment()), ("cpu", None)):
        out_dir = tmp_path / device
        code, _, err = binaries.run("benchmarks.train", *SMOKE, "--strategy=one_device",
                                    f"--output_dir={out_dir}", env=env)
        assert code == 0, err[-3000:]
        [rows[device]] = results.read_rows(out_dir / "runs.csv")
    assert rows["gpu"]["device_kind"].startswith("GPU: "), rows["gpu"]["device_kind"]
    assert rows["cpu"]["device_kind"].startswith("CPU: "), rows["cpu"]["device_kind"]
    for column in ("train_loss", "test_loss", "last_epoch_train_loss"):
        assert float(rows["gpu"][column]) == pytest.approx(float(rows["cpu"][column]),
                                                           rel=1e-3), column


def test_cpu_devices_with_mirrored_on_a_gpu_host_is_one_error_line(tmp_path):
    code, _, err = binaries.run("benchmarks.train", *SMOKE, "--strategy=mirrored",
                                "--cpu_devices=2", f"--output_dir={tmp_path / 'out'}",
                                env=_gpu_environment())
    assert code != 0
    assert "drop cpu_devices" in binaries.error_message(err, "train.py", only_own_line=False)
    assert not (tmp_path / "out").exists()
