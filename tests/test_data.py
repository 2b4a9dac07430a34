"""Tests of lbgap_tf.data: every source, every format reader, every bad input, synthetic data.

Files in the IDX, CIFAR-pickle and TIMIT formats are written by the helpers below, following
the formats' specifications independently of the readers. TFDS datasets go through the real
tfds.load path with tfds.testing.mock_data. The real Fashion-MNIST test runs where Debian's
dataset-fashion-mnist is installed.
"""

import gzip
import os
import pickle
import socket
import struct
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow_datasets as tfds

from lbgap_tf import data
from lbgap_tf.data import DataError, SyntheticSpec

IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


# ----------------------------------------------------------------------------- file writers
def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding: 0x00 0x00, type 0x08 (ubyte), ndim, big-endian int32 dims, raw bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_file(path: Path, content: bytes, gz: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        content = gzip.compress(content)
    path.write_bytes(content)
    return path


def write_idx_split(folder: Path, split: str, images, labels, gz=True) -> tuple[Path, Path]:
    image_name, label_name = IDX_NAMES[split]
    return (
        write_file(folder / image_name, idx_bytes(images), gz),
        write_file(folder / label_name, idx_bytes(labels), gz),
    )


def random_idx(rng, n, hw=(28, 28), num_classes=10):
    images = rng.integers(0, 256, size=(n, *hw), dtype=np.uint8)
    labels = rng.integers(0, num_classes, size=n, dtype=np.uint8)
    return images, labels


def write_cifar_batch(path: Path, images_hwc, labels, label_key=b"labels", extra=None):
    """CIFAR python batch: rows of 1024 red, 1024 green, 1024 blue values, row-major pixels."""
    n = len(images_hwc)
    rows = np.empty((n, 3072), dtype=np.uint8)
    for i in range(n):
        for c in range(3):
            rows[i, c * 1024 : (c + 1) * 1024] = images_hwc[i, :, :, c].ravel()
    batch = {b"batch_label": b"test batch", b"data": rows, label_key: [int(v) for v in labels]}
    batch.update(extra or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)


def random_cifar(rng, n, num_classes=10):
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, num_classes, size=n)
    return images, labels


def write_timit(path: Path, features, labels, **extra):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, features=features, labels=labels, **extra)


def message(excinfo) -> str:
    return str(excinfo.value)


# ----------------------------------------------------------------------------- names and splits
def test_unknown_dataset_lists_valid_names():
    with pytest.raises(DataError) as e:
        data.load_split("imagenet", "train")
    assert "unknown dataset 'imagenet'" in message(e)
    for name in data.DATASET_NAMES:
        assert name in message(e)


def test_unknown_split_lists_valid_splits():
    with pytest.raises(DataError) as e:
        data.load_split("mnist", "validation")
    assert "unknown split 'validation'" in message(e)
    assert "train, test" in message(e)


def test_source_that_cannot_provide_the_dataset_is_refused(tmp_path):
    with pytest.raises(DataError) as e:
        data.load_split("mnist", "train", data_dir=tmp_path, sources=("debian",))
    assert "source 'debian' cannot provide mnist" in message(e)
    assert "local, tfds" in message(e)
    with pytest.raises(DataError) as e:
        data.load_split("cifar10", "train", data_dir=tmp_path, sources=("ftp",))
    assert "source 'ftp'" in message(e)


def test_synthetic_spec_only_with_synthetic_dataset():
    with pytest.raises(DataError) as e:
        data.load_split("mnist", "train", synthetic=SyntheticSpec())
    assert "only to name='synthetic'" in message(e)


# ----------------------------------------------------------------------------- IDX files
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("layout", ["named", "alias", "root"])
def test_idx_files_round_trip(tmp_path, name, gz, layout):
    folder = {
        "named": tmp_path / name,
        "alias": tmp_path / {"mnist": "MNIST/raw", "fashion_mnist": "fashion-mnist"}[name],
        "root": tmp_path,
    }[layout]
    rng = np.random.default_rng(1)
    for split, n in (("train", 7), ("test", 4)):
        images, labels = random_idx(rng, n)
        write_idx_split(folder, split, images, labels, gz=gz)
        got = data.load_split(name, split, data_dir=tmp_path)
        assert got.features.dtype == np.float32 and got.labels.dtype == np.int32
        assert got.features.shape == (n, 28, 28, 1)
        np.testing.assert_allclose(got.features[..., 0], images / 255.0, rtol=1e-7, atol=0)
        np.testing.assert_array_equal(got.labels, labels)
        assert got.info == data.DatasetInfo(
            name, split, n, 10, (28, 28, 1), f"local:{folder.resolve()}"
        )
        flat = data.load_split(name, split, data_dir=tmp_path, flatten=True)
        assert flat.info.input_shape == (784,)
        np.testing.assert_array_equal(flat.features, got.features.reshape(n, 784))


