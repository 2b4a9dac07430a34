"""The initial weights x0 of a run: drawn from a seed, saved to and loaded from ``x0.npz``,
set into a model, and identified by a content digest.

SB and LB runs of one comparison start from the same x0 (one run's ``x0.npz`` passed as
another's ``x0_path``); a run's x0 is built outside any strategy, so every strategy and replica
count starts from the same weights.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Sequence

import keras
import numpy as np

from lbgap_tf import data
from lbgap_tf.train.config import TrainConfig, TrainError
from lbgap_tf.train.network import build_model


def save_x0(model: keras.Model, path: str) -> None:
    """Writes every weight of ``model`` (BN moving statistics included), in ``model.weights``
    order, to the numpy archive ``path``; written to a temporary file and renamed."""
    arrays = {f"w{index:04d}": np.asarray(w) for index, w in enumerate(model.get_weights())}
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=directory, suffix=".npz", delete=False) as handle:
        np.savez(handle, model=np.array(model.name), **arrays)
    os.chmod(handle.name, 0o644)
    os.replace(handle.name, path)


def load_x0(path: str) -> list[np.ndarray]:
    """The weight arrays of an ``x0.npz`` written by ``save_x0``.

    Raises:
      TrainError: the file is missing, unreadable or not an x0 archive.
    """
    fix = "pass the x0.npz of an earlier run (runs/<run_id>/x0.npz) or drop --x0"
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = sorted(key for key in archive.files if key.startswith("w"))
            if not keys:
                raise TrainError(f"{path} holds no weights: {fix}")
            return [archive[key] for key in keys]
    except FileNotFoundError as error:
        raise TrainError(f"initial weights file {path} does not exist: {fix}") from error
    except (OSError, ValueError, EOFError) as error:
        if isinstance(error, TrainError):
            raise
        raise TrainError(f"cannot read initial weights {path} ({error}): {fix}") from error


def set_weights(model: keras.Model, arrays: Sequence[np.ndarray], source: str) -> None:
    """Assigns ``arrays`` (``model.weights`` order) to ``model``; ``source`` names them in the
    error raised when their shapes do not fit the model."""
    weights = model.weights
    shapes = [tuple(w.shape) for w in weights]
    given = [tuple(a.shape) for a in arrays]
    if shapes != given:
        raise TrainError(
            f"initial weights {source} do not fit {model.name} with input shape "
            f"{model.input_shape[1:]} ({len(given)} arrays of shapes {given[:2]}..., the model "
            f"has {len(shapes)} weights of shapes {shapes[:2]}...): use an x0 saved for the "
            "same model and dataset")
    for weight, array in zip(weights, arrays, strict=True):
        weight.assign(array.astype(weight.dtype))


def make_x0(config: TrainConfig, info: data.DatasetInfo) -> list[np.ndarray]:
    """Initial weights drawn from ``config.seed`` (Keras default initialisers), as arrays.

    Built outside any strategy, so every strategy and replica count starts from the same x0.
    """
    keras.utils.set_random_seed(config.seed)
    return build_model(config, info).get_weights()


def weights_digest(arrays: Sequence[np.ndarray]) -> str:
    """A 16-hex-digit sha256 of the arrays' shapes and bytes (identifies an x0 file's content)."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


_SOURCE_DIGEST = re.compile(r" \(sha256 ([0-9a-f]{16})\)$")


def file_source(path: str, arrays: Sequence[np.ndarray]) -> str:
    """How config.json and the run's row name an x0 file: its path and content digest,
    e.g. "runs/F1-.../x0.npz (sha256 0123456789abcdef)"."""
    return f"{path} (sha256 {weights_digest(arrays)})"


def source_digest(source: str | None) -> str | None:
    """The content digest in an x0 source written by ``file_source``; None for weights
    drawn from a seed ("seed 3") or a missing source."""
    match = _SOURCE_DIGEST.search(source or "")
    return match.group(1) if match else None
