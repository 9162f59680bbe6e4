"""The per-region overlap (PRO) curve and its normalised area, AUPRO: the MVTec AD localisation metric.

Bergmann et al., IJCV 2021 (https://doi.org/10.1007/s11263-020-01400-4), as used to report
PaDiM's localisation (Defard et al. 2020, https://arxiv.org/abs/2011.08785). Ground-truth
regions are the 8-connected components of each mask (:mod:`padim.scoring.components`); the
curve is read from one sort of the map pixels (:func:`padim.eval.metrics._cumulative_at_thresholds`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from padim.eval.metrics import _check_maps, _cumulative_at_thresholds, _partial_area
from padim.scoring.components import label


def pro_curve(masks: Any, maps: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-region overlap (PRO) against the false-positive rate, one point per distinct score.

    For a threshold t, PRO is the mean over all ground-truth regions (8-connected
    components of each mask) of the fraction of the region's pixels with ``map >= t``; FPR
    is the fraction of normal pixels with ``map >= t``. As in MVTec's reference code, each
    pixel's contribution to both is spread with a cumulative sum over the sorted scores, and
    the curve is closed with (0, 0) and (1, 1).

    Args:
        masks: (N, H, W) ground truth, True (or 1) for defect pixels.
        maps: (N, H, W) anomaly maps.

    Returns:
        ``(fpr, pro, thresholds)``, each (T + 2,) for T distinct scores; fpr is
        non-decreasing, thresholds decrease from ``inf`` to ``-inf`` (the closing points).

    Raises:
        ValueError: if the shapes differ or are not (N, H, W), a map value is NaN or inf, a
            mask value is not 0/1, or the masks hold no defect or no normal pixel.
    """
    masks, maps = _check_maps(masks, maps)
    # 1 / (size of its region) for each defect pixel, 0 elsewhere; float32 storage is
    # plenty, and the cumulative sum below is done in float64.
    overlap_weight = np.zeros(masks.shape, dtype=np.float32)
    n_regions = 0
    for i, mask in enumerate(masks):
        regions, n = label(mask)
        if n == 0:
            continue
        sizes = np.bincount(regions.ravel())
        per_region = np.zeros(n + 1, dtype=np.float32)
        per_region[1:] = 1.0 / sizes[1:]
        overlap_weight[i] = per_region[regions]
        n_regions += n
    normal = ~masks
    n_normal = int(normal.sum())
    if n_regions == 0:
        raise ValueError(f"masks has no defect pixel (shape {masks.shape}): PRO is undefined")
    if n_normal == 0:
        raise ValueError(f"masks has no normal pixel (shape {masks.shape}): FPR is undefined")
    thresholds, _, fps, overlaps = _cumulative_at_thresholds(maps.ravel(), normal.ravel(), overlap_weight.ravel())
    fpr = np.clip(fps / n_normal, 0.0, 1.0)
    pro = np.clip(overlaps / n_regions, 0.0, 1.0)
    return (
        np.concatenate(([0.0], fpr, [1.0])),
        np.concatenate(([0.0], pro, [1.0])),
        np.concatenate(([np.inf], thresholds.astype(np.float64), [-np.inf])),
    )


def aupro(masks: Any, maps: Any, fpr_limit: float = 0.3) -> float:
    """Area under the PRO curve up to ``fpr_limit``, divided by ``fpr_limit`` (MVTec AD).

    The PRO curve (:func:`pro_curve`) is integrated with the trapezoid rule over FPR in
    [0, fpr_limit], with PRO interpolated linearly at ``fpr_limit``, as MVTec's reference
    evaluation does; 1.0 is a perfect map.

    Args:
        masks: (N, H, W) ground truth, True (or 1) for defect pixels.
        maps: (N, H, W) anomaly maps.
        fpr_limit: upper end of the FPR range, in (0, 1]; 0.3 is the MVTec convention.

    Returns:
        The normalised AUPRO in [0, 1].

    Raises:
        ValueError: if ``fpr_limit`` is not in (0, 1], or as :func:`pro_curve`.

    >>> masks = np.zeros((1, 4, 4), dtype=bool); masks[0, 1:3, 1:3] = True
    >>> aupro(masks, masks.astype(float))
    1.0
    >>> aupro(masks, (~masks).astype(float))
    0.0
    """
    if not (isinstance(fpr_limit, (int, float, np.floating, np.integer)) and 0.0 < fpr_limit <= 1.0):
        raise ValueError(f"fpr_limit must be a number in (0, 1], got {fpr_limit!r}")
    fpr, pro, _ = pro_curve(masks, maps)
    return _partial_area(fpr, pro, float(fpr_limit)) / float(fpr_limit)