def test_idx_pixel_scaling_extremes(tmp_path):
    images = np.zeros((2, 28, 28), np.uint8)
    images[0, 0, 0], images[1, 27, 27], images[1, 5, 5] = 255, 1, 128
    write_idx_split(tmp_path / "mnist", "test", images, np.array([3, 9], np.uint8))
    got = data.load_split("mnist", "test", data_dir=tmp_path)
    assert got.features[0, 0, 0, 0] == 1.0
    assert got.features[1, 27, 27, 0] == np.float32(1 / 255)
    assert got.features[1, 5, 5, 0] == np.float32(128 / 255)
    assert got.features.sum() == np.float32(1.0 + 1 / 255 + 128 / 255)


def test_idx_dataset_folder_is_preferred_to_data_dir_root(tmp_path):
    rng = np.random.default_rng(2)
    write_idx_split(tmp_path, "test", *random_idx(rng, 3))
    images, labels = random_idx(rng, 5)
    write_idx_split(tmp_path / "fashion_mnist", "test", images, labels)
    got = data.load_split("fashion_mnist", "test", data_dir=tmp_path)
    assert got.info.num_examples == 5
    np.testing.assert_array_equal(got.labels, labels)


def _idx_case(tmp_path, case):
    """Write a broken test split under tmp_path/mnist; return the file the error must name."""
    rng = np.random.default_rng(3)
    images, labels = random_idx(rng, 5)
    folder = tmp_path / "mnist"
    image_name, label_name = IDX_NAMES["test"]
    if case == "truncated":
        write_file(folder / label_name, idx_bytes(labels), gz=False)
        return write_file(folder / image_name, idx_bytes(images)[:-100], gz=False)
    if case == "truncated_gzip":
        write_file(folder / label_name, idx_bytes(labels), gz=True)
        path = folder / f"{image_name}.gz"
        path.write_bytes(gzip.compress(idx_bytes(images))[:500])
        return path
    if case == "wrong_magic":  # a label file saved under the image file's name
        write_file(folder / label_name, idx_bytes(labels), gz=True)
        return write_file(folder / image_name, idx_bytes(labels), gz=True)
    if case == "trailing_bytes":
        write_file(folder / label_name, idx_bytes(labels), gz=True)
        return write_file(folder / image_name, idx_bytes(images) + b"\0" * 10, gz=True)
    if case == "count_mismatch":
        image_path, _ = write_idx_split(folder, "test", images, labels[:4])
        return image_path
    if case == "label_out_of_range":
        labels[:] = [0, 3, 10, 9, 1]
        _, label_path = write_idx_split(folder, "test", images, labels)
        return label_path
    if case == "wrong_image_size":
        image_path, _ = write_idx_split(folder, "test", images[:, :14, :14], labels)
        return image_path
    if case == "missing_labels":
        return write_file(folder / image_name, idx_bytes(images), gz=True)
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case, expected",
    [
        ("truncated", "is truncated: the header announces shape (5, 28, 28) = 3920 bytes"),
        ("truncated_gzip", "is a truncated or corrupt gzip file"),
        ("wrong_magic", "magic number 0x00000801, expected 0x00000803"),
        ("trailing_bytes", "is longer than its header says"),
        ("count_mismatch", "holds 5 images but"),
        ("label_out_of_range", "labels range over [0, 10], expected [0, 9]"),
        ("wrong_image_size", "holds 14x14 images, expected 28x28"),
        ("missing_labels", "but not t10k-labels-idx1-ubyte[.gz] beside it"),
    ],
)
def test_idx_bad_files_raise_clear_errors(tmp_path, case, expected):
    named = _idx_case(tmp_path, case)
    with pytest.raises(DataError) as e:
        data.load_split("mnist", "test", data_dir=tmp_path, download=False)
    assert expected in message(e)
    assert str(named) in message(e) or str(named.resolve()) in message(e)


