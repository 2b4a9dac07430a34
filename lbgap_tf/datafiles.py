"""Readers for the on-disk dataset formats, each validating what it reads.

Formats:
- IDX (MNIST, Fashion-MNIST): big-endian header, unsigned bytes; plain or gzip-compressed
  (recognised by content, not by file name).
- CIFAR python pickles (`cifar-10-batches-py/data_batch_1..5, test_batch`,
  `cifar-100-python/train, test`): dicts with b"data" uint8 [N, 3072] (channel-major rows)
  and a label list. Unpickled with an allow-list, so a file cannot run code.
- TIMIT frames: a numpy `.npz` with `features` (float, [N, 360]), `labels` (integer, [N]) and
  optionally `num_classes` (integer scalar).

Every problem raises `DataError` naming the file, what is wrong and how to fix it.
"""

from __future__ import annotations

import gzip
import pickle
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

_GZIP_MAGIC = b"\x1f\x8b"
_IDX_UBYTE = 0x08

# Globals a CIFAR pickle may reference: numpy's array reconstruction (numpy 1.x and 2.x
# module names) and the codec Python uses for bytes in protocol-2 pickles.
_PICKLE_ALLOWED = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }
)


class DataError(ValueError):
    """A dataset is missing, malformed or asked for wrongly; the message says how to fix it."""


def _redo(path: Path) -> str:
    return f"replace {path} with a complete copy of the original file"


def read_bytes(path: Path) -> bytes:
    """Return the content of `path`, gunzipped when it is a gzip stream."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}; check the path and permissions") from e
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as e:
        raise DataError(f"{path} is a truncated or corrupt gzip file ({e}); {_redo(path)}") from e


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes with `ndim` dimensions; returns uint8 [d0, ..., d_ndim-1].

    Checks the magic number (0x0000 08 ndim), that the payload has exactly the size the header
    announces (a shorter file is truncated, a longer one is not IDX).
    """
    raw = read_bytes(path)
    want_magic = bytes([0, 0, _IDX_UBYTE, ndim])
    if len(raw) < 4 or raw[:4] != want_magic:
        raise DataError(
            f"{path} is not an IDX file of {ndim}-D unsigned bytes: magic number "
            f"0x{raw[:4].hex()}, expected 0x{want_magic.hex()}; {_redo(path)} "
            "(image files are *-images-idx3-ubyte, label files *-labels-idx1-ubyte)"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated inside its header; {_redo(path)}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    size = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != size:
        state = "truncated" if len(raw) - header < size else "longer than its header says"
        raise DataError(
            f"{path} is {state}: the header announces shape {dims} = {size} bytes of data, "
            f"the file holds {len(raw) - header}; {_redo(path)}"
        )
    return np.frombuffer(raw, dtype=np.uint8, count=size, offset=header).reshape(dims)


def read_idx_pair(
    images_path: Path, labels_path: Path, image_hw: tuple[int, int], num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Read an IDX image file and its label file; returns uint8 [N, H, W] and uint8 [N]."""
    images = read_idx(images_path, 3)
    labels = read_idx(labels_path, 1)
    if images.shape[1:] != image_hw:
        raise DataError(
            f"{images_path} holds {images.shape[1]}x{images.shape[2]} images, expected "
            f"{image_hw[0]}x{image_hw[1]}; it belongs to another dataset: {_redo(images_path)}"
        )
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} "
            "labels; the two files come from different splits or datasets: use the images and "
            "labels files of the same split"
        )
    check_labels(labels, num_classes, labels_path)
    return images, labels


class _AllowListUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def read_cifar_batch(
    path: Path, label_key: bytes, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR python pickle; returns uint8 images [N, 32, 32, 3] and int64 labels [N].

    `label_key` is b"labels" for CIFAR-10 and b"fine_labels" for CIFAR-100.
    """
    try:
        with open(path, "rb") as f:
            batch = _AllowListUnpickler(f, encoding="bytes").load()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}; check the path and permissions") from e
    except Exception as e:  # any unpickling failure means the file is not a CIFAR batch
        raise DataError(
            f"{path} is not a readable CIFAR python pickle ({type(e).__name__}: {e}); "
            f"{_redo(path)} from the 'CIFAR python version' archive"
        ) from e
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise DataError(
            f"{path} lacks the keys b'data' and {label_key!r} (found {keys}); it is not a "
            f"CIFAR-{num_classes} python batch: {_redo(path)}"
        )
    data = np.asarray(batch[b"data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(
            f"{path}: b'data' is {data.dtype} {data.shape}, expected uint8 [N, 3072]; {_redo(path)}"
        )
    labels = np.asarray(batch[label_key])
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{path}: {label_key!r} holds {labels.shape} {labels.dtype} values for {len(data)} "
            f"images, expected one integer label per image; {_redo(path)}"
        )
    check_labels(labels, num_classes, path)
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int64)


