"""From anomaly maps to verdicts: the image score, the threshold, the normalised score, the label.

PaDiM (Defard et al. 2020, https://arxiv.org/abs/2011.08785, Sec. 3.3) scores an image by the
maximum of its anomaly map. Users rarely have defective images when they train, so the
decision threshold comes from good images the Gaussians did not see: a high quantile of their
scores (a held-out fraction, or a validation folder). With defective images too, the threshold
can be the F1-maximising one.

Each rule is written once, here. :func:`image_score`, :func:`normalize` and :func:`label` use
only operators and methods that torch tensors and NumPy arrays share, so the same function is
traced into the inference graph (:mod:`padim.pipeline`) and applied to NumPy scores when a
threshold is overridden at prediction time. This module imports neither torch nor anything
that does, so the ONNX runtime path uses it too.

Normalised score: 0.5 at the threshold t, 0 at the median good score m, linear in between and
beyond, clipped to [0, 1]:  s' = clip(0.5 + (s - t) / (2 (t - m)), 0, 1).
A score that is not a finite number is labelled anomalous: a verdict never fails open.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np


def image_score(maps: Any) -> Any:
    """The image score: the maximum of each anomaly map (PaDiM Sec. 3.3).

    Args:
        maps: (N, H, W) torch tensor.

    Returns:
        (N,) scores; higher means more anomalous.
    """
    return maps.flatten(1).amax(1)


def normalize(score: Any, threshold: Any, scale: Any) -> Any:
    """Normalised score in [0, 1], 0.5 at ``threshold``, ``threshold - scale`` at 0 (tensor or array).

    >>> normalize(np.array([6.0, 10.0, 14.0, 30.0]), 10.0, 4.0)
    array([0. , 0.5, 1. , 1. ])
    """
    return (0.5 + (score - threshold) / (2.0 * scale)).clip(0.0, 1.0)


def label(score: Any, threshold: Any) -> Any:
    """True (anomalous) unless the score is below the threshold: NaN scores are anomalous.

    >>> label(np.array([1.0, 2.0, np.nan]), 2.0).tolist()
    [False, True, True]
    """
    return ~(score < threshold)


@dataclass(frozen=True)
class Calibration:
    """The decision threshold ``threshold`` (t) and the centre ``center`` (m) of the score scale.

    Attributes:
        threshold: images scoring at or above it are anomalous.
        center: the median good score, where the normalised score is 0.
        quantile: the quantile of good scores the threshold was set at (None if not so set).
        source: how it was set: ``"normal"`` (quantile of good scores), ``"f1"`` (F1-max on
            labelled images) or ``"manual"`` (given by the user).
    """

    threshold: float
    center: float
    quantile: float | None = None
    source: str = "normal"

    @property
    def scale(self) -> float:
        """Score units from 0 to 0.5 of the normalised score, t - m (one unit if they coincide)."""
        spread = self.threshold - self.center
        return spread if spread > 1e-12 else max(abs(self.threshold), 1.0)

    def normalize(self, scores: Any) -> np.ndarray:
        """:func:`normalize` with this threshold and scale, in float64.

        >>> Calibration(threshold=10.0, center=6.0).normalize([6.0, 10.0, 14.0])
        array([0. , 0.5, 1. ])
        """
        return normalize(np.asarray(scores, dtype=np.float64), self.threshold, self.scale)

    def label(self, scores: Any) -> np.ndarray:
        """:func:`label` with this threshold."""
        return label(np.asarray(scores), self.threshold)

    def with_threshold(self, threshold: float) -> Calibration:
        """The same calibration with the threshold set by hand (``source="manual"``)."""
        return replace(self, threshold=float(threshold), quantile=None, source="manual")

    def to_dict(self) -> dict:
        return asdict(self)


def from_normal_scores(scores: Any, quantile: float = 0.99) -> Calibration:
    """Calibrate from the image scores of held-out good images.

    Args:
        scores: (N,) scores of good images, N >= 1.
        quantile: in (0, 1]; the threshold is this quantile (linear interpolation).

    Raises:
        ValueError: for no scores, a non-finite score, or a quantile outside (0, 1].

    >>> from_normal_scores(np.array([1.0, 2.0, 3.0, 4.0, 5.0]), quantile=1.0).threshold
    5.0
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if scores.size == 0:
        raise ValueError("calibration needs the scores of at least one held-out good image, got none")
    if not np.isfinite(scores).all():
        raise ValueError(f"calibration needs finite scores, got {int((~np.isfinite(scores)).sum())} NaN or inf")
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile must be in (0, 1], got {quantile!r}")
    return Calibration(
        threshold=float(np.quantile(scores, quantile)), center=float(np.median(scores)), quantile=quantile
    )


def from_labelled_scores(good_scores: Any, defective_scores: Any) -> Calibration:
    """Calibrate on labelled images: the F1-maximising threshold; centre = median good score.

    >>> from_labelled_scores([1.0, 2.0, 3.0], [5.0, 6.0]).threshold
    5.0
    """
    from padim.metrics import f1_max

    good = np.asarray(good_scores, dtype=np.float64).ravel()
    bad = np.asarray(defective_scores, dtype=np.float64).ravel()
    if good.size == 0 or bad.size == 0:
        raise ValueError(f"F1 calibration needs good and defective images, got {good.size} and {bad.size}")
    _, threshold = f1_max(np.r_[np.zeros(good.size), np.ones(bad.size)], np.r_[good, bad])
    return Calibration(threshold=float(threshold), center=float(np.median(good)), quantile=None, source="f1")
