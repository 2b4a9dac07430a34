"""Datasets as whole splits in a fixed order: MNIST, Fashion-MNIST, CIFAR-10/100, TIMIT, synthetic.

`load_split(name, split)` returns a `SplitData`: float32 features and int32 labels as numpy
arrays in the order of the source, so a full-split evaluation sees every example exactly once,
in the same order every time. `SplitData.as_dataset()` and `load()` wrap them in an unbatched
`tf.data.Dataset` of (features, label); shuffling and batching belong to the caller.

Preprocessing is the authors': pixels / 255 as float32, images shaped (H, W, C) (MNIST
(28, 28, 1)); `flatten=True` gives [N, H*W*C] for the F networks. TIMIT features are used as
stored (already flat, [N, 360]).

Sources are tried in this order; the first that holds the split is used. When none does, one
DataError lists every source tried and how to provide the data. Files that exist but are
broken (truncated, wrong magic number, image and label counts differ, labels out of range,
wrong TIMIT width) raise a DataError naming the file at once: a damaged copy is never
silently replaced by another source.

1. "local": files under `data_dir`.
   - mnist, fashion_mnist: the IDX files `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`
     (train) and `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte` (test), each plain or
     gzipped (`.gz`). Looked for in `data_dir/<name>/`, then the usual other folder names
     (`data_dir/MNIST/raw/`; `data_dir/fashion-mnist/`, `data_dir/FashionMNIST/raw/`), then
     `data_dir/` itself. The file names are the same for both datasets, so files directly in
     `data_dir` are taken to be the dataset asked for.
   - cifar10: `data_dir/cifar-10-batches-py/` (`data_batch_1` .. `data_batch_5`, `test_batch`),
     also as `data_dir/cifar10/cifar-10-batches-py/`.
   - cifar100: `data_dir/cifar-100-python/` (`train`, `test`; the 100 fine labels), also as
     `data_dir/cifar100/cifar-100-python/`.
   - timit: `data_dir/timit/train.npz`, `data_dir/timit/test.npz` with `features` float32
     [N, 360], `labels` integer [N] in [0, num_classes) and optionally `num_classes` (default
     1973). TIMIT is licensed by the LDC: this is its only source.
2. "debian" (fashion_mnist only): Debian's `dataset-fashion-mnist` package, installed in
   /usr/share/datasets/fashion-mnist (gzipped IDX files).
3. "tfds" (mnist, fashion_mnist, cifar10, cifar100): `tfds.load(name, data_dir=tfds_data_dir)`
   (None: `$TFDS_DATA_DIR` or ~/tensorflow_datasets). Prepared data is read as it is. Otherwise,
   when `download` is true, TFDS downloads and prepares the dataset, first checking within a
   few seconds that the download hosts answer (TFDS itself retries for minutes), unless the
   archives already lie in `<tfds_data_dir>/downloads/manual/`.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import tensorflow as tf
from absl import logging

from lbgap_tf.datafiles import (
    DataError,
    check_labels,
    read_cifar_batch,
    read_idx_pair,
    read_timit_npz,
)

__all__ = [
    "DATASET_NAMES",
    "DEBIAN_FASHION_MNIST_DIR",
    "SOURCES",
    "SPLITS",
    "TIMIT_FEATURE_DIM",
    "TIMIT_NUM_CLASSES",
    "DataError",
    "DatasetInfo",
    "SplitData",
    "SyntheticSpec",
    "load",
    "load_split",
]

DATASET_NAMES = ("mnist", "fashion_mnist", "cifar10", "cifar100", "timit", "synthetic")
SPLITS = ("train", "test")
SOURCES = ("local", "debian", "tfds")

DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
# F2's input: 40 fMLLR coefficients spliced over 9 frames; 1973 context-dependent states
# (the paper's numbers as recalled, see PAPER.md).
TIMIT_FEATURE_DIM = 360
TIMIT_NUM_CLASSES = 1973

_PROBE_TIMEOUT_S = 5.0  # per download host
_TFDS_READ_BATCH = 10_000  # examples per chunk when reading a TFDS split into memory


@dataclass(frozen=True)
class _Catalog:
    num_classes: int
    shape: tuple[int, ...]  # one example as returned (before flattening)
    sources: tuple[str, ...]  # applicable sources, in the order tried
    how_to_get: str


_MANUAL = "see BUILD.md, 'Preparing data'"


def _tfds_fix(name: str) -> str:
    return (
        f"or prepare it with TFDS where there is internet (tfds.builder('{name}', "
        "data_dir=DIR).download_and_prepare()), copy DIR here and pass it as tfds_data_dir (or "
        f"set TFDS_DATA_DIR); {_MANUAL}"
    )


_CATALOG = {
    "mnist": _Catalog(
        10,
        (28, 28, 1),
        ("local", "tfds"),
        "put the four MNIST IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) in DATA_DIR/mnist/ and pass "
        f"data_dir=DATA_DIR, {_tfds_fix('mnist')}",
    ),
    "fashion_mnist": _Catalog(
        10,
        (28, 28, 1),
        ("local", "debian", "tfds"),
        "install Debian's package (`apt-get install dataset-fashion-mnist`), or put the four "
        "Fashion-MNIST IDX files (train-images-idx3-ubyte.gz, ...) in DATA_DIR/fashion_mnist/ "
        f"and pass data_dir=DATA_DIR, {_tfds_fix('fashion_mnist')}",
    ),
    "cifar10": _Catalog(
        10,
        (32, 32, 3),
        ("local", "tfds"),
        "extract the CIFAR-10 python archive (cifar-10-python.tar.gz) into DATA_DIR, giving "
        f"DATA_DIR/cifar-10-batches-py/, and pass data_dir=DATA_DIR, {_tfds_fix('cifar10')}",
    ),
    "cifar100": _Catalog(
        100,
        (32, 32, 3),
        ("local", "tfds"),
        "extract the CIFAR-100 python archive (cifar-100-python.tar.gz) into DATA_DIR, giving "
        f"DATA_DIR/cifar-100-python/, and pass data_dir=DATA_DIR, {_tfds_fix('cifar100')}",
    ),
    "timit": _Catalog(
        TIMIT_NUM_CLASSES,
        (TIMIT_FEATURE_DIM,),
        ("local",),
        "TIMIT is licensed by the LDC and has no TFDS builder or Debian package: write "
        "DATA_DIR/timit/train.npz and DATA_DIR/timit/test.npz (features float32 [N, 360], "
        "labels int [N]) from a Kaldi recipe and pass data_dir=DATA_DIR; see BUILD.md, 'TIMIT'",
    ),
}

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_DIRS = {
    "mnist": ("mnist", "MNIST/raw", "."),
    "fashion_mnist": ("fashion_mnist", "fashion-mnist", "FashionMNIST/raw", "."),
}
_CIFAR_DIRS = {
    "cifar10": ("cifar-10-batches-py", "cifar10/cifar-10-batches-py"),
    "cifar100": ("cifar-100-python", "cifar100/cifar-100-python"),
}
_CIFAR_FILES = {
    "cifar10": {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
    "cifar100": {"train": ("train",), "test": ("test",)},
}
_CIFAR_LABEL_KEY = {"cifar10": b"labels", "cifar100": b"fine_labels"}


@dataclass(frozen=True)
class DatasetInfo:
    """Facts about one loaded split.

    input_shape is the shape of one example as delivered (after flattening when asked);
    source says where the data came from, e.g. "local:/data/mnist" or "tfds:mnist:3.0.1:...".
    """

    name: str
    split: str
    num_examples: int
    num_classes: int
    input_shape: tuple[int, ...]
    source: str


@dataclass(frozen=True, eq=False)
class SplitData:
    """A whole split in memory: features float32 [N, *input_shape], labels int32 [N]."""

    features: np.ndarray
    labels: np.ndarray
    info: DatasetInfo

    def __post_init__(self):
        if self.features.dtype != np.float32 or self.labels.dtype != np.int32:
            raise DataError(
                f"SplitData needs float32 features and int32 labels, got "
                f"{self.features.dtype} and {self.labels.dtype}"
            )
        n = self.info.num_examples
        if self.features.shape != (n, *self.info.input_shape) or self.labels.shape != (n,):
            raise DataError(
                f"SplitData shapes {self.features.shape} / {self.labels.shape} disagree with "
                f"its info ({n} examples of shape {self.info.input_shape})"
            )

    def as_dataset(self) -> tf.data.Dataset:
        """Unbatched (features, label) pairs, one per example, in the stored order."""
        return tf.data.Dataset.from_tensor_slices((self.features, self.labels))


@dataclass(frozen=True)
class SyntheticSpec:
    """A learnable classification task drawn deterministically from `seed`: Gaussian clusters.

    Class k has a mean m_k with i.i.d. N(0, 1) entries, drawn once from the seed; an example of
    class y is m_y + noise * N(0, I), reshaped to input_shape. Labels are balanced (each class
    appears floor(N/K) or ceil(N/K) times) in a seeded random order. Train and test are
    independent draws from the same distribution (separate random streams), so they share no
    example. Distances between class means grow like sqrt(2 * prod(input_shape)), so with
    noise = 1 and more than a few dozen input dimensions the classes are nearly separable;
    raise `noise` for a harder task.
    """

    num_train: int = 1024
    num_test: int = 256
    input_shape: tuple[int, ...] = (28, 28, 1)
    num_classes: int = 10
    seed: int = 0
    noise: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "input_shape", tuple(self.input_shape))
        if not self.input_shape or not all(
            isinstance(d, int | np.integer) and d > 0 for d in self.input_shape
        ):
            raise DataError(
                f"SyntheticSpec.input_shape must be positive integers, got {self.input_shape}"
            )
        for field, low in (("num_train", 1), ("num_test", 1), ("num_classes", 2), ("seed", 0)):
            value = getattr(self, field)
            if not isinstance(value, int | np.integer) or value < low:
                raise DataError(f"SyntheticSpec.{field} must be an integer >= {low}, got {value!r}")
        if not self.noise >= 0:
            raise DataError(f"SyntheticSpec.noise must be >= 0, got {self.noise!r}")


class _NotHere(Exception):
    """A source does not hold the split (a reason for the final message, not an error)."""


@dataclass(frozen=True)
class _Raw:
    features: np.ndarray  # uint8 images [N, H, W, C], or float32 frames [N, D]
    labels: np.ndarray  # integer [N]
    num_classes: int
    source: str


def load_split(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    tfds_data_dir: str | os.PathLike | None = None,
    flatten: bool = False,
    synthetic: SyntheticSpec | None = None,
    sources: tuple[str, ...] | None = None,
    download: bool = True,
) -> SplitData:
    """Load a whole split of dataset `name` ("train" or "test") into memory.

    data_dir: folder of local files (see the module docstring); tfds_data_dir: TFDS's data
    folder; flatten: give each example as a vector (F networks); synthetic: the task for
    name="synthetic" (default SyntheticSpec()); sources: the sources to try, in that order
    (default: every source of the dataset in the documented order); download: let TFDS
    download a dataset it has not prepared.
    """
    catalog = _catalog_entry(name)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    if name == "synthetic":
        if sources is not None:
            raise DataError("sources= does not apply to the synthetic dataset; leave it unset")
        data = _synthetic(split, synthetic or SyntheticSpec(), flatten)
    else:
        if synthetic is not None:
            raise DataError(f"synthetic= applies only to name='synthetic', not {name!r}")
        raw = _first_source(name, split, catalog, data_dir, tfds_data_dir, sources, download)
        data = _preprocess(name, split, catalog, raw, flatten)
    logging.info(
        "%s/%s: %d examples of shape %s, %d classes, from %s",
        name,
        split,
        data.info.num_examples,
        data.info.input_shape,
        data.info.num_classes,
        data.info.source,
    )
    return data


def load(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    tfds_data_dir: str | os.PathLike | None = None,
    flatten: bool = False,
    synthetic: SyntheticSpec | None = None,
    sources: tuple[str, ...] | None = None,
    download: bool = True,
) -> tuple[tf.data.Dataset, DatasetInfo]:
    """`load_split(...)` as an unbatched tf.data.Dataset of (features, label) and its facts."""
    data = load_split(
        name,
        split,
        data_dir=data_dir,
        tfds_data_dir=tfds_data_dir,
        flatten=flatten,
        synthetic=synthetic,
        sources=sources,
        download=download,
    )
    return data.as_dataset(), data.info


def _catalog_entry(name: str) -> _Catalog | None:
    if name not in DATASET_NAMES:
        raise DataError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASET_NAMES)}")
    return _CATALOG.get(name)


def _first_source(
    name: str,
    split: str,
    catalog: _Catalog,
    data_dir: str | os.PathLike | None,
    tfds_data_dir: str | os.PathLike | None,
    sources: tuple[str, ...] | None,
    download: bool,
) -> _Raw:
    """Return the split from the first source that holds it, or raise one DataError."""
    order = catalog.sources if sources is None else tuple(sources)
    for source in order:
        if source not in catalog.sources:
            raise DataError(
                f"source {source!r} cannot provide {name}; its sources are "
                f"{', '.join(catalog.sources)} (all sources: {', '.join(SOURCES)})"
            )
    tried = []
    for source in order:
        try:
            if source == "local":
                return _from_local(name, split, catalog, data_dir)
            if source == "debian":
                return _from_debian(name, split)
            return _from_tfds(name, split, catalog, tfds_data_dir, download)
        except _NotHere as reason:
            tried.append(f"({len(tried) + 1}) {source}: {reason}")
    raise DataError(
        f"no {name} {split} data found; tried {' '.join(tried)}. To fix: {catalog.how_to_get}"
    )


def _from_local(name: str, split: str, catalog: _Catalog, data_dir) -> _Raw:
    if data_dir is None:
        raise _NotHere("no data_dir given")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise _NotHere(f"data_dir {root} is not a directory")
    if name in _IDX_DIRS:
        return _from_idx_dirs(name, split, "local", [root / sub for sub in _IDX_DIRS[name]])
    if name in _CIFAR_DIRS:
        return _from_cifar_dirs(name, split, catalog, [root / sub for sub in _CIFAR_DIRS[name]])
    path = root / "timit" / f"{split}.npz"
    if not path.exists():
        raise _NotHere(f"no {path}")
    features, labels, num_classes = read_timit_npz(path, TIMIT_FEATURE_DIM, catalog.num_classes)
    return _Raw(features, labels, num_classes, f"local:{path}")


def _from_debian(name: str, split: str) -> _Raw:
    if not DEBIAN_FASHION_MNIST_DIR.is_dir():
        raise _NotHere(f"{DEBIAN_FASHION_MNIST_DIR} absent (package dataset-fashion-mnist)")
    return _from_idx_dirs(name, split, "debian", [DEBIAN_FASHION_MNIST_DIR])


def _plain_or_gz(folder: Path, base: str) -> Path | None:
    for candidate in (folder / base, folder / f"{base}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _from_idx_dirs(name: str, split: str, source: str, folders: list[Path]) -> _Raw:
    """Read the split's IDX pair from the first folder holding either file of it."""
    image_base, label_base = _IDX_FILES[split]
    for folder in folders:
        images_path = _plain_or_gz(folder, image_base)
        labels_path = _plain_or_gz(folder, label_base)
        if images_path is None and labels_path is None:
            continue
        if images_path is None or labels_path is None:
            have, lack = (
                (images_path, label_base) if labels_path is None else (labels_path, image_base)
            )
            raise DataError(
                f"found {have} but not {lack}[.gz] beside it; put both files of the {split} "
                f"split in {folder}"
            )
        catalog = _CATALOG[name]
        images, labels = read_idx_pair(
            images_path, labels_path, catalog.shape[:2], catalog.num_classes
        )
        return _Raw(
            images[..., np.newaxis],
            labels,
            catalog.num_classes,
            f"{source}:{folder.resolve()}",
        )
    where = ", ".join(str(f) for f in folders)
    raise _NotHere(f"no {image_base}[.gz] / {label_base}[.gz] in {where}")