def test_idx_count_mismatch_names_both_files(tmp_path):
    image_path, label_path = write_idx_split(
        tmp_path, "train", *random_idx(np.random.default_rng(4), 6)
    )
    label_path.write_bytes(gzip.compress(idx_bytes(np.zeros(2, np.uint8))))
    with pytest.raises(DataError) as e:
        data.load_split("fashion_mnist", "train", data_dir=tmp_path)
    assert f"{image_path} holds 6 images but {label_path} holds 2 labels" in message(e)
    assert "use the images and labels files of the same split" in message(e)


# ----------------------------------------------------------------------------- CIFAR pickles
def test_cifar10_batches_round_trip_in_file_order(tmp_path):
    rng = np.random.default_rng(5)
    folder = tmp_path / "cifar-10-batches-py"
    parts = [random_cifar(rng, n) for n in (2, 3, 1, 2, 2)]
    for i, (images, labels) in enumerate(parts, start=1):
        write_cifar_batch(folder / f"data_batch_{i}", images, labels)
    test_images, test_labels = random_cifar(rng, 4)
    write_cifar_batch(folder / "test_batch", test_images, test_labels)

    train = data.load_split("cifar10", "train", data_dir=tmp_path)
    all_images = np.concatenate([p[0] for p in parts])
    assert train.features.shape == (10, 32, 32, 3)
    np.testing.assert_allclose(train.features, all_images / 255.0, rtol=1e-7, atol=0)
    np.testing.assert_array_equal(train.labels, np.concatenate([p[1] for p in parts]))
    assert train.info == data.DatasetInfo(
        "cifar10", "train", 10, 10, (32, 32, 3), f"local:{folder.resolve()}"
    )
    test = data.load_split("cifar10", "test", data_dir=tmp_path, flatten=True)
    assert test.features.shape == (4, 3072)
    np.testing.assert_allclose(test.features, test_images.reshape(4, -1) / 255.0, rtol=1e-7)
    np.testing.assert_array_equal(test.labels, test_labels)


def test_cifar_channel_layout(tmp_path):
    """Row value c*1024 + h*32 + w is channel c of pixel (h, w)."""
    rows = np.zeros((1, 3072), np.uint8)
    rows[0, 0 * 1024 + 0 * 32 + 1] = 10  # red at (0, 1)
    rows[0, 1 * 1024 + 2 * 32 + 0] = 20  # green at (2, 0)
    rows[0, 2 * 1024 + 31 * 32 + 31] = 30  # blue at (31, 31)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": rows, b"labels": [7]}, f, protocol=2)
    got = data.load_split("cifar10", "test", data_dir=tmp_path).features[0] * 255
    np.testing.assert_allclose(
        [got[0, 1, 0], got[2, 0, 1], got[31, 31, 2], got.sum()], [10, 20, 30, 60], rtol=1e-6
    )


def test_cifar100_uses_fine_labels(tmp_path):
    rng = np.random.default_rng(6)
    folder = tmp_path / "cifar100" / "cifar-100-python"
    for split, n in (("train", 5), ("test", 3)):
        images, fine = random_cifar(rng, n, num_classes=100)
        fine[0] = 99
        coarse = {b"coarse_labels": [int(v) for v in fine // 5]}
        write_cifar_batch(folder / split, images, fine, label_key=b"fine_labels", extra=coarse)
        got = data.load_split("cifar100", split, data_dir=tmp_path)
        np.testing.assert_array_equal(got.labels, fine)
        np.testing.assert_allclose(got.features, images / 255.0, rtol=1e-7)
        assert got.info.num_classes == 100 and got.info.num_examples == n


class _Evil:
    def __reduce__(self):
        return (os.system, ("true",))


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing_batch", "lacks data_batch_3"),
        ("truncated", "is not a readable CIFAR python pickle"),
        ("code", "refusing to load global"),
        ("wrong_keys", "lacks the keys b'data' and b'labels'"),
        ("wrong_width", "expected uint8 [N, 3072]"),
        ("label_count", "holds (2,) int64 values for 3 images"),
        ("label_out_of_range", "labels range over [0, 10], expected [0, 9]"),
    ],
)
def test_cifar_bad_files_raise_clear_errors(tmp_path, case, expected):
    rng = np.random.default_rng(7)
    folder = tmp_path / "cifar-10-batches-py"
    for i in (1, 2, 4, 5):
        write_cifar_batch(folder / f"data_batch_{i}", *random_cifar(rng, 3))
    bad = folder / "data_batch_3"
    images, labels = random_cifar(rng, 3)
    if case == "truncated":
        write_cifar_batch(bad, images, labels)
        bad.write_bytes(bad.read_bytes()[:1000])
    elif case == "code":
        bad.write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}, protocol=2))
    elif case == "wrong_keys":
        write_cifar_batch(bad, images, labels, label_key=b"fine_labels")
    elif case == "wrong_width":
        bad.write_bytes(pickle.dumps({b"data": np.zeros((3, 1024), np.uint8), b"labels": [0] * 3}))
    elif case == "label_count":
        bad.write_bytes(pickle.dumps({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1]}))
    elif case == "label_out_of_range":
        write_cifar_batch(bad, images, [0, 10, 4])
    with pytest.raises(DataError) as e:
        data.load_split("cifar10", "train", data_dir=tmp_path, download=False)
    assert expected in message(e)
    assert str(folder) in message(e)


