"""Opening a model file for prediction: ``.onnx`` in onnxruntime here, ``.padim`` through the training extra.

One function, :func:`open_model`, for every command that runs a model. An exported ``.onnx``
file needs only the runtime install. A ``.padim`` file holds the backbone's weights, not a
graph, so opening it builds the graph with torch: the training layer (:mod:`padim.model`) is
reached through :func:`padim.extras.load`, which says in one line which extra to install when
torch is missing. That is the only way up from here to the training layer.
"""

from __future__ import annotations

import os
from pathlib import Path

from padim.errors import ModelFileError
from padim.extras import load
from padim.machine import return_large_blocks
from padim.runtime.onnx import open_onnx
from padim.runtime.predictor import Predictor

PathLike = str | os.PathLike


def open_model(path: PathLike, device: str = "cpu", backend: str = "auto") -> Predictor:
    """Open a model file for prediction: ``.onnx`` with onnxruntime, anything else as a ``.padim`` file.

    Args:
        path: a ``.onnx`` file from ``padim export`` or a ``.padim`` file from ``padim fit``.
        device: ``"cpu"``, ``"cuda"``, ...
        backend: for a ``.padim`` file, what runs it (see :class:`padim.model.padim.Padim`).

    Raises:
        ModelFileError: for a missing, unreadable or foreign file.

    >>> open_model("missing.onnx")
    Traceback (most recent call last):
    ...
    padim.errors.ModelFileError: missing.onnx: model file not found
    """
    return_large_blocks()  # big images: activations and maps go back to the system once freed
    if Path(path).suffix.lower() == ".onnx":
        return open_onnx(path, device=device)
    if not Path(path).is_file():  # say so before looking for torch
        raise ModelFileError(f"{path}: model file not found")
    open_padim = load("padim.model.padim:open_padim", "train", f"{path}: running a .padim model")
    return open_padim(path, device=device, backend=backend)
