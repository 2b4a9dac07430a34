"""Strategy selection: every strategy that can run here, and every error path."""

import json

import pytest
import tensorflow as tf

from lbgap_tf import distribute
from tests.conftest import TEST_CPU_DEVICES


def test_mirrored_over_logical_cpus_has_two_replicas():
    strategy = distribute.get_strategy("mirrored", cpu_devices=TEST_CPU_DEVICES)
    assert strategy.num_replicas_in_sync == 2
    info = distribute.describe(strategy)
    assert info["strategy"] == "mirrored"
    assert info["replicas"] == 2
    assert info["workers"] == 1
    assert info["device_kind"].startswith("CPU")


def test_mirrored_all_reduce_sums_over_replicas():
    strategy = distribute.get_strategy("mirrored")
    per_replica = strategy.run(
        lambda: tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group + 1,
                        tf.float32)
    )
    assert float(strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)) == 3.0


@pytest.mark.parametrize(
    "name, expected", [("default", "default"), ("one_device", "one_device")]
)
def test_single_replica_strategies(name, expected):
    strategy = distribute.get_strategy(name)
    assert distribute.describe(strategy)["strategy"] == expected
    assert strategy.num_replicas_in_sync == 1


def test_multi_worker_without_tf_config_is_one_worker(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    strategy = distribute.get_strategy("multi_worker_mirrored")
    assert distribute.describe(strategy)["strategy"] == "multi_worker_mirrored"
    assert strategy.num_replicas_in_sync == 1


def test_unknown_strategy_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown strategy 'nccl'.*default, one_device, mirrored"):
        distribute.get_strategy("nccl")


def test_tpu_address_needs_the_tpu_strategy():
    with pytest.raises(ValueError, match="use --strategy=tpu"):
        distribute.get_strategy("mirrored", tpu_address="grpc://10.0.0.1:8470")


@pytest.mark.parametrize("name", ["default", "one_device", "multi_worker_mirrored"])
def test_cpu_split_only_with_mirrored(name):
    with pytest.raises(ValueError, match="use --strategy=mirrored"):
        distribute.get_strategy(name, cpu_devices=2)


def test_split_after_initialisation_says_when_to_call_it():
    tf.constant(1.0)  # Devices are initialised by now.
    with pytest.raises(ValueError, match="already initialised 2 CPU device.*before any"):
        distribute.split_cpu(3)
    distribute.split_cpu(TEST_CPU_DEVICES)  # The current split again is a no-op.


def test_split_needs_a_positive_count():
    with pytest.raises(ValueError, match="at least 1"):
        distribute.split_cpu(0)


def test_malformed_tf_config(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {}}))
    with pytest.raises(ValueError, match="TF_CONFIG is not valid"):
        distribute.get_strategy("multi_worker_mirrored")


def test_unresolvable_tpu_name_is_a_clear_error():
    with pytest.raises(ValueError, match="no TPU reachable.*--tpu_address"):
        distribute.get_strategy("tpu", tpu_address="no-such-tpu-name")
