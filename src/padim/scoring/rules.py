"""From anomaly maps to verdicts: the image score, the thresholds, the normalised score, the labels.

PaDiM (Defard et al. 2020, https://arxiv.org/abs/2011.08785, Sec. 3.3) scores an image by the
maximum of its anomaly map. Users rarely have defective images when they train, so the
decision threshold comes from good images the Gaussians did not see: a high quantile of their
scores (a held-out fraction, or a validation folder). With defective images too, the threshold
can be the F1-maximising one, or the highest one that still finds a given share of them.

Each rule is written once, here. :func:`image_score`, :func:`normalize`, :func:`label` and
:func:`region` use only operators and methods that torch tensors and NumPy arrays share, so the
same function is traced into the inference graph (:mod:`padim.graph.pipeline`) and applied to NumPy
scores when a threshold is overridden at prediction time. This module imports neither torch
nor anything that does, so the ONNX runtime path uses it too.

Normalised score, with threshold t, median good score m and scale s = t - m, x = (score - t) / s:

    below the threshold (x < 0):  s' = max(0, 0.5 + x / 2)       0 at the median good score
    at or above it (x >= 0):      s' = 0.5 + x / (2 (1 + x))     0.5 at t, 0.75 at t + s, 0.9 at t + 4s

It is continuous with a continuous slope at t, keeps ranking above the threshold (a score
twice as far above t gets a higher value, however far) and approaches 1 without reaching it
(values are capped at the largest float32 below 1). A score that is not a finite number has a
NaN normalised score and is labelled anomalous: a verdict never fails open.

Defect regions use their own, lower, pixel threshold (``Calibration.pixel_threshold``), chosen
on the held-out good images' maps: by default the 0.999 quantile of their pixels (one good
pixel in a thousand reaches it; ``benchmarks/pixel_threshold.py`` compares the choices). A
region is drawn only in an image the image threshold flags, so an "OK" image has no outline.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

#: The largest float32 below 1: the normalised score's ceiling.
ALMOST_ONE = 1.0 - 2.0**-24
#: Quantile of the held-out good images' pixels that sets the pixel threshold (see the module doc).
PIXEL_QUANTILE = 0.999
#: How a threshold was set: ``Calibration.source``.
SOURCES = ("normal", "f1", "recall", "manual")


def image_score(maps: Any) -> Any:
    """The image score: the maximum of each anomaly map (PaDiM Sec. 3.3).

    Args:
        maps: (N, H, W) torch tensor.

    Returns:
        (N,) scores; higher means more anomalous.
    """
    return maps.flatten(1).amax(1)


def normalize(score: Any, threshold: Any, scale: Any) -> Any:
    """Normalised score in [0, 1): 0.5 at ``threshold``, rising towards 1 above it (tensor or array).

    Linear below the threshold (0 at ``threshold - scale``), ``0.5 + x / (2 (1 + x))`` above
    it with x = (score - threshold) / scale: see the module doc. NaN stays NaN.

    >>> normalize(np.array([6.0, 10.0, 14.0, 26.0, 1e30]), 10.0, 4.0).round(4).tolist()
    [0.0, 0.5, 0.75, 0.9, 1.0]
    >>> bool(normalize(np.array([1e30]), 10.0, 4.0)[0] < 1.0)
    True
    """
    x = (score - threshold) / scale
    above = x.clip(min=0.0)
    below = (0.5 + 0.5 * x.clip(max=0.0)).clip(min=0.0)
    return (below + 0.5 * above / (1.0 + above)).clip(max=ALMOST_ONE)


def label(score: Any, threshold: Any) -> Any:
    """True (anomalous) unless the score is a number below the threshold: NaN and -inf are anomalous.

    A verdict fails closed: a score that is not a finite number (a damaged model or input) is never normal.

    >>> label(np.array([1.0, 2.0, np.nan, -np.inf, np.inf]), 2.0).tolist()
    [False, True, True, True, True]
    """
    return ~((score < threshold) & (score > -math.inf))


def region(maps: Any, scores: Any, threshold: Any, level: Any) -> Any:
    """Defect pixels: at or above ``level`` in an image whose score is at or above ``threshold``.

    Args:
        maps: (N, H, W) anomaly maps (tensor or array).
        scores: (N,) their image scores.
        threshold: the image threshold.
        level: the pixel threshold (:attr:`Calibration.region_threshold`).

    Returns:
        (N, H, W) bool; NaN pixels of a flagged image count as defective.

    >>> region(np.array([[[1.0, 3.0]], [[1.0, 1.5]]]), np.array([3.0, 1.5]), 2.0, 1.2).tolist()
    [[[False, True]], [[False, False]]]
    """
    return label(scores, threshold)[..., None, None] & label(maps, level)


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
            return float(np.mean(np.asarray(self.good_scores) >= self.threshold))
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
    from padim.eval.metrics import f1_max

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
