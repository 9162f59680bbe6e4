"""A model's calibration: its thresholds, its score scale, and how they were set.

Users rarely have defective images when they train, so the decision threshold comes from good
images the Gaussians did not see: a high quantile of their scores (a held-out fraction, or a
validation folder); with defective images too it can be the F1-maximising one, or the highest
one that still finds a given share of them (the choices are :mod:`padim.eval.thresholds`).
Defect regions use their own, lower, pixel threshold, chosen on the held-out good images' maps:
by default the 0.999 quantile of their pixels (one good pixel in a thousand reaches it;
``benchmarks/pixel_threshold.py`` compares the choices). The rules that apply a calibration are
:mod:`padim.scoring.rules`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from padim.scoring.rules import label, normalize

#: Quantile of the held-out good images' pixels that sets the pixel threshold (see the module doc).
PIXEL_QUANTILE = 0.999
#: How a threshold was set: ``Calibration.source``.
SOURCES = ("normal", "f1", "recall", "manual")


@dataclass(frozen=True)
class Calibration:
    """How scores become verdicts: the thresholds, the score scale, and how they were set.

    Attributes:
        threshold: images scoring at or above it are anomalous.
        center: the median good score, where the normalised score is 0.
        quantile: the quantile of good scores the threshold was set at (None if not so set).
        source: how the threshold was set: ``"normal"`` (a quantile of good scores), ``"f1"``
            (F1-max on labelled images), ``"recall"`` (the highest threshold that finds
            ``recall`` of the defective images) or ``"manual"`` (given by the user).
        pixel_threshold: the pixel threshold of defect regions (None: the image threshold).
        pixel_quantile: the quantile of good pixels it was set at (None: by hand, or unset).
        recall: the share of defective images a ``"recall"`` threshold finds at least.
        good_scores: the good images' scores it was calibrated on, sorted (None if unknown):
            they give the false-alarm rate of any threshold (:attr:`false_alarm_rate`).
    """

    threshold: float
    center: float
    quantile: float | None = None
    source: str = "normal"
    pixel_threshold: float | None = None
    pixel_quantile: float | None = None
    recall: float | None = None
    good_scores: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("threshold", "center"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"calibration {name} must be a finite number, got {getattr(self, name)!r}")
        if self.source not in SOURCES:
            raise ValueError(f"calibration source must be one of {SOURCES}, got {self.source!r}")
        if self.good_scores is not None:
            object.__setattr__(self, "good_scores", tuple(sorted(float(s) for s in self.good_scores)))

    @property
    def scale(self) -> float:
        """Score units from 0 to 0.5 of the normalised score, t - m (one unit if they coincide)."""
        spread = self.threshold - self.center
        return spread if spread > 1e-12 else max(abs(self.threshold), 1.0)

    @property
    def region_threshold(self) -> float:
        """The pixel threshold regions use, never above the image threshold (a flagged image has a region)."""
        if self.pixel_threshold is None:
            return self.threshold
        return min(self.pixel_threshold, self.threshold)

    @property
    def false_alarm_rate(self) -> float | None:
        """Share of the calibration's good images at or above the threshold (1 - quantile without them)."""
        if self.good_scores:
            return float(np.mean(label(np.asarray(self.good_scores), self.threshold)))
        return None if self.quantile is None else 1.0 - self.quantile

    def normalize(self, scores: Any) -> np.ndarray:
        """:func:`normalize` with this threshold and scale, in float64.

        >>> Calibration(threshold=10.0, center=6.0).normalize([6.0, 10.0, 14.0])
        array([0.  , 0.5 , 0.75])
        """
        return normalize(np.asarray(scores, dtype=np.float64), self.threshold, self.scale)

    def label(self, scores: Any) -> np.ndarray:
        """:func:`label` with this threshold."""
        return label(np.asarray(scores), self.threshold)

    def with_threshold(self, threshold: float) -> Calibration:
        """The same calibration with the threshold set by hand (``source="manual"``)."""
        return replace(self, threshold=float(threshold), quantile=None, recall=None, source="manual")

    def with_pixel_threshold(self, pixel_threshold: float) -> Calibration:
        """The same calibration with the pixel threshold set by hand."""
        return replace(self, pixel_threshold=float(pixel_threshold), pixel_quantile=None)

    def describe(self) -> str:
        """How the threshold was set, in words.

        >>> Calibration(threshold=5.0, center=3.0, quantile=0.99, good_scores=(1, 2, 5)).describe()
        'quantile 0.99 of 3 good images'
        """
        if self.source == "normal":
            n = len(self.good_scores or ())
            return f"quantile {self.quantile:g} of {f'{n} ' if n else ''}good image{'' if n == 1 else 's'}"
        if self.source == "recall":
            return f"highest threshold finding {self.recall:.0%} of the defective images"
        return "F1-max on good and defective images" if self.source == "f1" else "set by hand"

    def describe_pixel(self) -> str:
        """How the pixel threshold was set, in words."""
        if self.pixel_threshold is None:
            return "the image threshold (calibrated before pixel thresholds existed)"
        return "set by hand" if self.pixel_quantile is None else f"quantile {self.pixel_quantile:g} of good pixels"

    def to_dict(self) -> dict:
        out = asdict(self)
        out["good_scores"] = None if self.good_scores is None else list(self.good_scores)
        return out


def manual(threshold: float, previous: Calibration | None = None) -> Calibration:
    """A threshold set by hand, keeping what ``previous`` knows (without one the centre is 0).

    >>> manual(4.0).scale, manual(4.0, Calibration(threshold=5.0, center=3.0)).scale
    (4.0, 1.0)
    """
    if not (isinstance(threshold, (int, float, np.floating)) and math.isfinite(threshold)):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    if previous is None:
        return Calibration(threshold=float(threshold), center=0.0, source="manual")
    return previous.with_threshold(float(threshold))
