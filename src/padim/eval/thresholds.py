"""Choosing thresholds from scores: a quantile of good images, F1-max or a recall on labelled ones.

Each function turns scores (and good images' map pixels) into a
:class:`padim.scoring.calibration.Calibration`: :func:`from_normal_scores` is how a fit sets its
threshold on held-out good images (PaDiM, Defard et al. 2020, https://arxiv.org/abs/2011.08785,
leaves the decision threshold to the user); :func:`from_labelled_scores` is how ``padim
calibrate`` sets one from good and defective images. NumPy only.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from padim.eval.metrics import f1_max
from padim.scoring.calibration import PIXEL_QUANTILE, Calibration


def _finite(values: Any, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).ravel()
    if array.size == 0:
        raise ValueError(f"calibration needs the {what} of at least one image, got none")
    if not np.isfinite(array).all():
        raise ValueError(f"calibration needs finite {what}, got {int((~np.isfinite(array)).sum())} NaN or inf")
    return array


def _check_quantile(name: str, value: float) -> None:
    if not (isinstance(value, (int, float, np.floating)) and 0.0 < value <= 1.0):
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")


def pixel_threshold(good_pixels: Any, quantile: float = PIXEL_QUANTILE) -> float:
    """The pixel threshold: ``quantile`` of good images' map pixels (any shape, flattened).

    >>> pixel_threshold(np.arange(1001.0), 0.999)
    999.0
    """
    _check_quantile("pixel quantile", quantile)
    return float(np.quantile(_finite(good_pixels, "map pixels"), quantile))


def threshold_for_recall(defective_scores: Any, recall: float) -> float:
    """The highest threshold that flags at least ``recall`` of the defective images.

    >>> threshold_for_recall([5.0, 9.0, 7.0, 8.0], 0.75), threshold_for_recall([5.0, 9.0, 7.0, 8.0], 1.0)
    (7.0, 5.0)
    """
    _check_quantile("recall", recall)
    ranked = np.sort(_finite(defective_scores, "defective scores"))[::-1]
    needed = max(1, math.ceil(recall * ranked.size - 1e-9))
    return float(ranked[needed - 1])


def from_normal_scores(
    scores: Any, quantile: float = 0.99, good_pixels: Any = None, pixel_quantile: float = PIXEL_QUANTILE
) -> Calibration:
    """Calibrate from the image scores (and maps) of held-out good images.

    Args:
        scores: (N,) scores of good images, N >= 1.
        quantile: in (0, 1]; the threshold is this quantile (linear interpolation).
        good_pixels: their maps' pixels (any shape), for the pixel threshold; None: none set.
        pixel_quantile: the pixel threshold's quantile of ``good_pixels``.

    Raises:
        ValueError: for no scores, a non-finite score, or a quantile outside (0, 1].

    >>> from_normal_scores(np.array([1.0, 2.0, 3.0, 4.0, 5.0]), quantile=1.0).threshold
    5.0
    """
    scores = _finite(scores, "scores")
    _check_quantile("quantile", quantile)
    pixels = {} if good_pixels is None else _pixel_fields(good_pixels, pixel_quantile)
    return Calibration(
        threshold=float(np.quantile(scores, quantile)),
        center=float(np.median(scores)),
        quantile=float(quantile),
        good_scores=tuple(scores),
        **pixels,
    )


def from_labelled_scores(
    good_scores: Any,
    defective_scores: Any,
    *,
    recall: float | None = None,
    good_pixels: Any = None,
    pixel_quantile: float = PIXEL_QUANTILE,
) -> Calibration:
    """Calibrate on labelled images: F1-max, or the highest threshold reaching ``recall``.

    The centre is the median good score; ``good_pixels`` sets the pixel threshold as in
    :func:`from_normal_scores`.

    >>> from_labelled_scores([1.0, 2.0, 3.0], [5.0, 6.0]).threshold
    5.0
    >>> from_labelled_scores([1.0, 2.0, 3.0], [2.5, 6.0], recall=0.5).threshold
    6.0
    """
    good = _finite(good_scores, "good scores")
    bad = _finite(defective_scores, "defective scores")
    pixels = {} if good_pixels is None else _pixel_fields(good_pixels, pixel_quantile)
    if recall is None:
        _, threshold = f1_max(np.r_[np.zeros(good.size), np.ones(bad.size)], np.r_[good, bad])
        source = "f1"
    else:
        threshold, source = threshold_for_recall(bad, recall), "recall"
    return Calibration(
        threshold=float(threshold),
        center=float(np.median(good)),
        source=source,
        recall=None if recall is None else float(recall),
        good_scores=tuple(good),
        **pixels,
    )


def _pixel_fields(good_pixels: Any, quantile: float) -> dict:
    return dict(pixel_threshold=pixel_threshold(good_pixels, quantile), pixel_quantile=float(quantile))
