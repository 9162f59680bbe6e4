"""Evaluating a model on a labelled test set: metrics overall and per defect type, and the table.

:func:`evaluate_model` runs any predictor (:mod:`padim.runtime.predictor`: a ``.padim`` or ``.onnx``
model) over the test images through the one decoding pipeline (:mod:`padim.io.loading`) and
:func:`padim.eval.summary.summarize` computes the metrics of :mod:`padim.eval.metrics` (image AUROC, pixel AUROC, AUPRO,
F1-max and the scores at the model's threshold), overall and per defect type, the MVTec AD
protocol (Bergmann et al., CVPR 2019) used to report PaDiM (Defard et al. 2020,
https://arxiv.org/abs/2011.08785). NumPy only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from padim.errors import DataError, ScoreError
from padim.eval.summary import summarize
from padim.io.datasets import Sample, test_samples
from padim.io.loading import default_batch_size, iter_batches


@dataclass
class Evaluation:
    """What :func:`evaluate_model` measured.

    Attributes:
        samples: the test images that were read, in order.
        maps: (N, H, W) float32 anomaly maps at the working size.
        scores: (N,) image scores.
        masks: N (H, W) bool masks, None for a defective image without one.
        metrics: :func:`padim.eval.summary.summarize`'s result.
        threshold: the model's threshold, or None.
        skipped: unreadable files left out (path -> reason).
    """

    samples: list[Sample]
    maps: np.ndarray
    scores: np.ndarray
    masks: list[np.ndarray | None]
    metrics: dict
    threshold: float | None
    skipped: dict[Path, str]

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=bool)


def evaluate_model(
    predictor: Any,
    data: str | os.PathLike,
    *,
    batch_size: int | None = None,
    workers: int | None = None,
    quiet: bool = True,
    skip_bad: bool = False,
) -> Evaluation:
    """Predict every test image of ``data`` and compute the metrics.

    Args:
        predictor: a :class:`padim.runtime.predictor.Predictor` (``open_model(path)``, ``Padim.predictor()``).
        data: an MVTec category or a test folder (see :func:`padim.io.datasets.test_samples`).
        batch_size, workers, quiet, skip_bad: see :func:`padim.io.loading.iter_batches` (batch_size
            None: by the working size, :func:`padim.io.loading.default_batch_size`).

    Raises:
        DataError: for a missing or mis-laid folder, or no readable test image.
        ScoreError: naming the images whose score is not a finite number.
    """
    samples = test_samples(data)
    skipped: dict[Path, str] = {}
    maps, scores, masks, kept = [], [], [], []
    for batch in iter_batches(
        samples,
        predictor.image_size,
        batch_size=default_batch_size(predictor.image_size) if batch_size is None else batch_size,
        workers=workers,
        skip_bad=skip_bad,
        quiet=quiet,
        desc="evaluate",
        skipped=skipped,
        masks=True,
    ):
        prediction = predictor.predict_batch(batch.images)
        maps.append(prediction.anomaly_map)
        scores.append(prediction.score)
        masks += [None if m is None else m > 0 for m in batch.masks]
        kept += batch.indices
    if not kept:
        raise DataError(f"{data}: no readable test images")
    samples = [samples[i] for i in kept]
    maps_array, scores_array = np.concatenate(maps), np.concatenate(scores)
    failed = [str(samples[i].path) for i in np.flatnonzero(~np.isfinite(scores_array))]
    if failed:  # fail closed: no metrics from images the model gave no verdict for
        listed = ", ".join(failed[:3]) + (f" and {len(failed) - 3} more" if len(failed) > 3 else "")
        raise ScoreError(f"{len(failed)} image(s) got a score that is not a finite number, so no metrics: {listed}")
    # A good image without a mask is all normal; a defective one without a mask has no pixel truth.
    size = maps_array.shape[1:]
    masks = [np.zeros(size, bool) if m is None and not s.label else m for s, m in zip(samples, masks)]
    calibration = predictor.calibration
    threshold = None if calibration is None else calibration.threshold
    labels = np.array([s.label for s in samples])
    metrics = summarize(labels, scores_array, [s.defect_type for s in samples], maps_array, masks, threshold)
    return Evaluation(samples, maps_array, scores_array, masks, metrics, threshold, skipped)


TABLE_COLUMNS = ("image_auroc", "pixel_auroc", "aupro", "image_f1_max", "image_accuracy", "n_false_alarms", "n_missed")


def format_table(metrics: dict) -> str:
    """The metrics as a fixed-width text table: overall first, then one row per defect type.

    A defect type's row counts its own images (its accuracy is the share of them found); its
    AUROC and F1-max compare them with all good images.

    >>> print(format_table(summarize([0, 1, 1], [0.1, 0.9, 0.4], ["good", "hole", "hole"], threshold=0.5)))
             images  img_auroc  pixel_auroc  aupro  img_f1_max  img_accuracy  false_alarms  missed
    overall       3      1.000            -      -       1.000         0.667             0       1
    hole          2      1.000            -      -       1.000         0.500             -       1
    """
    header = ["", "images"] + [c.replace("image_", "img_").replace("n_", "") for c in TABLE_COLUMNS]
    rows = [("overall", metrics["overall"])] + sorted(metrics["per_defect"].items())
    lines = [header]
    for name, summary in rows:
        cells = [name, str(summary["n_images"])]
        for c in TABLE_COLUMNS:
            value = summary.get(c)
            cells.append("-" if value is None else str(value) if isinstance(value, int) else f"{value:.3f}")
        lines.append(cells)
    widths = [max(len(line[k]) for line in lines) for k in range(len(header))]
    return "\n".join(
        "  ".join(cell.rjust(w) if k else cell.ljust(w) for k, (cell, w) in enumerate(zip(line, widths)))
        for line in lines
    )
