"""Run a deployable classifier — a binary package or a plain ONNX file — on arrays or on
a dataset's test split (what ``ofa-search run`` does)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np

from ofa_search.binary.runtime import BACKENDS, Backend, BinaryPackage
from ofa_search.errors import FileFormatError, OfaSearchError
from ofa_search.ort_options import exact_int8


class RunInputError(OfaSearchError, ValueError):
    """Inputs that do not fit the model (shape, dtype, file contents)."""


class Classifier(Protocol):
    """Anything that maps float32 ``[N, C, H, W]`` to logits ``[N, classes]``."""

    @property
    def input_shape(self) -> tuple[int, ...]: ...

    def run(self, x: np.ndarray) -> np.ndarray: ...


class OnnxClassifier:
    """A plain ONNX model in ONNX Runtime; a fixed batch of 1 runs samples one by one."""

    kind = "onnx"

    def __init__(self, path: str | os.PathLike[str], threads: int = 1) -> None:
        import onnxruntime as ort  # deferred: ONNX Runtime is a heavy import

        options = exact_int8(ort.SessionOptions())
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(str(path), options,
                                                 providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise FileFormatError(f"{path}: not a usable ONNX model ({exc})") from None
        (first, *rest) = self._session.get_inputs()
        dims = list(first.shape)
        if rest or len(dims) != 4 or not all(isinstance(d, int) for d in dims[1:]):
            raise FileFormatError(f"{path}: expected one input [N, C, H, W] with fixed C, H, "
                                  f"W; got {len(rest) + 1} input(s), the first {dims}")
        if isinstance(dims[0], int) and dims[0] != 1:
            raise FileFormatError(f"{path}: batch dimension fixed at {dims[0]}; only 1 or a "
                                  "symbolic batch is supported")
        self._name = first.name
        self._per_sample = isinstance(dims[0], int)
        self._shape = tuple(int(d) for d in dims[1:])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self._shape

    def run(self, x: np.ndarray) -> np.ndarray:
        x = check_batch(x, self.input_shape)
        if not self._per_sample:
            return np.asarray(self._session.run(None, {self._name: x})[0])
        return np.concatenate([np.asarray(self._session.run(None, {self._name: x[i:i + 1]})[0])
                               for i in range(len(x))])


def open_classifier(path: str | os.PathLike[str], *, threads: int = 1,
                    backend: str = "auto") -> tuple[Classifier, str]:
    """``(model, kind)``: ``.onnx`` files run in ONNX Runtime (kind ``onnx``), anything else
    must be a binary package (kind ``binary-package``) run with ``backend``."""
    if backend not in BACKENDS:
        raise RunInputError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    file = Path(path)
    if not file.is_file():
        raise FileFormatError(f"{file}: no such file")
    if file.suffix.lower() == ".onnx":
        return OnnxClassifier(file, threads), "onnx"
    package = BinaryPackage.load(file, backend=cast(Backend, backend), threads=threads)
    return package, "binary-package"


def check_batch(x: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
    """``x`` as float32 ``[N, *input_shape]`` (one sample ``[*input_shape]`` gets a batch
    axis), or :class:`RunInputError`."""
    x = np.asarray(x)
    if x.ndim == len(input_shape):
        x = x[None]
    if tuple(x.shape[1:]) != tuple(input_shape) or len(x) == 0:
        raise RunInputError(f"inputs must be [N, {', '.join(map(str, input_shape))}] (or one "
                            f"sample without N), got {list(x.shape)}")
    if not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(x.dtype, np.integer):
        raise RunInputError(f"inputs must be numbers, got dtype {x.dtype}")
    return np.ascontiguousarray(x, dtype=np.float32)


def load_npy(path: str | os.PathLike[str]) -> np.ndarray:
    """An array from a ``.npy`` file (no pickles)."""
    try:
        return np.asarray(np.load(Path(path), allow_pickle=False))
    except (OSError, ValueError) as exc:
        raise RunInputError(f"cannot read {path} as a .npy array: {exc}") from None


def predict(model: Classifier, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits of ``model`` for ``x``, run in batches of ``batch_size``."""
    x = check_batch(x, model.input_shape)
    return np.concatenate([model.run(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def dataset_samples(name: str, n: int, input_shape: tuple[int, ...],
                    data_dir: str | os.PathLike[str] | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` test samples of dataset ``name`` (normalised, at the model's
    resolution and channels) and their labels."""
    # deferred: the dataset loaders (Pillow) only for --data
    from ofa_search.data import iterate_batches, load_dataset

    if n < 1:
        raise RunInputError(f"n must be >= 1, got {n=}")
    channels, height, width = input_shape
    if height != width:
        raise RunInputError(f"datasets serve square images; the model takes {height}×{width}")
    data = load_dataset(name, data_dir=None if data_dir is None else Path(data_dir),
                        in_channels=channels, resolution=height)
    x, y = next(iterate_batches(data.test, min(n, len(data.test)), shuffle=False))
    return x.numpy(), y.numpy()


def evaluate(model: Classifier, name: str, n: int,
             data_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Accuracy of ``model`` on the first ``n`` test samples of dataset ``name``."""
    x, labels = dataset_samples(name, n, model.input_shape, data_dir)
    predictions = predict(model, x).argmax(axis=1)
    correct = int((predictions == labels).sum())
    return {"dataset": name, "split": "test", "samples": len(labels), "correct": correct,
            "accuracy": correct / len(labels), "predictions": predictions.tolist(),
            "labels": labels.tolist()}
