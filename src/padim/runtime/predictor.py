"""Running a trained model: one predictor interface for ``.padim`` and ``.onnx`` files.

:func:`open_model` gives a :class:`Predictor` whichever the file: ``predict``, ``evaluate`` and
``serve`` all use it. A ``.onnx`` file (from ``padim export``) runs in onnxruntime with NumPy
and Pillow alone; this module imports torch only to open a ``.padim`` file, so a line PC
without torch runs exported models. Both run the same graph (:mod:`padim.graph.pipeline`), which
computes the maps, scores, normalised scores and labels; nothing here recomputes them.

onnxruntime's telemetry is switched off before any session is made.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from padim.errors import ModelFileError, OptionError
from padim.io.images import as_size
from padim.model.memory import RUN_PIXELS, default_batch_size, images_per_run, return_large_blocks
from padim.modelfile.padim_file import MAX_SIDE, MAX_WORKING_PIXELS, is_pair
from padim.scoring.rules import Calibration, manual, region

PathLike = str | os.PathLike

#: The newest ONNX metadata layout this module reads (see :data:`padim.model.export.FORMAT_VERSION`).
ONNX_FORMAT_VERSION = 2


def cpu_threads() -> int:
    """CPUs this process may use (its affinity mask, not the machine's count; ``PADIM_THREADS`` caps it).

    A Ray worker of :mod:`padim.jobs.distributed` sets ``PADIM_THREADS`` to the CPUs it was given.
    """
    limit = os.environ.get("PADIM_THREADS", "")
    if limit.isdigit() and int(limit) > 0:
        return int(limit)
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class OrtRunner:
    """An onnxruntime session with some inputs bound once.

    Args:
        model: ONNX bytes, or the path of a ``.onnx`` file (its external data beside it).
        bound: input name -> array passed on every call (shared with onnxruntime, not copied).
        device: ``"cpu"`` or ``"cuda"`` (needs onnxruntime-gpu).
        threads: intra-op threads; None: the CPUs this process may use.

    ``runner(**inputs)`` takes the remaining inputs and returns output name -> array. Inputs the
    graph does not have are ignored (older exported files have fewer).
    """

    def __init__(
        self,
        model: bytes | PathLike,
        bound: dict[str, np.ndarray] | None = None,
        device: str = "cpu",
        threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        ort.disable_telemetry_events()
        providers = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
        if str(device) not in providers:
            raise OptionError(f"--device must be 'cpu' or 'cuda' for an ONNX model, got {device!r}")
        if providers[str(device)][0] not in ort.get_available_providers():
            raise OptionError(f"--device {device}: this onnxruntime lacks {providers[str(device)][0]}")
        options = ort.SessionOptions()
        # Errors only: an exported graph keeps its threshold as an overridable input on
        # purpose, which onnxruntime would warn about on every load.
        options.log_severity_level = 3
        options.intra_op_num_threads = threads or cpu_threads()
        options.inter_op_num_threads = 1
        # The memory pattern pre-plans one block per input shape on top of the arena: it
        # doubled peak memory (+620 MB instead of +330 MB, batch 32 at 256 px) for no speed.
        options.enable_mem_pattern = False
        # Idle workers that spin steal the cores from the image decoding threads.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, options, providers=providers[str(device)])
        # Initializers that are also graph inputs (an exported threshold) are inputs too.
        overridable = self.session.get_overridable_initializers()
        self.input_names = {i.name for i in [*self.session.get_inputs(), *overridable]}
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.bound = {k: _float(v) for k, v in (bound or {}).items()}

    def __call__(self, **inputs: Any) -> dict[str, np.ndarray]:
        feeds = {k: _float(v) for k, v in {**self.bound, **inputs}.items()}
        feeds = {k: v for k, v in feeds.items() if k in self.input_names}
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))


def _float(array: Any) -> np.ndarray:
    """A contiguous float32 array, except float16 state (compact precision factors), kept as it is."""
    array = np.asarray(array)
    return np.ascontiguousarray(array, dtype=np.float16 if array.dtype == np.float16 else np.float32)


@dataclass
class Prediction:
    """Per-image results for N images at the model's working size (H, W).

    Attributes:
        anomaly_map: (N, H, W) float32 maps (Mahalanobis distances, up-sampled and blurred).
        score: (N,) float32 image scores, the maximum of each map; higher is more anomalous.
        normalized_score: (N,) in [0, 1], 0.5 at the threshold; None for an uncalibrated model.
        label: (N,) bool, True = anomalous; None for an uncalibrated model.
        threshold: the threshold the labels used, or None.
        pixel_threshold: the pixel threshold of the regions (None: ``threshold``).
    """

    anomaly_map: np.ndarray
    score: np.ndarray
    normalized_score: np.ndarray | None = None
    label: np.ndarray | None = None
    threshold: float | None = None
    pixel_threshold: float | None = None

    @property
    def region(self) -> np.ndarray | None:
        """(N, H, W) bool predicted defect regions (:func:`padim.scoring.rules.region`), or None."""
        if self.threshold is None:
            return None
        level = self.threshold if self.pixel_threshold is None else self.pixel_threshold
        return region(self.anomaly_map, self.score, self.threshold, level)

    def __len__(self) -> int:
        return len(self.score)

    @classmethod
    def concatenate(cls, parts: list[Prediction]) -> Prediction:
        """One prediction from the predictions of consecutive batches."""
        if not parts:
            raise ValueError("expected at least one image, got none")

        def cat(name: str) -> np.ndarray | None:
            arrays = [getattr(p, name) for p in parts]
            return None if arrays[0] is None else np.concatenate(arrays)

        arrays = (cat(name) for name in ("anomaly_map", "score", "normalized_score", "label"))
        return cls(*arrays, parts[0].threshold, parts[0].pixel_threshold)


def _numpy(array: Any) -> np.ndarray:
    """An output as a NumPy array (torch tensors are moved to the CPU first)."""
    return np.asarray(array.detach().cpu() if hasattr(array, "detach") else array)


class Predictor:
    """A model ready to predict, whatever ran it.

    Args:
        run: ``run(images=..., threshold=..., scale=...)`` -> dict with the outputs of
            :class:`padim.graph.pipeline.Pipeline` (an :class:`OrtRunner` or a
            :class:`padim.graph.pipeline.TorchRunner`).
        image_size: (H, W) the images are resized to.
        calibration: the threshold and score scale, or None.
        config: the model's configuration (backbone, layers, ...).
        kind: what runs it: ``"onnxruntime"`` or ``"torch"``.
        threshold_input: whether ``run`` takes the threshold (files exported by padim-toolkit
            0.1 do not: their threshold cannot be changed at prediction time).
        run_pixels: at most this many pixels of images per call of ``run`` (None:
            :data:`padim.model.memory.RUN_PIXELS`).
    """

    def __init__(
        self,
        run: Callable[..., dict[str, Any]],
        *,
        image_size: tuple[int, int],
        calibration: Calibration | None,
        config: dict,
        kind: str,
        threshold_input: bool = True,
        run_pixels: int | None = None,
    ) -> None:
        self.run = run
        self.run_pixels = RUN_PIXELS if run_pixels is None else run_pixels
        self.image_size = tuple(image_size)
        self.calibration = calibration
        self.config = config
        self.kind = kind
        self.threshold_input = threshold_input

    def with_threshold(self, threshold: float) -> Predictor:
        """The same model with the threshold set by hand (the model file is not changed).

        An uncalibrated model gets the threshold with the normalised score's centre at 0
        (:func:`padim.scoring.rules.manual`).

        Raises:
            OptionError: for a non-finite threshold, or a file exported by padim-toolkit 0.1.
        """
        if not (isinstance(threshold, (int, float)) and math.isfinite(threshold)):
            raise OptionError(f"--threshold must be a finite number, got {threshold!r}")
        if not self.threshold_input:
            raise OptionError("--threshold: this ONNX file was exported by padim-toolkit 0.1; export it again")
        new = manual(float(threshold), self.calibration)
        return Predictor(self.run, image_size=self.image_size, calibration=new, config=self.config, kind=self.kind,
                         run_pixels=self.run_pixels)  # fmt: skip

    def predict_batch(self, images: np.ndarray) -> Prediction:
        """Prediction for a pre-processed batch (N, 3, H, W) float32 (:func:`padim.io.images.preprocess`).

        The images go through the graph a few at a time (:func:`padim.model.memory.images_per_run`), so
        the activations stay bounded at large working sizes whatever the batch size.
        """
        images = np.asarray(images) if not hasattr(images, "detach") else images
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, *self.image_size):
            raise OptionError(
                f"expected pre-processed images (N, 3, {self.image_size[0]}, {self.image_size[1]}), "
                f"got shape {tuple(images.shape)}"
            )
        calibration = self.calibration
        threshold = math.nan if calibration is None else calibration.threshold
        scale = 1.0 if calibration is None else calibration.scale
        step = images_per_run(self.image_size, self.run_pixels)
        runs = [
            self.run(images=images[start : start + step], threshold=np.float32(threshold), scale=np.float32(scale))
            for start in range(0, max(len(images), 1), step)
        ]
        out = {
            k: _numpy(v) if len(runs) == 1 else np.concatenate([_numpy(r[k]) for r in runs]) for k, v in runs[0].items()
        }
        if calibration is None:
            return Prediction(out["anomaly_map"], out["score"])
        maps, score, normalized = out["anomaly_map"], out["score"], out["normalized_score"]
        return Prediction(maps, score, normalized, out["label"].astype(bool), threshold, calibration.region_threshold)

    def predict(
        self,
        images: Any,
        *,
        batch_size: int | None = None,
        workers: int | None = None,
        quiet: bool = True,
        skip_bad: bool = False,
    ) -> Prediction:
        """Prediction for images in any form :func:`padim.io.loading.as_batches` takes (a folder: its images).

        ``batch_size`` None: by the working size (:func:`padim.model.memory.default_batch_size`).
        """
        from padim.io.loading import as_batches

        batches = as_batches(
            images,
            self.image_size,
            folder="images",
            batch_size=default_batch_size(self.image_size) if batch_size is None else batch_size,
            workers=workers,
            quiet=quiet,
            skip_bad=skip_bad,
            desc="predict",
        )
        return Prediction.concatenate([self.predict_batch(batch) for batch in batches])

    def __repr__(self) -> str:
        return f"Predictor(kind={self.kind!r}, image_size={self.image_size}, calibrated={self.calibration is not None})"


def read_metadata(props: dict[str, str], path: PathLike = "model") -> tuple[tuple[int, int], Calibration | None, dict]:
    """Image size, calibration and configuration from an exported model's ``metadata_props``.

    Raises:
        ModelFileError: if the keys are missing, malformed or from a newer format.
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
        stored_size = json.loads(props["padim.image_size"])
        if not is_pair(stored_size, MAX_SIDE) or stored_size[0] * stored_size[1] > MAX_WORKING_PIXELS:
            raise ValueError(f"padim.image_size must be [height, width] of at most {MAX_WORKING_PIXELS:,} pixels")
        image_size = as_size(stored_size)
        stored = json.loads(props["padim.runtime.calibrate"])
        if stored is not None and not isinstance(stored, dict):
            raise TypeError(f"padim.runtime.calibrate is a {type(stored).__name__}")
        calibration = None if stored is None else Calibration(**stored)
        config = json.loads(props.get("padim.config", "{}"))
        if not isinstance(config, dict):
            raise TypeError(f"padim.config is a {type(config).__name__}")
    except (KeyError, TypeError, ValueError, RecursionError) as error:
        if isinstance(error, ModelFileError):
            raise
        raise ModelFileError(f"{path}: malformed padim metadata in the ONNX model ({error})") from None
    return image_size, calibration, config


def check_io(session: Any, image_size: tuple[int, int], calibrated: bool, path: PathLike = "model") -> None:
    """Check an onnxruntime session's inputs and outputs against what :class:`Predictor` feeds and reads.

    A graph from ``padim export`` takes ``images`` (N, 3, H, W) float at the stored working size
    and gives ``anomaly_map`` (N, H, W) and ``score`` (N,) float, and when calibrated
    ``normalized_score`` (N,) float and ``label`` (N,) bool. Any other graph carrying padim's
    metadata is refused here, at opening, not with an onnxruntime error on the first image.

    Raises:
        ModelFileError: naming the file and the input or output that does not fit.
    """
    height, width = image_size
    wanted_in = {"images": ("tensor(float)", (None, 3, height, width))}
    wanted_out = {"anomaly_map": ("tensor(float)", (None, height, width)), "score": ("tensor(float)", (None,))}
    if calibrated:
        wanted_out.update(normalized_score=("tensor(float)", (None,)), label=("tensor(bool)", (None,)))
    for kind, wanted, found in (
        ("input", wanted_in, session.get_inputs()),
        ("output", wanted_out, session.get_outputs()),
    ):
        found = {item.name: item for item in found}
        for name, (dtype, shape) in wanted.items():
            item = found.get(name)
            dims = None if item is None else tuple(item.shape)
            fits = (
                item is not None
                and item.type == dtype
                and len(dims) == len(shape)
                and all(want is None or got == want or not isinstance(got, int) for got, want in zip(dims, shape))
            )
            if not fits:
                got = "none" if item is None else f"{item.type} {list(dims)}"
                expected = [("N" if d is None else d) for d in shape]
                raise ModelFileError(
                    f"{path}: not a padim graph: {kind} {name!r} should be {dtype} {expected}, got {got}"
                )


def open_onnx(path: PathLike, device: str = "cpu") -> Predictor:
    """A :class:`Predictor` for an exported ``.onnx`` file (no torch).

    Raises:
        ModelFileError: for a missing or unreadable file, or one not exported by padim.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    try:
        runner = OrtRunner(path, device=device)
    except OptionError:
        raise
    except Exception as error:  # onnxruntime raises its own exception types for bad files
        raise ModelFileError(f"{path}: not a readable ONNX model ({str(error).splitlines()[0]})") from None
    image_size, calibration, config = read_metadata(runner.session.get_modelmeta().custom_metadata_map, path)
    check_io(runner.session, image_size, calibration is not None, path)
    return Predictor(
        runner,
        image_size=image_size,
        calibration=calibration,
        config=config,
        kind="onnxruntime",
        threshold_input="threshold" in runner.input_names,
    )


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
    if not Path(path).is_file():  # say so before importing torch
        raise ModelFileError(f"{path}: model file not found")
    from padim.model.padim import Padim  # the only torch import on any path of this module

    return Padim.load(path, device=device, backend=backend).predictor()