# ----------------------------------------------------------------------------- TIMIT arrays
def test_timit_round_trip(tmp_path):
    rng = np.random.default_rng(8)
    for split, n in (("train", 9), ("test", 4)):
        features = rng.standard_normal((n, 360)).astype(np.float32)
        labels = rng.integers(0, 1973, size=n)
        labels[0] = 1972
        write_timit(tmp_path / "timit" / f"{split}.npz", features, labels)
        got = data.load_split("timit", split, data_dir=tmp_path, flatten=True)
        np.testing.assert_array_equal(got.features, features)  # no scaling for TIMIT
        np.testing.assert_array_equal(got.labels, labels)
        path = tmp_path / "timit" / f"{split}.npz"
        assert got.info == data.DatasetInfo("timit", split, n, 1973, (360,), f"local:{path}")


def test_timit_num_classes_from_file(tmp_path):
    features = np.ones((3, 360), np.float64)  # other float types are converted
    write_timit(tmp_path / "timit" / "test.npz", features, np.array([0, 47, 3]), num_classes=48)
    got = data.load_split("timit", "test", data_dir=tmp_path)
    assert got.info.num_classes == 48
    assert got.features.dtype == np.float32 and got.features.sum() == 3 * 360


@pytest.mark.parametrize(
    "arrays, expected",
    [
        ({"features": np.zeros((4, 300), np.float32)}, "shape (4, 300), expected [N, 360]"),
        ({"labels": np.zeros(3, np.int64)}, "holds 4 feature frames but 3 labels"),
        ({"labels": np.array([0, 1, 1973, 2])}, "labels range over [0, 1973], expected [0, 1972]"),
        ({"labels": np.array([0, -1, 0, 2])}, "labels range over [-1, 2]"),
        ({"features": np.zeros((4, 360), np.int32)}, "has dtype int32, expected float32"),
        ({"labels": np.zeros(4, np.float32)}, "`labels` is float32 (4,), expected integers"),
        ({"features": np.full((4, 360), np.nan, np.float32)}, "NaN or infinite"),
        ({"num_classes": np.array(1.5)}, "`num_classes` must be an integer scalar >= 2"),
        ({"labels": None}, "lacks the array(s) ['labels']"),
    ],
)
def test_timit_bad_arrays_raise_clear_errors(tmp_path, arrays, expected):
    content = {"features": np.zeros((4, 360), np.float32), "labels": np.arange(4)}
    content.update(arrays)
    content = {k: v for k, v in content.items() if v is not None}
    path = tmp_path / "timit" / "train.npz"
    path.parent.mkdir()
    np.savez(path, **content)
    with pytest.raises(DataError) as e:
        data.load_split("timit", "train", data_dir=tmp_path)
    assert expected in message(e)
    assert str(path) in message(e)


