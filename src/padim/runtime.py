"""Run a trained model from a ``.padim`` or an exported ``.onnx`` file behind one interface.

:func:`open_model` returns an object with ``image_size``, ``calibration`` and ``predict(images)``
that gives a :class:`padim.prediction.Prediction`, whichever the file. The ONNX path needs only
onnxruntime, NumPy and Pillow: this module imports torch solely inside the ``.padim`` branch,
so a line PC without torch runs models exported by :func:`padim.export.export_onnx`.

Both paths pre-process with :func:`padim.transforms.preprocess` and derive scores, normalised
scores, labels and regions from the anomaly maps with :func:`padim.prediction.make_prediction`,
so for the same maps they give the same labels. The ONNX graph's own ``score``,
``normalized_score`` and ``label`` outputs serve callers without Python; here only its
``anomaly_map`` is used.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from PIL import Image

from padim.calibration import Calibration
from padim.model_file import ModelFileError
from padim.prediction import Prediction, make_prediction
from padim.transforms import as_size, list_images, load_image, preprocess

PathLike = str | os.PathLike

#: The newest ONNX metadata layout this module reads (see :data:`padim.export.FORMAT_VERSION`).
ONNX_FORMAT_VERSION = 1


def load_images(images: Any) -> list[Image.Image]:
    """Decode images given as a path, a folder, a PIL image, or a list of paths and PIL images.

    Returns:
        RGB PIL images, in order (a folder's images sorted by name).

    Raises:
        padim.transforms.ImageError: naming a file that cannot be decoded.
        ValueError: for a missing folder, a folder without images or an empty list.
        TypeError: for anything else.
    """
    if isinstance(images, (str, os.PathLike)) and Path(images).is_dir():
        images = list_images(images)
    if isinstance(images, (str, os.PathLike, Image.Image)):
        images = [images]
    if not isinstance(images, (list, tuple)) or not all(isinstance(x, (str, os.PathLike, Image.Image)) for x in images):
        raise TypeError(
            f"images must be a path, a folder, a PIL image or a list of paths and PIL images, got {type(images).__name__}"
        )
    if not images:
        raise ValueError("expected at least one image, got an empty list")
    return [load_image(image) for image in images]


def predict_batches(
    anomaly_maps: Callable[[np.ndarray], np.ndarray],
    images: Any,
    image_size: tuple[int, int],
    calibration: Calibration | None,
    batch_size: int = 32,
) -> Prediction:
    """Pre-process images in batches, compute their maps, and derive the prediction.

    Args:
        anomaly_maps: pre-processed (n, 3, H, W) float32 -> (n, H, W) float32 maps.
        images: as :func:`load_images`, or a pre-processed float array (N, 3, H, W).
        image_size: (H, W) the model expects.
        calibration: the model's calibration, or None.
        batch_size: images per call of ``anomaly_maps`` (bounds memory).

    Returns:
        :class:`~padim.prediction.Prediction` of N images.

    Raises:
        ValueError: for a batch of the wrong shape or a batch size below 1; see also :func:`load_images`.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if isinstance(images, np.ndarray):
        batch = images[None] if images.ndim == 3 else images
        if batch.ndim != 4 or batch.shape[1:] != (3, *image_size) or not np.issubdtype(batch.dtype, np.floating):
            raise ValueError(
                f"a pre-processed batch must be float of shape (N, 3, {image_size[0]}, {image_size[1]}), "
                f"got {batch.dtype} {batch.shape}"
            )
        chunks: Iterable[np.ndarray] = (
            np.ascontiguousarray(batch[i : i + batch_size], dtype=np.float32) for i in range(0, len(batch), batch_size)
        )
    else:
        decoded = load_images(images)
        chunks = (preprocess(decoded[i : i + batch_size], image_size) for i in range(0, len(decoded), batch_size))
    maps = [anomaly_maps(chunk) for chunk in chunks]
    if not maps:
        raise ValueError("expected at least one image, got none")
    return make_prediction(np.concatenate(maps), calibration)


class OnnxModel:
    """A model exported by :func:`padim.export.export_onnx`, run by onnxruntime (no torch).

    Args:
        path: the ``.onnx`` file (with its ``.data`` file beside it, if it has one).
        device: ``"cpu"`` or ``"cuda"`` (needs onnxruntime-gpu).

    Attributes:
        image_size: (H, W) the images are resized to. calibration: Calibration or None.
        config: the exported model's configuration (dict). session: the InferenceSession, whose
        ``run`` is thread-safe, so ``predict`` may be called from several threads at once.

    Raises:
        padim.model_file.ModelFileError: for a missing or unreadable file, or an ONNX model that
            was not written by padim (or by a newer version).
        ValueError: for an unknown device or one onnxruntime cannot use here.
    """

    kind = "onnx"

    def __init__(self, path: PathLike, device: str = "cpu") -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelFileError(f"{self.path}: model file not found")
        providers = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
        if str(device) not in providers:
            raise ValueError(f"device must be 'cpu' or 'cuda' for an ONNX model, got {device!r}")
        if providers[str(device)][0] not in ort.get_available_providers():
            raise ValueError(f"device {device!r} needs onnxruntime's {providers[str(device)][0]}, which this install lacks")
        try:
            # Default session options: intra-op threads = the machine's physical cores.
            self.session = ort.InferenceSession(str(self.path), providers=providers[str(device)])
        except Exception as error:  # onnxruntime raises its own exception types for bad files
            raise ModelFileError(f"{self.path}: not a readable ONNX model ({str(error).splitlines()[0]})") from None
        self.image_size, self.calibration, self.config = read_metadata(
            self.session.get_modelmeta().custom_metadata_map, self.path
        )
        self.input_name = self.session.get_inputs()[0].name

    def anomaly_maps(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) float32 pre-processed images -> (N, H, W) float32 anomaly maps."""
        (maps,) = self.session.run(["anomaly_map"], {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})
        return maps

    def predict(self, images: Any, *, batch_size: int = 32) -> Prediction:
        """Prediction for images given as in :func:`predict_batches`."""
        return predict_batches(self.anomaly_maps, images, self.image_size, self.calibration, batch_size)

    def __repr__(self) -> str:
        return f"OnnxModel({str(self.path)!r}, image_size={self.image_size})"


def read_metadata(props: dict[str, str], path: PathLike = "model") -> tuple[tuple[int, int], Calibration | None, dict]:
    """Image size, calibration and configuration from an exported model's ``metadata_props``.

    Raises:
        padim.model_file.ModelFileError: if the keys are missing, malformed or from a newer format.
    """
    if "padim.format_version" not in props:
        raise ModelFileError(f"{path}: an ONNX model, but not one exported by padim (no padim metadata)")
    try:
        version = int(props["padim.format_version"])
        if version > ONNX_FORMAT_VERSION:
            raise ModelFileError(
                f"{path}: exported in format {version} by a newer padim-toolkit; this one reads format "
                f"{ONNX_FORMAT_VERSION} and older: upgrade padim-toolkit"
            )
        image_size = as_size(json.loads(props["padim.image_size"]))
        stored = json.loads(props["padim.calibration"])
        calibration = None if stored is None else Calibration(**stored)
        config = json.loads(props.get("padim.config", "{}"))
    except (KeyError, TypeError, ValueError) as error:
        if isinstance(error, ModelFileError):
            raise
        raise ModelFileError(f"{path}: malformed padim metadata in the ONNX model ({error})") from None
    return image_size, calibration, config


class TorchModel:
    """A ``.padim`` model file behind the same interface as :class:`OnnxModel`.

    ``predict`` holds a lock, so concurrent callers (the web service's threads) run one at a
    time instead of competing for the same intra-op threads.
    """

    kind = "torch"

    def __init__(self, path: PathLike, device: str = "cpu") -> None:
        from padim.model import Padim  # the only torch import on any path of this module

        self.path = Path(path)
        self.model = Padim.load(self.path, device=device)
        self.image_size = tuple(self.model.image_size)
        self.calibration = self.model.calibration_
        self.config = {**self.model.config(), "pretrained": self.model.pretrained}
        self._lock = threading.Lock()

    def anomaly_maps(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) float32 pre-processed images -> (N, H, W) float32 anomaly maps."""
        import torch

        with self._lock:
            return self.model.anomaly_maps(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).cpu().numpy()

    def predict(self, images: Any, *, batch_size: int = 32) -> Prediction:
        """Prediction for images given as in :func:`predict_batches`."""
        return predict_batches(self.anomaly_maps, images, self.image_size, self.calibration, batch_size)

    def __repr__(self) -> str:
        return f"TorchModel({str(self.path)!r}, image_size={self.image_size})"


def open_model(path: PathLike, device: str = "cpu") -> OnnxModel | TorchModel:
    """Open a model file for prediction: ``.onnx`` with onnxruntime, anything else as a ``.padim`` file.

    Args:
        path: a ``.onnx`` file from ``padim export`` or a ``.padim`` file from ``padim fit``.
        device: ``"cpu"``, ``"cuda"``, ...

    Returns:
        An object with ``image_size`` (H, W), ``calibration`` (Calibration or None), ``kind``
        (``"onnx"`` or ``"torch"``) and ``predict(images) -> Prediction``.

    Raises:
        padim.model_file.ModelFileError: for a missing, unreadable or foreign file.

    >>> open_model("missing.onnx")
    Traceback (most recent call last):
    ...
    padim.model_file.ModelFileError: missing.onnx: model file not found
    """
    if Path(path).suffix.lower() == ".onnx":
        return OnnxModel(path, device=device)
    return TorchModel(path, device=device)
