"""A trained model ready to predict, whatever runs it: :class:`Predictor` and its :class:`Prediction`.

``predict``, ``evaluate``, ``serve`` and ``watch`` use this one interface for ``.padim`` and
``.onnx`` models (:func:`padim.runtime.opening.open_model`). The executor computes the maps,
scores, normalised scores and labels in one graph; a predictor only feeds it images a few at a
time and collects its outputs. NumPy only.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from padim.align.reference import Reference, Registration, applied, register
from padim.align.warps import to_input, to_reference
from padim.errors import OptionError
from padim.io.loading import RUN_PIXELS, as_batches, default_batch_size, images_per_run
from padim.scoring.calibration import Calibration, manual
from padim.scoring.rules import region


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
        registration: each image's pose against the model's reference and whether it is trusted
            (:class:`padim.align.reference.Registration`), for a model that aligns parts; else None.
            An untrusted image is labelled anomalous whatever its score.
    """

    anomaly_map: np.ndarray
    score: np.ndarray
    normalized_score: np.ndarray | None = None
    label: np.ndarray | None = None
    threshold: float | None = None
    pixel_threshold: float | None = None
    registration: Registration | None = None

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
        registration = None if parts[0].registration is None else Registration(
            *(np.concatenate([getattr(p.registration, f) for p in parts]) for f in Registration.__dataclass_fields__))  # fmt: skip
        return cls(*arrays, parts[0].threshold, parts[0].pixel_threshold, registration)


def _numpy(array: Any) -> np.ndarray:
    """An output as a NumPy array (torch tensors are moved to the CPU first)."""
    return np.asarray(array.detach().cpu() if hasattr(array, "detach") else array)


class Predictor:
    """A model ready to predict, whatever ran it.

    Args:
        run: ``run(images=..., threshold=..., scale=...)`` -> dict with the outputs of
            :class:`padim.graph.modules.Pipeline` (an :class:`OrtRunner` or a
            :class:`padim.graph.runners.TorchRunner`).
        image_size: (H, W) the images are resized to.
        calibration: the threshold and score scale, or None.
        config: the model's configuration (backbone, layers, ...).
        kind: what runs it: ``"onnxruntime"`` or ``"torch"``.
        threshold_input: whether ``run`` takes the threshold (files exported by padim-toolkit
            0.1 do not: their threshold cannot be changed at prediction time).
        run_pixels: at most this many pixels of images per call of ``run`` (None:
            :data:`padim.io.loading.RUN_PIXELS`).
        executor: how the executor was chosen (:class:`padim.runtime.executors.Choice`), or None (torch).
        alignment: the model's reference (:class:`padim.align.reference.Reference`): each image is
            registered to it and brought into its frame before the graph, and its map brought back
            after; None: the images go in as they are.
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
        executor: Any = None,
        alignment: Reference | None = None,
    ) -> None:
        self.run = run
        self.run_pixels = RUN_PIXELS if run_pixels is None else run_pixels
        self.image_size = tuple(image_size)
        self.calibration = calibration
        self.config = config
        self.kind = kind
        self.threshold_input = threshold_input
        self.executor = executor
        self.alignment = alignment

    def describe(self) -> str:
        """What runs this model and why: ``onnxruntime, float32 (auto: OpenVINO is not installed)``."""
        return self.kind if self.executor is None else self.executor.describe()

    def with_threshold(self, threshold: float) -> Predictor:
        """The same model with the threshold set by hand (the model file is not changed).

        An uncalibrated model gets the threshold with the normalised score's centre at 0
        (:func:`padim.scoring.calibration.manual`).

        Raises:
            OptionError: for a non-finite threshold, or a file exported by padim-toolkit 0.1.
        """
        if not (isinstance(threshold, (int, float)) and math.isfinite(threshold)):
            raise OptionError(f"--threshold must be a finite number, got {threshold!r}")
        if not self.threshold_input:
            raise OptionError("--threshold: this ONNX file was exported by padim-toolkit 0.1; export it again")
        changed = copy.copy(self)
        changed.calibration = manual(float(threshold), self.calibration)
        return changed

    def predict_batch(self, images: np.ndarray) -> Prediction:
        """Prediction for a pre-processed batch (N, 3, H, W) float32 (:func:`padim.io.images.preprocess`).

        The images go through the graph a few at a time (:func:`padim.io.loading.images_per_run`), so
        the activations stay bounded at large working sizes whatever the batch size.
        """
        images = np.asarray(images) if not hasattr(images, "detach") else images
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, *self.image_size):
            raise OptionError(
                f"expected pre-processed images (N, 3, {self.image_size[0]}, {self.image_size[1]}), "
                f"got shape {tuple(images.shape)}"
            )
        found = None
        if self.alignment is not None:  # registered, moved into the reference frame (on the CPU, in NumPy)
            images = np.asarray(images.detach().cpu() if hasattr(images, "detach") else images, dtype=np.float32)
            found = register(self.alignment, images)
            images = to_reference(images, applied(found))
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
        maps = out["anomaly_map"] if found is None else to_input(out["anomaly_map"], applied(found))
        if calibration is None:
            return Prediction(maps, out["score"], registration=found)
        label = out["label"].astype(bool) if found is None else out["label"].astype(bool) | ~found.trusted
        return Prediction(maps, out["score"], out["normalized_score"], label, threshold, calibration.region_threshold,
                          found)  # fmt: skip

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

        ``batch_size`` None: by the working size (:func:`padim.io.loading.default_batch_size`).
        """
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
