"""Every metric of a labelled test set, overall and per defect type, as a JSON-ready dict.

:func:`summarize` is the MVTec AD protocol (Bergmann et al., CVPR 2019) used to report PaDiM
(Defard et al. 2020, https://arxiv.org/abs/2011.08785): image AUROC, pixel AUROC, AUPRO, F1-max
and the counts at the model's threshold, overall and for each defect type against the good
images. NumPy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from padim.eval.metrics import _as_labels, _as_scores, _check_pair, f1_max, image_auroc, pixel_auroc
from padim.eval.operating_points import confusion
from padim.eval.pro import aupro

# The keys of every summary in summarize()'s result, in the order a report shows them.
SUMMARY_KEYS = (
    "n_images",
    "n_good",
    "n_defective",
    "image_auroc",
    "pixel_auroc",
    "aupro",
    "image_f1_max",
    "f1_threshold",
    "threshold",
    "image_accuracy",
    "image_precision",
    "image_recall",
    "image_f1",
    "n_false_alarms",
    "n_missed",
)


def _pixel_inputs(maps: Any, masks: Any, n_images: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Stack maps (N, H, W) float32 and masks (N, H, W) bool; say which images had a mask.

    A missing mask (None) becomes all-False, and is recorded as missing so that a defect
    image without one can disable pixel metrics.
    """
    if maps is None or masks is None:
        return None
    maps = _as_scores(maps, "maps", dtype=np.float32)
    if maps.ndim != 3 or maps.shape[0] != n_images:
        raise ValueError(f"maps must have shape (N, H, W) with N = {n_images}, got shape {maps.shape}")
    if len(masks) != n_images:
        raise ValueError(f"masks must have N = {n_images} entries, got {len(masks)}")
    stacked = np.zeros(maps.shape, dtype=bool)
    has_mask = np.zeros(n_images, dtype=bool)
    for i, mask in enumerate(masks):
        if mask is None:
            continue
        mask = _as_labels(mask, f"masks[{i}]")
        if mask.shape != maps.shape[1:]:
            raise ValueError(f"masks[{i}] must have the map size {maps.shape[1:]}, got shape {mask.shape}")
        stacked[i] = mask
        has_mask[i] = True
    return maps, stacked, has_mask


def _summary(
    labels: np.ndarray,
    scores: np.ndarray,
    pixels: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    threshold: float | None,
    defect_only: bool = False,
) -> dict[str, Any]:
    """One summary; ``defect_only``: a defect type's row, which counts that type's images only.

    The ranking metrics (AUROC, F1-max, pixel metrics) of a defect type still compare its
    images with the good ones (``n_good`` says how many); its counts and its metrics at the
    threshold (accuracy = recall, misses) are over the type's own images.
    """
    n_defective = int(labels.sum())
    n_good = int(labels.size - n_defective)
    out: dict[str, Any] = dict.fromkeys(SUMMARY_KEYS)
    n_images = n_defective if defect_only else int(labels.size)
    out.update(n_images=n_images, n_good=n_good, n_defective=n_defective, threshold=threshold)
    if n_good and n_defective:
        out["image_auroc"] = image_auroc(labels, scores)
    if n_defective:
        out["image_f1_max"], out["f1_threshold"] = f1_max(labels, scores)
    if pixels is not None and pixels[2][labels].all():
        maps, masks, _ = pixels
        n_defect_pixels = int(masks.sum())
        if 0 < n_defect_pixels < masks.size:
            out["pixel_auroc"] = pixel_auroc(masks, maps)
            out["aupro"] = aupro(masks, maps)
    if threshold is not None:
        counts = confusion(labels, scores, threshold)
        tp, fp, fn = counts["true_positives"], counts["false_alarms"], counts["misses"]
        out["n_missed"] = fn
        out["image_recall"] = tp / n_defective if n_defective else None
        if defect_only:
            out["image_accuracy"] = out["image_recall"]
            return out
        out["n_false_alarms"] = fp
        out["image_accuracy"] = (labels.size - fp - fn) / labels.size
        out["image_precision"] = tp / (tp + fp) if tp + fp else None
        out["image_f1"] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
    return out