def test_timit_truncated_or_foreign_file(tmp_path):
    path = tmp_path / "timit" / "test.npz"
    write_timit(path, np.zeros((50, 360), np.float32), np.zeros(50, np.int64))
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(DataError) as e:
        data.load_split("timit", "test", data_dir=tmp_path)
    assert f"{path} is " in message(e) and "npz archive" in message(e)
    np.save(tmp_path / "timit" / "x.npy", np.zeros(3))
    (tmp_path / "timit" / "x.npy").rename(path)
    with pytest.raises(DataError) as e:
        data.load_split("timit", "test", data_dir=tmp_path)
    assert "holds a single .npy array, not an .npz archive" in message(e)


# ----------------------------------------------------------------------------- source order
def test_every_source_named_when_all_fail(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")
    tfds_dir = tmp_path / "tfds"
    with pytest.raises(DataError) as e:
        data.load_split(
            "fashion_mnist", "test", data_dir=tmp_path, tfds_data_dir=tfds_dir, download=False
        )
    text = message(e)
    assert text.startswith("no fashion_mnist test data found; tried (1) local: no ")
    assert str(tmp_path / "fashion_mnist") in text and str(tmp_path / "FashionMNIST/raw") in text
    assert "(2) debian: " in text and "dataset-fashion-mnist" in text
    assert f"(3) tfds: not prepared in {tfds_dir}" in text and "downloading is off" in text
    assert "apt-get install dataset-fashion-mnist" in text
    assert "tfds.builder('fashion_mnist', data_dir=DIR).download_and_prepare()" in text
    assert "\n" not in text


def test_mnist_without_data_dir_names_local_and_tfds(tmp_path):
    with pytest.raises(DataError) as e:
        data.load_split("mnist", "train", tfds_data_dir=tmp_path, download=False)
    assert "(1) local: no data_dir given (2) tfds: not prepared" in message(e)
    assert "DATA_DIR/mnist/" in message(e)


def test_timit_has_only_local_source(tmp_path):
    with pytest.raises(DataError) as e:
        data.load_split("timit", "train", data_dir=tmp_path)
    assert f"(1) local: no {tmp_path / 'timit' / 'train.npz'}" in message(e)
    assert "no TFDS builder" in message(e) and "(2)" not in message(e)


def test_debian_location_is_read_and_local_files_come_first(tmp_path, monkeypatch):
    debian = tmp_path / "debian"
    rng = np.random.default_rng(9)
    images, labels = random_idx(rng, 3)
    write_idx_split(debian, "test", images, labels)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", debian)
    got = data.load_split("fashion_mnist", "test", data_dir=tmp_path / "empty")
    assert got.info.source == f"debian:{debian.resolve()}"
    np.testing.assert_array_equal(got.labels, labels)
    local_images, local_labels = random_idx(rng, 2)
    write_idx_split(tmp_path / "local" / "fashion_mnist", "test", local_images, local_labels)
    got = data.load_split("fashion_mnist", "test", data_dir=tmp_path / "local")
    assert got.info.source.startswith("local:")
    np.testing.assert_array_equal(got.labels, local_labels)
    got = data.load_split(
        "fashion_mnist", "test", data_dir=tmp_path / "local", sources=("debian", "local")
    )
    assert got.info.source.startswith("debian:")


@pytest.mark.skipif(
    not data.DEBIAN_FASHION_MNIST_DIR.is_dir(), reason="Debian dataset-fashion-mnist absent"
)
def test_real_fashion_mnist_from_debian():
    for split, n, prefix in (("train", 60000, "train"), ("test", 10000, "t10k")):
        got = data.load_split("fashion_mnist", split)
        assert got.info == data.DatasetInfo(
            "fashion_mnist", split, n, 10, (28, 28, 1),
            f"debian:{data.DEBIAN_FASHION_MNIST_DIR.resolve()}",
        )  # fmt: skip
        # Independent reader: fixed 16- and 8-byte headers.
        folder = data.DEBIAN_FASHION_MNIST_DIR
        raw_images = gzip.decompress((folder / f"{prefix}-images-idx3-ubyte.gz").read_bytes())
        raw_labels = gzip.decompress((folder / f"{prefix}-labels-idx1-ubyte.gz").read_bytes())
        labels = np.frombuffer(raw_labels, np.uint8, offset=8)
        images = np.frombuffer(raw_images, np.uint8, offset=16).reshape(n, 28, 28, 1)
        np.testing.assert_array_equal(got.labels, labels)
        np.testing.assert_array_equal(np.bincount(got.labels), [n // 10] * 10)
        np.testing.assert_array_equal(np.rint(got.features * 255).astype(np.uint8), images)
        assert got.features.min() == 0.0 and got.features.max() == 1.0


# ----------------------------------------------------------------------------- TFDS (mocked)
@pytest.mark.parametrize(
    "name, shape, num_classes",
    [
        ("mnist", (28, 28, 1), 10),
        ("fashion_mnist", (28, 28, 1), 10),
        ("cifar10", (32, 32, 3), 10),
        ("cifar100", (32, 32, 3), 100),
    ],
)
def test_tfds_datasets_through_tfds_load(tmp_path, monkeypatch, name, shape, num_classes):
    monkeypatch.setattr(data, "_TFDS_READ_BATCH", 3)  # several chunks, the last one partial
    n = 7
    with tfds.testing.mock_data(num_examples=n):
        # Default source order with an empty data_dir: local finds nothing, then TFDS.
        # (Debian would serve fashion_mnist first where installed, so it is skipped here.)
        sources = ("local", "tfds") if name == "fashion_mnist" else None
        got = data.load_split(
            name, "train", data_dir=tmp_path, tfds_data_dir=tmp_path / "tfds", sources=sources
        )
        flat = data.load_split(
            name, "test", tfds_data_dir=tmp_path, sources=("tfds",), flatten=True
        )
    features = tfds.builder(name).info.features
    expected = list(tfds.testing.mocking.RandomFakeGenerator(features, n))
    images = np.stack([ex["image"] for ex in expected])
    labels = np.array([ex["label"] for ex in expected])
    assert got.info.name == name and got.info.num_classes == num_classes
    assert got.info.input_shape == shape and got.info.num_examples == n
    assert got.info.source.startswith(f"tfds:{name}:")
    np.testing.assert_allclose(got.features, images / 255.0, rtol=1e-7, atol=0)
    np.testing.assert_array_equal(got.labels, labels)
    assert got.labels.dtype == np.int32 and got.features.dtype == np.float32
    assert flat.features.shape == (n, int(np.prod(shape)))
    np.testing.assert_array_equal(flat.features, got.features.reshape(n, -1))


def test_unreachable_download_host_fails_fast():
    # Numeric addresses, so that no name resolver takes part in the timing: a closed local
    # port refuses at once, and TEST-NET-1 (RFC 5737, never routed) either drops the packets
    # (the probe's timeout ends the wait) or is refused as unreachable at once.
    with socket.create_server(("127.0.0.1", 0)) as server:
        closed = server.getsockname()[1]
    start = time.monotonic()
    reason = data._unreachable_hosts([f"http://127.0.0.1:{closed}/a.gz"], timeout_s=1.0)
    assert reason.startswith(f"127.0.0.1:{closed} does not answer")
    reason = data._unreachable_hosts(["https://192.0.2.1/a.gz"], timeout_s=1.0)
    assert time.monotonic() - start < 1.0 + 2.0  # The timeout, and scheduling slack.
    assert reason.startswith("192.0.2.1:443 does not answer")
    assert data._unreachable_hosts([], timeout_s=3.0) is None


def test_a_name_that_does_not_resolve_is_an_unreachable_host():
    # Untimed: how long a resolver takes to say a name does not exist is not ours to bound.
    reason = data._unreachable_hosts(["https://lbgap-test.invalid/a.gz"], timeout_s=3.0)
    assert reason.startswith("lbgap-test.invalid:443 does not answer")


def test_reachable_download_host_passes():
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert data._unreachable_hosts([f"http://127.0.0.1:{port}/a.gz"], timeout_s=3.0) is None


# ----------------------------------------------------------------------------- tf.data view
def test_as_dataset_yields_every_example_once_in_order(tmp_path):
    images, labels = random_idx(np.random.default_rng(10), 7)
    write_idx_split(tmp_path, "test", images, labels)
    split = data.load_split("mnist", "test", data_dir=tmp_path, flatten=True)
    ds, info = data.load("mnist", "test", data_dir=tmp_path, flatten=True)
    assert info == split.info
    for _ in range(2):  # a second pass gives the same order
        batches = list(ds.batch(3).as_numpy_iterator())
        assert [len(b[1]) for b in batches] == [3, 3, 1]
        np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), split.features)
        np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), labels)
    assert ds.element_spec[0].shape == (784,) and ds.element_spec[1].dtype.name == "int32"


