"""Anomaly detection metrics: image and pixel AUROC, AUPRO, F1-max, and a per-defect summary.

Plain NumPy functions, no torch and no scikit-learn at run time (the tests use
scikit-learn as the reference). Every curve is computed the same way: sort the scores once,
collapse ties, and read the counts at each distinct threshold from cumulative sums, so
that millions of pixels cost one ``argsort`` and no Python loop over thresholds. AUPRO
follows the MVTec AD protocol (Bergmann et al., CVPR 2019,
https://openaccess.thecvf.com/content_CVPR_2019/html/Bergmann_MVTec_AD_--_A_Comprehensive_Real-World_Dataset_for_Unsupervised_Anomaly_CVPR_2019_paper.html;
IJCV 2021, https://doi.org/10.1007/s11263-020-01400-4) as used to report PaDiM's
localisation results (Defard et al. 2020, https://arxiv.org/abs/2011.08785).

Shapes: N images, H×W map size. Labels are 1 (or True) for defective, 0 for good. Scores
point one way: higher means more anomalous, and a sample is called defective when
``score >= threshold``.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _as_labels(labels: Any, name: str = "labels") -> np.ndarray:
    """Return ``labels`` as a bool array; accept bool or integers/floats that are only 0 and 1."""
    array = np.asarray(labels)
    if array.dtype == bool:
        return array
    if array.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be bool or 0/1 numbers, got dtype {array.dtype}")
    bad = (array != 0) & (array != 1)
    if bad.any():
        values = np.unique(array[bad])[:5].tolist()
        raise ValueError(
            f"{name} must contain only 0 and 1 (or bool), got values such as {values} "
            "(for 0/255 mask images pass mask > 0)"
        )
    return array.astype(bool)


def _as_scores(scores: Any, name: str = "scores", dtype: Any = np.float64) -> np.ndarray:
    """Return ``scores`` as a finite float array of ``dtype``."""
    array = np.asarray(scores)
    if array.dtype.kind not in "iufb":
        raise ValueError(f"{name} must be numbers, got dtype {array.dtype}")
    array = array.astype(dtype, copy=False)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite, got {int((~np.isfinite(array)).sum())} NaN or inf values")
    return array


def _check_pair(labels: np.ndarray, scores: np.ndarray, labels_name: str, scores_name: str) -> None:
    if labels.shape != scores.shape:
        raise ValueError(
            f"{labels_name} and {scores_name} must have the same shape, got {labels.shape} and {scores.shape}"
        )
    if labels.size == 0:
        raise ValueError(f"{labels_name} must not be empty")


def _check_both_classes(labels: np.ndarray, name: str) -> None:
    n_pos = int(labels.sum())
    if n_pos == 0:
        raise ValueError(f"{name} has only the negative class (0, good; {labels.size} samples): ROC needs both classes")
    if n_pos == labels.size:
        raise ValueError(
            f"{name} has only the positive class (1, defective; {labels.size} samples): ROC needs both classes"
        )


def _check_maps(masks: Any, maps: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate a (N, H, W) mask and map pair; maps become float32 to halve sort memory."""
    masks = _as_labels(masks, "masks")
    maps = _as_scores(maps, "maps", dtype=np.float32)
    if masks.ndim != 3:
        raise ValueError(f"masks must have shape (N, H, W), got shape {masks.shape}")
    if maps.shape != masks.shape:
        raise ValueError(f"maps must have the same shape as masks {masks.shape}, got {maps.shape}")
    if masks.size == 0:
        raise ValueError(f"masks must not be empty, got shape {masks.shape}")
    return masks, maps


def _cumulative_at_thresholds(scores: np.ndarray, *weights: np.ndarray) -> tuple[np.ndarray, ...]:
    """Count and sum weights over the samples scoring at or above each distinct score.

    Args:
        scores: (M,) flat scores.
        weights: any number of (M,) per-sample weights.

    Returns:
        ``(thresholds, counts, sums...)``: thresholds (T,) are the distinct scores in
        decreasing order, counts (T,) the number of samples with ``score >= threshold``,
        and each sums array (T,) holds ``weight[scores >= threshold].sum()``.
    """
    # Ascending argsort, reversed as a view: one sort and no negated copy of a pixel array.
    # Stability is not needed because tied samples are collapsed below.
    order = np.argsort(scores)[::-1]
    sorted_scores = scores[order]
    # The last index of each run of equal scores: tied samples change sides together,
    # which is how scikit-learn handles ties.
    last = np.append(np.flatnonzero(np.diff(sorted_scores)), sorted_scores.size - 1)
    # Counts of bool weights fit int32 below 2**31 samples (half of int64's memory);
    # real weights sum in float64, since millions of float32 additions drift.
    count_dtype = np.int32 if scores.size < 2**31 else np.int64
    sums = [
        np.cumsum(weight[order], dtype=np.float64 if weight.dtype.kind == "f" else count_dtype)[last]
        for weight in weights
    ]
    return (sorted_scores[last], last + 1, *sums)


def _trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    # Written out because np.trapz was renamed np.trapezoid in NumPy 2.
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1])) / 2.0)


