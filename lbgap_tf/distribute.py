"""The one place that builds a tf.distribute strategy.

Strategies (``STRATEGIES``):

- ``default``: TensorFlow's default no-op strategy (one replica on the default device);
- ``one_device``: ``OneDeviceStrategy`` on the first GPU, else the CPU;
- ``mirrored``: ``MirroredStrategy`` over every local GPU, or, on a machine without GPUs, over
  every logical CPU device (see ``split_cpu``), so N-replica behaviour runs on a laptop;
- ``multi_worker_mirrored``: ``MultiWorkerMirroredStrategy``; the cluster comes from the
  ``TF_CONFIG`` environment variable, one CPU device (or all local GPUs) per worker;
- ``tpu``: ``TPUStrategy`` on the TPU named by ``tpu_address`` ("" or "local" for a TPU VM).

Every invalid combination raises a ``ValueError`` that says what to do instead.
"""

from __future__ import annotations

import json
import os
import platform

import tensorflow as tf

STRATEGIES = ("default", "one_device", "mirrored", "multi_worker_mirrored", "tpu")


def split_cpu(num_devices: int) -> None:
    """Splits the physical CPU into ``num_devices`` logical devices.

    Must run before TensorFlow initialises its devices (before the first op or strategy);
    calling it again with the same number is a no-op.

    Raises:
      ValueError: ``num_devices`` < 1, or TensorFlow already initialised a different split.
    """
    if num_devices < 1:
        raise ValueError(f"the number of CPU devices must be at least 1, got {num_devices}")
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == num_devices:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)]
        )
    except RuntimeError as error:
        have = len(tf.config.list_logical_devices("CPU"))
        raise ValueError(
            f"cannot split the CPU into {num_devices} devices: TensorFlow already initialised "
            f"{have} CPU device(s); call split_cpu before any TensorFlow op "
            "(binaries apply --cpu_devices at startup)"
        ) from error


def get_strategy(
    name: str = "mirrored",
    *,
    cpu_devices: int | None = None,
    tpu_address: str | None = None,
) -> tf.distribute.Strategy:
    """Builds the strategy ``name`` (one of ``STRATEGIES``).

    Args:
      name: strategy name.
      cpu_devices: split the CPU into this many logical devices first (only meaningful for
        ``mirrored`` on a machine without GPUs, where it sets the replica count).
      tpu_address: TPU name or grpc address, only with ``tpu``.
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}: choose one of {', '.join(STRATEGIES)}")
    if tpu_address is not None and name != "tpu":
        raise ValueError(
            f"a TPU address was given with strategy {name!r}: use --strategy=tpu or drop "
            "the TPU address"
        )
    if cpu_devices is not None:
        if name != "mirrored" and cpu_devices != 1:
            raise ValueError(
                f"strategy {name!r} uses one CPU device per process, so cpu_devices="
                f"{cpu_devices} has no effect: use --strategy=mirrored to run "
                f"{cpu_devices} replicas on the CPU, or drop cpu_devices"
            )
        split_cpu(cpu_devices)

    if name == "multi_worker_mirrored":
        # Collective ops are configured when the strategy is created, which must happen before
        # anything initialises the TensorFlow context (even listing logical devices).
        _check_tf_config()
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as error:
            raise ValueError(
                f"cannot start multi-worker collectives ({error}): create the strategy before "
                "any TensorFlow op (binaries do so at startup)") from error
    if name == "tpu":
        return _tpu_strategy(tpu_address)
    gpus = tf.config.list_logical_devices("GPU")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    # mirrored: every GPU, else every logical CPU.
    if gpus:
        if cpu_devices not in (None, 1):
            raise ValueError(
                "cpu_devices splits the CPU, but this machine has GPUs and mirrored "
                "replicates over the GPUs: drop cpu_devices"
            )
        return tf.distribute.MirroredStrategy([gpu.name for gpu in gpus])
    cpus = [cpu.name for cpu in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(
        cpus, cross_device_ops=tf.distribute.ReductionToOneDevice()
    )


def _check_tf_config() -> None:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return  # A single worker: legal, and how a one-process smoke run works.
    try:
        config = json.loads(raw)
        config["cluster"]["worker"]
        config["task"]["index"]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(
            "TF_CONFIG is not valid: it must be JSON like "
            '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", '
            '"index": 0}}'
        ) from error


def _tpu_strategy(tpu_address: str | None) -> tf.distribute.Strategy:
    address = "" if tpu_address in (None, "local") else tpu_address
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=address)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, OSError, tf.errors.OpError) as error:
        raise ValueError(
            f"no TPU reachable at {tpu_address or 'the local TPU VM'!r} ({error}): pass "
            "--tpu_address with the TPU name or grpc://host:port, or choose another --strategy"
        ) from error
    return tf.distribute.TPUStrategy(resolver)


def strategy_name(strategy: tf.distribute.Strategy) -> str:
    """The ``STRATEGIES`` name of a strategy object."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return "multi_worker_mirrored"
    if isinstance(strategy, tf.distribute.MirroredStrategy):
        return "mirrored"
    if isinstance(strategy, tf.distribute.OneDeviceStrategy):
        return "one_device"
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "tpu"
    return "default"


def device_kind(strategy: tf.distribute.Strategy) -> str:
    """A readable name of the hardware the replicas run on, e.g. 'CPU: AMD EPYC 7B13'."""
    if strategy_name(strategy) == "default":
        devices = [device.name for device in tf.config.list_logical_devices()[:1]]
    else:
        devices = strategy.extended.worker_devices
    if any("TPU" in device.upper() for device in devices):
        return "TPU"
    gpus = tf.config.list_physical_devices("GPU")
    if any("GPU" in device.upper() for device in devices) and gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return f"GPU: {details.get('device_name', 'unknown')}"
    return f"CPU: {_cpu_model()}"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(strategy: tf.distribute.Strategy) -> dict:
    """Provenance of a strategy for run records: strategy, replicas, workers, device_kind."""
    resolver = getattr(strategy, "cluster_resolver", None)
    workers = 1
    if resolver is not None:
        workers = max(1, len(resolver.cluster_spec().as_dict().get("worker", [])))
    return {
        "strategy": strategy_name(strategy),
        "replicas": strategy.num_replicas_in_sync,
        "workers": workers,
        "device_kind": device_kind(strategy),
    }
