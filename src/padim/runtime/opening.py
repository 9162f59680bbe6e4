"""Opening a model file for prediction: ``.onnx`` and ``.padim`` files with their stored graph here, older ``.padim`` files through the training extra.

One function, :func:`open_model`, for every command that runs a model, on the executor chosen for
this machine (:mod:`padim.runtime.executors`). An exported ``.onnx`` file and a ``.padim`` file that
holds its graph (written since graphs are stored at save) need only the runtime install
(:mod:`padim.runtime.stored`). A ``.padim`` file without a graph, or one asked to run in torch
(``--backend torch``, ``--device cuda``), is opened by the training layer (:mod:`padim.model`),
reached through :func:`padim.extras.load`, which says in one line which extra to install when torch
is missing. That is the only way up from here to the training layer.
"""

from __future__ import annotations

import os
from pathlib import Path

from padim.errors import ModelFileError, OptionError
from padim.extras import load
from padim.machine import return_large_blocks
from padim.modelfile.mapped import map_model_file
from padim.runtime.onnx import open_onnx
from padim.runtime.predictor import Predictor
from padim.runtime.stored import open_stored

PathLike = str | os.PathLike


def open_model(path: PathLike, device: str = "cpu", backend: str = "auto", executor: str = "auto") -> Predictor:
    """Open a model file for prediction: ``.onnx`` as exported, anything else as a ``.padim`` file.

    Args:
        path: a ``.onnx`` file from ``padim export`` or a ``.padim`` file from ``padim fit``.
        device: ``"cpu"``, ``"cuda"``, ...
        backend: for a ``.padim`` file, what runs it (see :class:`padim.model.padim.Padim`): ``torch``
            traces nothing and runs the modules eagerly.
        executor: who runs the graph on the CPU: ``"auto"``, ``"onnxruntime"`` or ``"openvino"``
            (:mod:`padim.runtime.executors`).

    Raises:
        ModelFileError: for a missing, unreadable or foreign file.

    >>> open_model("missing.onnx")
    Traceback (most recent call last):
    ...
    padim.errors.ModelFileError: missing.onnx: model file not found
    """
    return_large_blocks()  # big images: activations and maps go back to the system once freed
    if Path(path).suffix.lower() == ".onnx":
        return open_onnx(path, device=device, executor=executor)
    if not Path(path).is_file():  # say so before looking for torch
        raise ModelFileError(f"{path}: model file not found")
    stored = backend in ("auto", "onnxruntime") and str(device) == "cpu"
    mapped = map_model_file(path) if stored else None
    if mapped is not None and mapped.graph is not None:
        return open_stored(mapped, executor=executor, device=str(device))
    if executor == "openvino":
        raise OptionError(f"--executor openvino: {path} holds no stored graph (written by padim-toolkit 0.2 or "
                          "earlier, or asked to run in torch); save it again with this version")  # fmt: skip
    why = ("without its stored graph (written by padim-toolkit 0.2 or earlier)" if stored else
           f"with --backend {backend}" if backend == "torch" else f"on --device {device}")  # fmt: skip
    open_padim = load("padim.model.padim:open_padim", "train", f"{path}: running a .padim model {why}")
    return open_padim(path, device=device, backend=backend)