def summarize(
    labels: Any,
    scores: Any,
    defect_types: Sequence[str],
    maps: Any = None,
    masks: Sequence[Any] | np.ndarray | None = None,
    threshold: float | None = None,
) -> dict[str, Any]:
    """All metrics, overall and per defect type, as a JSON-ready dict.

    Each defect type's ranking metrics (image and pixel AUROC, AUPRO, F1-max) compare its
    images with all good images, the usual MVTec AD breakdown; its counts (``n_images``,
    ``n_missed``) and its metrics at the threshold count that type's images only (its
    accuracy is its recall; precision, F1 and false alarms belong to the overall row).
    A metric that is undefined is None: AUROC with a single
    class, pixel metrics without maps or masks, or when any defect image in the group has
    no mask, and the at-threshold metrics when ``threshold`` is None.

    Args:
        labels: (N,) 1/True for defective images, 0/False for good.
        scores: (N,) image anomaly scores.
        defect_types: N names; ``"good"`` exactly for the good images.
        maps: optional (N, H, W) anomaly maps (an array or a list of (H, W) arrays).
        masks: optional N ground-truth masks, each (H, W) bool/0-1 or None where there is
            none; a good image with None counts as all-normal.
        threshold: optional decision threshold; ``score >= threshold`` is called defective.

    Returns:
        ``{"overall": summary, "per_defect": {defect_type: summary}}``, defect types sorted by
        name, where each summary has the keys of ``SUMMARY_KEYS``: n_images, n_good,
        n_defective, image_auroc, pixel_auroc, aupro, image_f1_max, f1_threshold, threshold,
        image_accuracy, image_precision, image_recall, image_f1, n_false_alarms, n_missed
        (Python floats, ints or None).

    Raises:
        ValueError: if lengths or shapes disagree, values are not finite or not 0/1, or a
            defect type contradicts its label (``"good"`` must go with label 0 and only).

    >>> result = summarize([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], ["good", "good", "crack", "hole"])
    >>> result["overall"]["image_auroc"], result["per_defect"]["hole"]["image_auroc"]
    (0.75, 1.0)
    >>> sorted(result["per_defect"])
    ['crack', 'hole']
    """
    labels = _as_labels(labels)
    scores = _as_scores(scores)
    if labels.ndim != 1:
        raise ValueError(f"labels must have shape (N,), got shape {labels.shape}")
    _check_pair(labels, scores, "labels", "scores")
    defect_types = [str(t) for t in defect_types]
    if len(defect_types) != labels.size:
        raise ValueError(f"defect_types must have N = {labels.size} entries, got {len(defect_types)}")
    types = np.array(defect_types, dtype=object)
    contradict = np.flatnonzero(labels == (types == "good"))
    if contradict.size:
        i = int(contradict[0])
        raise ValueError(
            f"defect_types[{i}] must be 'good' exactly when labels[{i}] is 0, "
            f"got {defect_types[i]!r} with label {int(labels[i])}"
        )
    if threshold is not None:
        if not isinstance(threshold, (int, float, np.integer, np.floating)) or not np.isfinite(threshold):
            raise ValueError(f"threshold must be a finite number or None, got {threshold!r}")
        threshold = float(threshold)
    pixels = _pixel_inputs(maps, masks, labels.size)

    def subset(select: np.ndarray) -> dict[str, Any]:
        part = None if pixels is None else tuple(array[select] for array in pixels)
        return _summary(labels[select], scores[select], part, threshold, defect_only=True)

    result: dict[str, Any] = {"overall": _summary(labels, scores, pixels, threshold), "per_defect": {}}
    for defect in sorted(set(types[labels].tolist())):
        result["per_defect"][defect] = subset(~labels | (types == defect))
    return result