def _partial_area(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under y(x) for x in [0, x_max], interpolating y linearly at x_max.

    ``x`` must be non-decreasing, start at 0 and end at or beyond ``x_max``; this is the
    integration in MVTec's reference ``trapezoid(x, y, x_max)``.
    """
    keep = x <= x_max
    area = _trapezoid(x[keep], y[keep])
    last = int(np.count_nonzero(keep)) - 1
    if x[last] < x_max:
        # x[last + 1] > x_max exists because the curve ends at x = 1 >= x_max.
        x0, x1, y0, y1 = x[last], x[last + 1], y[last], y[last + 1]
        y_at_max = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        area += 0.5 * (y0 + y_at_max) * (x_max - x0)
    return float(area)


def _roc_flat(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    thresholds, counts, tps = _cumulative_at_thresholds(scores, labels)
    fps = counts - tps
    fpr = np.concatenate(([0.0], fps / fps[-1]))
    tpr = np.concatenate(([0.0], tps / tps[-1]))
    return fpr, tpr, np.concatenate(([np.inf], thresholds.astype(np.float64)))


def roc_curve(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Receiver operating characteristic, one point per distinct score.

    The same points as ``sklearn.metrics.roc_curve(labels, scores, drop_intermediate=False)``:
    the curve starts at (0, 0) with threshold ``inf``, and tied scores make one point.

    Args:
        labels: 1/True for defective, 0/False for good; any shape (flattened).
        scores: anomaly scores of the same shape, higher = more anomalous.

    Returns:
        ``(fpr, tpr, thresholds)``, each (T + 1,) for T distinct scores. Thresholds
        decrease, and ``fpr[i]``, ``tpr[i]`` are the rates of ``scores >= thresholds[i]``.

    Raises:
        ValueError: if the shapes differ or are empty, a score is NaN or inf, a label is not
            0/1, or only one class is present (the message says which).

    >>> fpr, tpr, thresholds = roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    >>> fpr.tolist(), tpr.tolist()
    ([0.0, 0.0, 0.5, 0.5, 1.0], [0.0, 0.5, 0.5, 1.0, 1.0])
    >>> thresholds.tolist()
    [inf, 0.8, 0.4, 0.35, 0.1]
    """
    labels = _as_labels(labels).ravel()
    scores = _as_scores(scores).ravel()
    _check_pair(labels, scores, "labels", "scores")
    _check_both_classes(labels, "labels")
    return _roc_flat(labels, scores)


def auroc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve (trapezoid rule; ties count one half, as in scikit-learn).

    Args:
        labels: 1/True for defective, 0/False for good; any shape (flattened).
        scores: anomaly scores of the same shape, higher = more anomalous.

    Returns:
        The AUROC in [0, 1].

    Raises:
        ValueError: as :func:`roc_curve`, including when only one class is present.

    >>> auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    >>> auroc([0, 1], [0.5, 0.5])
    0.5
    """
    fpr, tpr, _ = roc_curve(labels, scores)
    return _trapezoid(fpr, tpr)


def image_auroc(labels: Any, scores: Any) -> float:
    """Image-level AUROC: does the image score rank defective images above good ones?

    Args:
        labels: (N,) 1/True for defective images, 0/False for good.
        scores: (N,) image anomaly scores.

    Returns:
        The AUROC in [0, 1].

    Raises:
        ValueError: if the arrays are not 1-D of one length, or as :func:`auroc`.

    >>> image_auroc([0, 1, 0, 1], [0.2, 0.9, 0.3, 0.7])
    1.0
    """
    labels = _as_labels(labels)
    scores = _as_scores(scores)
    if labels.ndim != 1:
        raise ValueError(f"labels must have shape (N,), got shape {labels.shape}")
    _check_pair(labels, scores, "labels", "scores")
    _check_both_classes(labels, "labels")
    return _trapezoid(*_roc_flat(labels, scores)[:2])


def pixel_auroc(masks: Any, maps: Any) -> float:
    """Pixel-level AUROC over all pixels of all images pooled together.

    Maps are sorted once, as float32; the work memory is about 30 bytes per pixel, some
    350 MB for the largest MVTec AD test set (167 images) at 256×256.

    Args:
        masks: (N, H, W) ground truth, True (or 1) for defect pixels.
        maps: (N, H, W) anomaly maps.

    Returns:
        The AUROC in [0, 1].

    Raises:
        ValueError: if the shapes differ or are not (N, H, W), a map value is NaN or inf, a
            mask value is not 0/1, or the masks hold only defect or only normal pixels.

    >>> masks = np.zeros((1, 2, 2), dtype=bool); masks[0, 0, 0] = True
    >>> pixel_auroc(masks, np.array([[[0.9, 0.1], [0.2, 0.3]]]))
    1.0
    """
    masks, maps = _check_maps(masks, maps)
    flat_masks = masks.ravel()
    _check_both_classes(flat_masks, "masks")
    return _trapezoid(*_roc_flat(flat_masks, maps.ravel())[:2])


def f1_max(labels: Any, scores: Any) -> tuple[float, float]:
    """The best F1 score over all thresholds, and the threshold that gives it.

    Args:
        labels: 1/True for defective, 0/False for good; any shape (flattened).
        scores: anomaly scores of the same shape, higher = more anomalous.

    Returns:
        ``(f1, threshold)``: ``labels_pred = scores >= threshold`` reaches F1 ``f1``;
        ``threshold`` is one of the scores, the highest one when several tie for the best F1.

    Raises:
        ValueError: if the shapes differ or are empty, a score is NaN or inf, a label is not
            0/1, or there is no positive (defective) label.

    >>> f1_max([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    (0.8, 0.35)
    """
    labels = _as_labels(labels).ravel()
    scores = _as_scores(scores).ravel()
    _check_pair(labels, scores, "labels", "scores")
    n_pos = int(labels.sum())
    if n_pos == 0:
        raise ValueError(f"labels has no positive (1, defective) sample among {labels.size}: F1 is undefined")
    thresholds, counts, tps = _cumulative_at_thresholds(scores, labels)
    # F1 = 2PR / (P + R) = 2 TP / (predicted positives + actual positives).
    f1 = 2.0 * tps / (counts + n_pos)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])