def test_split_data_checks_its_arrays():
    info = data.DatasetInfo("synthetic", "train", 2, 2, (3,), "test")
    with pytest.raises(DataError, match="float32 features and int32 labels"):
        data.SplitData(np.zeros((2, 3)), np.zeros(2, np.int32), info)
    with pytest.raises(DataError, match="disagree with its info"):
        data.SplitData(np.zeros((2, 4), np.float32), np.zeros(2, np.int32), info)


# ----------------------------------------------------------------------------- synthetic
def test_synthetic_is_deterministic_balanced_and_disjoint():
    spec = SyntheticSpec(num_train=50, num_test=20, input_shape=(4, 4, 2), num_classes=3, seed=5)
    train = data.load_split("synthetic", "train", synthetic=spec)
    again = data.load_split("synthetic", "train", synthetic=spec)
    test = data.load_split("synthetic", "test", synthetic=spec)
    other = data.load_split(
        "synthetic", "train", synthetic=SyntheticSpec(**{**vars(spec), "seed": 6})
    )
    np.testing.assert_array_equal(train.features, again.features)
    np.testing.assert_array_equal(train.labels, again.labels)
    assert not np.array_equal(train.features, other.features)
    assert train.features.shape == (50, 4, 4, 2) and test.features.shape == (20, 4, 4, 2)
    assert train.info == data.DatasetInfo(
        "synthetic", "train", 50, 3, (4, 4, 2), "synthetic:seed=5,noise=1.0"
    )
    np.testing.assert_array_equal(np.bincount(train.labels), [17, 17, 16])
    assert not np.array_equal(train.labels, np.arange(50) % 3)  # shuffled, not cyclic
    np.testing.assert_array_equal(np.bincount(test.labels), [7, 7, 6])
    train_rows = {row.tobytes() for row in train.features}
    assert not any(row.tobytes() in train_rows for row in test.features)
    flat = data.load_split("synthetic", "test", synthetic=spec, flatten=True)
    np.testing.assert_array_equal(flat.features, test.features.reshape(20, 32))


