"""The rules that turn anomaly maps into verdicts: image score, normalised score, label, defect pixels.

PaDiM (Defard et al. 2020, https://arxiv.org/abs/2011.08785, Sec. 3.3) scores an image by the
maximum of its anomaly map. Each rule is written once, here, with only the operators and
methods that torch tensors and NumPy arrays share, so the same function is traced into the
inference graph (:mod:`padim.graph.modules`) and applied to NumPy scores wherever a verdict is
needed again (a threshold set at prediction time, evaluation, the report, the verdict counts).
This module imports neither torch nor anything that does.

Normalised score, with threshold t, median good score m and scale s = t - m, x = (score - t) / s:

    below the threshold (x < 0):  s' = max(0, 0.5 + x / 2)       0 at the median good score
    at or above it (x >= 0):      s' = 0.5 + x / (2 (1 + x))     0.5 at t, 0.75 at t + s, 0.9 at t + 4s

It is continuous with a continuous slope at t, keeps ranking above the threshold (a score
twice as far above t gets a higher value, however far) and approaches 1 without reaching it
(values are capped at the largest float32 below 1). A score that is not a finite number has a
NaN normalised score and is labelled anomalous: a verdict never fails open.

Defect regions use their own, lower, pixel threshold (:attr:`padim.scoring.calibration.Calibration.pixel_threshold`);
a region is drawn only in an image the image threshold flags, so an "OK" image has no outline.
"""

from __future__ import annotations

import math
from typing import Any

#: The largest float32 below 1: the normalised score's ceiling.
ALMOST_ONE = 1.0 - 2.0**-24


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

    >>> import numpy as np
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

    >>> import numpy as np
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

    >>> import numpy as np
    >>> region(np.array([[[1.0, 3.0]], [[1.0, 1.5]]]), np.array([3.0, 1.5]), 2.0, 1.2).tolist()
    [[[False, True]], [[False, False]]]
    """
    return label(scores, threshold)[..., None, None] & label(maps, level)