def read_timit_npz(
    path: Path, feature_dim: int, default_num_classes: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Read TIMIT frames from `path`; returns float32 [N, feature_dim], int64 [N], num_classes."""
    arrays = _read_npz(path)
    missing = {"features", "labels"} - arrays.keys()
    if missing:
        raise DataError(
            f"{path} lacks the array(s) {sorted(missing)} (found {sorted(arrays)}); save "
            "`features` float32 [N, 360] and `labels` int [N] (see BUILD.md, TIMIT)"
        )
    features, labels = arrays["features"], arrays["labels"]
    num_classes = default_num_classes
    if "num_classes" in arrays:
        value = arrays["num_classes"]
        if value.shape != () or not np.issubdtype(value.dtype, np.integer) or value < 2:
            raise DataError(f"{path}: `num_classes` must be an integer scalar >= 2, got {value!r}")
        num_classes = int(value)
    if not np.issubdtype(features.dtype, np.floating):
        raise DataError(
            f"{path}: `features` has dtype {features.dtype}, expected float32 acoustic "
            "features (e.g. the output of Kaldi copy-feats); save them as float32"
        )
    if features.ndim != 2 or features.shape[1] != feature_dim:
        raise DataError(
            f"{path}: `features` has shape {features.shape}, expected [N, {feature_dim}] "
            f"(each frame: {feature_dim} features, e.g. 40 fMLLR coefficients spliced over 9 "
            "frames); regenerate it with that splicing (see BUILD.md, TIMIT)"
        )
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: `labels` is {labels.dtype} {labels.shape}, expected integers [N]")
    if len(labels) != len(features):
        raise DataError(
            f"{path} holds {len(features)} feature frames but {len(labels)} labels; every frame "
            "needs one label (align features and alignments per utterance, see BUILD.md, TIMIT)"
        )
    if not np.all(np.isfinite(features)):
        raise DataError(f"{path}: `features` contains NaN or infinite values; regenerate it")
    check_labels(labels, num_classes, path)
    return features.astype(np.float32, copy=False), labels.astype(np.int64), num_classes


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Return every array of the .npz archive `path` by name (no pickled objects allowed)."""
    how = "write it with numpy.savez(path, features=..., labels=...) (see BUILD.md, TIMIT)"
    errors = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)
    try:
        loaded = np.load(path, allow_pickle=False)
    except errors as e:
        raise DataError(f"{path} is not a readable .npz archive ({e}); {how}") from e
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise DataError(f"{path} holds a single .npy array, not an .npz archive; {how}")
    try:
        with loaded:
            return {key: loaded[key] for key in loaded.files}
    except errors as e:
        raise DataError(f"{path} is a truncated or corrupt .npz archive ({e}); {how}") from e


def check_labels(labels: np.ndarray, num_classes: int, origin: object) -> None:
    """Raise DataError unless every label lies in [0, num_classes)."""
    if len(labels) == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise DataError(
            f"{origin}: labels range over [{low}, {high}], expected [0, {num_classes - 1}] for "
            f"{num_classes} classes; the labels belong to another dataset or are corrupt"
        )