def _from_cifar_dirs(name: str, split: str, catalog: _Catalog, folders: list[Path]) -> _Raw:
    """Read the split's CIFAR pickle batches from the first existing folder, in file order."""
    for folder in folders:
        if not folder.is_dir():
            continue
        files = [folder / f for f in _CIFAR_FILES[name][split]]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise DataError(
                f"{folder} lacks {', '.join(missing)}; extract the complete python archive "
                "there again"
            )
        batches = [read_cifar_batch(f, _CIFAR_LABEL_KEY[name], catalog.num_classes) for f in files]
        images = np.concatenate([b[0] for b in batches])
        labels = np.concatenate([b[1] for b in batches])
        return _Raw(images, labels, catalog.num_classes, f"local:{folder.resolve()}")
    raise _NotHere(f"no folder {' or '.join(str(f) for f in folders)}")


def _from_tfds(name: str, split: str, catalog: _Catalog, tfds_data_dir, download: bool) -> _Raw:
    """Read the split through tfds.load, letting TFDS download and prepare it if allowed."""
    # Imported here: TFDS is slow to import and only this source needs it.
    import tensorflow_datasets as tfds

    where = str(tfds_data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets")
    try:
        return _read_tfds(tfds, name, split, catalog, tfds_data_dir, download=False)
    except Exception as e:  # not prepared (an AssertionError in TFDS 4.9) or unreadable
        unprepared = _describe(e)
    if not download:
        raise _NotHere(f"not prepared in {where} ({unprepared}); downloading is off")
    try:
        obstacle = _download_obstacle(tfds.builder(name, data_dir=tfds_data_dir))
    except Exception as e:  # TFDS could not even describe its download
        raise _NotHere(f"not prepared in {where}; cannot download: {_describe(e)}") from e
    if obstacle:
        raise _NotHere(f"not prepared in {where}; cannot download: {obstacle}")
    try:
        return _read_tfds(tfds, name, split, catalog, tfds_data_dir, download=True)
    except Exception as e:  # any download or preparation failure
        raise _NotHere(f"download and preparation into {where} failed: {_describe(e)}") from e


def _read_tfds(tfds, name, split, catalog, tfds_data_dir, *, download: bool) -> _Raw:
    # Read in chunks rather than with batch_size=-1, which batches by the split sizes in the
    # dataset's metadata and so depends on that metadata being complete.
    ds, info = tfds.load(
        name,
        split=split,
        data_dir=tfds_data_dir,
        batch_size=_TFDS_READ_BATCH,
        as_supervised=True,
        shuffle_files=False,
        download=download,
        with_info=True,
    )
    chunks = list(tfds.as_numpy(ds))
    if not chunks:
        raise _NotHere(f"TFDS {name} {split} split is empty")
    images = np.concatenate([c[0] for c in chunks])
    labels = np.concatenate([c[1] for c in chunks])
    return _Raw(images, labels, catalog.num_classes, f"tfds:{name}:{info.version}:{info.data_dir}")


def _download_obstacle(builder) -> str | None:
    """Why TFDS's download of `builder` cannot work now, or None.

    Archives already in <data_dir>/downloads/manual/ need no network; for the others, each
    download host must accept a connection within _PROBE_TIMEOUT_S.
    """
    manual = Path(builder.data_dir_root) / "downloads" / "manual"
    urls = [
        url
        for url, url_info in builder.url_infos.items()
        if not (url_info.filename and (manual / url_info.filename).is_file())
    ]
    return _unreachable_hosts(urls, _PROBE_TIMEOUT_S)


def _unreachable_hosts(urls: list[str], timeout_s: float) -> str | None:
    """Describe the first host of `urls` that does not accept a TCP connection, or None."""
    hosts = []
    for url in urls:
        parts = urlsplit(url)
        host = (parts.hostname, parts.port or (80 if parts.scheme == "http" else 443))
        if host not in hosts:
            hosts.append(host)
    for host, port in hosts:
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
        except OSError as e:
            return f"{host}:{port} does not answer ({e}); this machine cannot download"
    return None


def _describe(error: Exception) -> str:
    text = str(error).strip().splitlines()
    described = f"{type(error).__name__}: {text[0] if text else ''}"
    if isinstance(error, ModuleNotFoundError) and error.name:
        described += f" (install it: pip install {error.name})"
    return described


def _preprocess(name: str, split: str, catalog: _Catalog, raw: _Raw, flatten: bool) -> SplitData:
    """Scale pixels to [0, 1] float32, check shapes and labels, flatten when asked."""
    if raw.features.shape[1:] != catalog.shape:
        raise DataError(
            f"{raw.source}: examples have shape {raw.features.shape[1:]}, {name} needs "
            f"{catalog.shape}; point the source at the real {name} data"
        )
    check_labels(raw.labels, raw.num_classes, raw.source)
    if raw.features.dtype == np.uint8:
        features = raw.features.astype(np.float32)
        features /= np.float32(255.0)
    else:
        features = raw.features.astype(np.float32, copy=False)
    return _split_data(name, split, features, raw.labels, raw.num_classes, raw.source, flatten)


def _split_data(name, split, features, labels, num_classes, source, flatten) -> SplitData:
    if flatten:
        features = features.reshape(len(features), -1)
    info = DatasetInfo(
        name=name,
        split=split,
        num_examples=len(features),
        num_classes=num_classes,
        input_shape=tuple(int(d) for d in features.shape[1:]),
        source=source,
    )
    return SplitData(features, labels.astype(np.int32), info)


def _synthetic(split: str, spec: SyntheticSpec, flatten: bool) -> SplitData:
    """Draw the split of the Gaussian-cluster task `spec` (see SyntheticSpec)."""
    dim = int(np.prod(spec.input_shape))
    means = np.random.default_rng([spec.seed, 0]).standard_normal((spec.num_classes, dim))
    stream, n = (1, spec.num_train) if split == "train" else (2, spec.num_test)
    rng = np.random.default_rng([spec.seed, stream])
    labels = rng.permutation(np.arange(n) % spec.num_classes)
    features = means[labels] + spec.noise * rng.standard_normal((n, dim))
    features = features.astype(np.float32).reshape(n, *spec.input_shape)
    source = f"synthetic:seed={spec.seed},noise={spec.noise}"
    return _split_data("synthetic", split, features, labels, spec.num_classes, source, flatten)
