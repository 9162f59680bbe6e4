"""A model's thresholds from images: run it over good (and defective) images, apply the threshold rules.

PaDiM (Defard et al. 2020, https://arxiv.org/abs/2011.08785) leaves the decision threshold to
the user. A fit sets one from held-out good images, and ``padim calibrate`` from images the user
gives: :func:`good_statistics` runs any predictor over images batch by batch (scores, and map
pixels for the regions' pixel threshold), and :func:`calibration_from_images` applies the rules of
:mod:`padim.eval.thresholds` (a quantile of good scores, F1-max, or a recall on defective ones).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from padim.errors import OptionError
from padim.eval.thresholds import from_labelled_scores, from_normal_scores
from padim.io.loading import as_batches
from padim.scoring.calibration import PIXEL_QUANTILE, Calibration

PathLike = str | os.PathLike

#: Map pixels kept per axis for the pixel threshold: maps are blurred (sigma 4 px at 256 px), so
#: every second pixel in each direction gives the same quantile at a quarter of the memory.
PIXEL_STRIDE = 2


def good_statistics(
    predictor: Any, images: Any, *, folder: str = "images", **options: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Scores, map pixels and registration confidences of good images, batch by batch (bounded memory).

    Args:
        predictor: a :class:`padim.runtime.predictor.Predictor`.
        images: any form :func:`padim.io.loading.as_batches` takes; a folder means ``folder``.
        options: ``batch_size``, ``workers``, ``quiet``, ``skip_bad``.

    Returns:
        ``(scores (N,), pixels (N, H / 2, W / 2), confidences (N,) or None)``: pixels every
        :data:`PIXEL_STRIDE` in each axis; confidences of a model that aligns parts (:mod:`padim.align`).
    """
    scores, pixels, confidences = [], [], []
    for batch in as_batches(images, predictor.image_size, folder=folder, desc="calibrate", **options):
        prediction = predictor.predict_batch(batch)
        scores.append(prediction.score)
        pixels.append(prediction.anomaly_map[:, ::PIXEL_STRIDE, ::PIXEL_STRIDE].copy())
        if prediction.registration is not None:
            confidences.append(prediction.registration.confidence)
    return np.concatenate(scores), np.concatenate(pixels), np.concatenate(confidences) if confidences else None


def calibration_from_images(
    predictor: Any,
    good: Any,
    defective: Any = None,
    *,
    quantile: float = 0.99,
    recall: float | None = None,
    pixel_quantile: float = PIXEL_QUANTILE,
    good_folder: str = "images",
    **options: Any,
) -> tuple[Calibration, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """A calibration from good images (a quantile of their scores) or good and defective ones.

    Args:
        predictor: a :class:`padim.runtime.predictor.Predictor`.
        good: good images the model was not fitted on (any form of :func:`padim.io.loading.as_batches`).
        defective: defective images, or None.
        quantile: with good images only: the threshold is this quantile of their scores.
        recall: with defective images: the highest threshold that flags this share of them;
            None: the F1-maximising threshold.
        pixel_quantile: the pixel threshold is this quantile of the good images' map pixels.
        good_folder: what a folder given as ``good`` means (see :func:`padim.io.loading.as_batches`).
        options: decoding options (``batch_size``, ``workers``, ``quiet``, ``skip_bad``).

    Returns:
        ``(calibration, good scores, defective scores or None, good images' registration
        confidences or None)``: the confidences set an aligning model's trust threshold.

    Raises:
        OptionError: for a quantile or recall outside (0, 1].
    """
    good_scores, pixels, confidence = good_statistics(predictor, good, folder=good_folder, **options)
    try:
        if defective is None:
            return from_normal_scores(good_scores, quantile, pixels, pixel_quantile), good_scores, None, confidence
        bad_scores, _, _ = good_statistics(predictor, defective, **options)
        calibration = from_labelled_scores(
            good_scores, bad_scores, recall=recall, good_pixels=pixels, pixel_quantile=pixel_quantile
        )
    except ValueError as error:
        raise OptionError(str(error)) from None
    return calibration, good_scores, bad_scores, confidence