def test_synthetic_clusters_follow_the_spec():
    """Class means of a large sample match between splits; within-class spread equals noise."""
    spec = SyntheticSpec(num_train=4000, num_test=4000, input_shape=(5,), num_classes=2, noise=0.5)
    train = data.load_split("synthetic", "train", synthetic=spec)
    test = data.load_split("synthetic", "test", synthetic=spec)
    for k in range(2):
        a, b = train.features[train.labels == k], test.features[test.labels == k]
        np.testing.assert_allclose(a.mean(0), b.mean(0), atol=0.05)
        np.testing.assert_allclose(a.std(0), 0.5, rtol=0.06)


def test_synthetic_is_learnable():
    spec = SyntheticSpec(
        num_train=256, num_test=256, input_shape=(8, 8, 1), num_classes=4, seed=1, noise=3.0
    )
    train = data.load_split("synthetic", "train", synthetic=spec)
    test = data.load_split("synthetic", "test", synthetic=spec)
    # Nearest class mean, fitted on train, classifies test far above chance (0.25).
    means = np.stack([train.features[train.labels == k].mean(0) for k in range(4)])
    dist = ((test.features[:, None] - means[None]) ** 2).sum(axis=(2, 3, 4))
    assert (dist.argmin(1) == test.labels).mean() > 0.8
    # A small network trained a few epochs clearly reduces the cross-entropy.
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(32, "relu"),
         keras.layers.Dense(4)]
    )  # fmt: skip
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = model.evaluate(test.features, test.labels, verbose=0)
    model.fit(train.features, train.labels, batch_size=32, epochs=10, verbose=0)
    after = model.evaluate(test.features, test.labels, verbose=0)
    assert after < 0.5 * before


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"num_train": 0}, "num_train must be an integer >= 1"),
        ({"num_classes": 1}, "num_classes must be an integer >= 2"),
        ({"input_shape": (28, 0)}, "input_shape must be positive integers"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"noise": -0.1}, "noise must be >= 0"),
    ],
)
def test_synthetic_spec_rejects_bad_values(kwargs, expected):
    with pytest.raises(DataError, match=expected):
        SyntheticSpec(**kwargs)
