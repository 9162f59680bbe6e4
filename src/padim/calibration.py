"""Thresholds and normalised scores from normal images alone.

Real users rarely have defective images when they train, so the decision threshold is set
from good images the Gaussian did not see (a held-out fraction): a high quantile of their
image scores (the map maxima). The same value is the per-pixel threshold of the predicted
region, so an image is labelled anomalous exactly when some region is drawn on it.

Normalised score: 0.5 at the threshold, 0 at the median normal score, linear in between and
beyond, clipped to [0, 1]:  s' = clip(0.5 + (s - t) / (2 (t - m)), 0, 1).
NumPy only, so the ONNX path can share it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Calibration:
    """Threshold ``threshold`` (t) and centre ``center`` (m, median normal score) of the score scale."""

    threshold: float
    center: float
    quantile: float | None = None
    source: str = "normal"  # "normal": quantile of held-out good scores; "f1": F1-max on labelled images

    @property
    def scale(self) -> float:
        # Guard a degenerate hold-out (all scores equal): one unit per score unit then.
        spread = self.threshold - self.center
        return spread if spread > 1e-12 else max(abs(self.threshold), 1.0)

    def normalize(self, scores: np.ndarray) -> np.ndarray:
        """Scores (any shape, raw map values too) mapped to [0, 1] with 0.5 at the threshold.

        >>> Calibration(threshold=10.0, center=6.0).normalize(np.array([6.0, 10.0, 14.0, 30.0]))
        array([0. , 0.5, 1. , 1. ])
        """
        scores = np.asarray(scores, dtype=np.float64)
        return np.clip(0.5 + (scores - self.threshold) / (2.0 * self.scale), 0.0, 1.0)

    def label(self, scores: np.ndarray) -> np.ndarray:
        """True (anomalous) where the score reaches the threshold."""
        return np.asarray(scores) >= self.threshold

    def to_dict(self) -> dict:
        return asdict(self)


def from_normal_scores(scores: np.ndarray, quantile: float = 0.99) -> Calibration:
    """Calibrate from the image scores of held-out good images.

    Args:
        scores: (N,) scores of good images, N >= 1.
        quantile: in (0, 1]; the threshold is this quantile (linear interpolation).

    Raises:
        ValueError: for no scores or a quantile outside (0, 1].

    >>> from_normal_scores(np.array([1.0, 2.0, 3.0, 4.0, 5.0]), quantile=1.0).threshold
    5.0
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if scores.size == 0:
        raise ValueError("calibration needs the scores of at least one held-out good image, got none")
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile must be in (0, 1], got {quantile!r}")
    return Calibration(
        threshold=float(np.quantile(scores, quantile)), center=float(np.median(scores)), quantile=quantile
    )


def from_labelled_scores(labels: np.ndarray, scores: np.ndarray, threshold: float) -> Calibration:
    """Calibration whose threshold was chosen on labelled images (F1-max); centre = median good score."""
    labels = np.asarray(labels).astype(bool)
    good = np.asarray(scores, dtype=np.float64)[~labels]
    center = float(np.median(good)) if good.size else float(threshold)
    return Calibration(threshold=float(threshold), center=center, quantile=None, source="f1")
