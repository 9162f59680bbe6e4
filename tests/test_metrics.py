"""Metrics against scikit-learn and against a slow, direct PRO reference."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import measure
from sklearn import metrics as skm

from padim.eval import metrics
from padim.eval import pro as pro_metric


def _random_case(seed: int, n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n).astype(bool)
    labels[:2] = [False, True]
    # One decimal gives many ties, which is where ROC implementations differ.
    scores = np.round(rng.normal(size=n) + labels * 0.8, 1)
    return labels, scores


def _random_maps(seed: int, n: int = 3, size: int = 12) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(n):
        for _ in range(rng.integers(0, 3)):
            r, c = rng.integers(0, size - 3, 2)
            h, w = rng.integers(1, 4, 2)
            masks[i, r : r + h, c : c + w] = True
    masks[0, 1, 1] = True  # at least one region
    # Two decimals: ties across normal and defect pixels.
    maps = np.round(rng.random(masks.shape) + 0.5 * masks, 2).astype(np.float32)
    return masks, maps


# ---------------------------------------------------------------------------- ROC / AUROC


@pytest.mark.parametrize("seed", range(5))
def test_roc_curve_matches_sklearn(seed):
    labels, scores = _random_case(seed)
    fpr, tpr, thresholds = metrics.roc_curve(labels, scores)
    ref_fpr, ref_tpr, ref_thr = skm.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    np.testing.assert_array_equal(thresholds[1:], ref_thr[1:])
    assert thresholds[0] == np.inf


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_sklearn(seed):
    labels, scores = _random_case(seed)
    assert metrics.auroc(labels, scores) == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)
    assert metrics.image_auroc(labels.astype(int), scores) == pytest.approx(
        skm.roc_auc_score(labels, scores), abs=1e-12
    )


def test_auroc_all_tied_is_half():
    assert metrics.auroc([0, 1, 0, 1], [3, 3, 3, 3]) == 0.5


@pytest.mark.parametrize("seed", range(3))
def test_pixel_auroc_matches_sklearn(seed):
    masks, maps = _random_maps(seed, n=4, size=16)
    expected = skm.roc_auc_score(masks.ravel(), maps.ravel())
    assert metrics.pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-12)
    # float64 maps go through the same float32 path.
    assert metrics.pixel_auroc(masks.astype(np.uint8), maps.astype(np.float64)) == pytest.approx(expected, abs=1e-12)


def test_pixel_auroc_larger_maps_run_vectorised():
    rng = np.random.default_rng(0)
    masks = rng.random((4, 128, 128)) > 0.95
    maps = rng.random(masks.shape).astype(np.float32) + masks
    assert metrics.pixel_auroc(masks, maps) == pytest.approx(skm.roc_auc_score(masks.ravel(), maps.ravel()))


@pytest.mark.parametrize(
    "labels, which",
    [([0, 0, 0], "only the negative class"), ([1, 1], "only the positive class")],
)
def test_single_class_names_the_class(labels, which):
    with pytest.raises(ValueError, match=which):
        metrics.auroc(labels, np.arange(len(labels), dtype=float))


@pytest.mark.parametrize(
    "labels, scores, match",
    [
        ([0, 2], [0.1, 0.2], "only 0 and 1"),
        ([0, 1], [0.1, np.nan], "finite"),
        ([0, 1, 1], [0.1, 0.2], "same shape"),
        (["a", "b"], [0.1, 0.2], "bool or 0/1"),
    ],
)
def test_bad_inputs_are_rejected(labels, scores, match):
    with pytest.raises(ValueError, match=match):
        metrics.auroc(labels, scores)


def test_image_auroc_wants_one_dimension():
    with pytest.raises(ValueError, match=r"labels must have shape \(N,\)"):
        metrics.image_auroc(np.array([[0, 1]]), np.array([[0.1, 0.2]]))


def test_pixel_auroc_wants_three_dimensions():
    with pytest.raises(ValueError, match=r"masks must have shape \(N, H, W\)"):
        metrics.pixel_auroc(np.array([[0, 1]]), np.array([[0.1, 0.2]]))


# ---------------------------------------------------------------------------- F1


@pytest.mark.parametrize("seed", range(5))
def test_f1_max_matches_precision_recall_curve(seed):
    labels, scores = _random_case(seed)
    f1, threshold = metrics.f1_max(labels, scores)
    precision, recall, _ = skm.precision_recall_curve(labels, scores)
    denominator = precision + recall
    ref = np.max(np.where(denominator > 0, 2 * precision * recall / np.where(denominator > 0, denominator, 1), 0))
    assert f1 == pytest.approx(ref, abs=1e-12)
    assert skm.f1_score(labels, scores >= threshold) == pytest.approx(f1, abs=1e-12)
    assert threshold in scores


def test_f1_max_needs_a_positive():
    with pytest.raises(ValueError, match="no positive"):
        metrics.f1_max([0, 0], [0.1, 0.2])


# ---------------------------------------------------------------------------- PRO


def _naive_pro_points(masks: np.ndarray, maps: np.ndarray, thresholds: np.ndarray):
    """FPR and mean per-region overlap computed directly at each threshold (slow)."""
    regions = []
    for mask, anomaly_map in zip(masks, maps):
        labelled = measure.label(mask, connectivity=2)  # 8-connectivity, skimage's own code
        for k in range(1, labelled.max() + 1):
            regions.append((anomaly_map, labelled == k))
    normal = ~masks
    fprs, pros = [0.0], [0.0]
    for t in thresholds:
        predicted = maps >= t
        fprs.append((predicted & normal).sum() / normal.sum())
        pros.append(np.mean([(m[region] >= t).mean() for m, region in regions]))
    fprs.append(1.0)
    pros.append(1.0)
    return np.array(fprs), np.array(pros)


def _naive_area(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoids segment by segment, cutting the segment that crosses ``limit``."""
    area = 0.0
    for i in range(len(x) - 1):
        x0, x1, y0, y1 = x[i], x[i + 1], y[i], y[i + 1]
        if x0 >= limit:
            break
        if x1 > limit:
            y1 = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            x1 = limit
        area += 0.5 * (y0 + y1) * (x1 - x0)
    return area / limit


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("limit", [0.3, 0.05, 1.0])
def test_aupro_matches_naive_reference(seed, limit):
    masks, maps = _random_maps(seed)
    # Every distinct score is a threshold, so the direct computation sees the same curve
    # and the match is exact rather than grid-limited.
    thresholds = np.unique(maps)[::-1]
    x, y = _naive_pro_points(masks, maps, thresholds)
    assert pro_metric.aupro(masks, maps, fpr_limit=limit) == pytest.approx(_naive_area(x, y, limit), abs=1e-6)


def test_pro_curve_matches_naive_points():
    masks, maps = _random_maps(3)
    fpr, pro, thresholds = pro_metric.pro_curve(masks, maps)
    x, y = _naive_pro_points(masks, maps, thresholds[1:-1])
    np.testing.assert_allclose(fpr, x, atol=1e-9)
    np.testing.assert_allclose(pro, y, atol=1e-6)
    assert thresholds[0] == np.inf and thresholds[-1] == -np.inf


def test_aupro_hand_cases():
    masks = np.zeros((2, 8, 8), dtype=bool)
    masks[0, 2:5, 2:4] = True
    masks[1, 6:, 6:] = True
    assert pro_metric.aupro(masks, masks.astype(np.float32)) == 1.0
    assert pro_metric.aupro(masks, (~masks).astype(np.float32)) == 0.0


def test_aupro_uses_eight_connectivity():
    # A diagonal pair is one region of 2 pixels under 8-connectivity, plus a lone pixel.
    masks = np.zeros((1, 5, 5), dtype=bool)
    masks[0, 0, 0] = masks[0, 1, 1] = masks[0, 3, 3] = True
    maps = np.zeros(masks.shape, dtype=np.float32)
    maps[0, 0, 0] = 1.0
    fpr, pro, _ = pro_metric.pro_curve(masks, maps)
    # At threshold 1: no false positive, overlaps 1/2 and 0, mean 1/4.
    np.testing.assert_allclose(fpr, [0, 0, 1, 1])
    np.testing.assert_allclose(pro, [0, 0.25, 1, 1])
    # PRO at FPR 0.3 is 0.25 + 0.75 * 0.3 = 0.475; trapezoid 0.5 * (0.25 + 0.475) * 0.3.
    assert pro_metric.aupro(masks, maps) == pytest.approx(0.5 * (0.25 + 0.475) * 0.3 / 0.3)


@pytest.mark.parametrize("limit", [0, -0.1, 1.5, "0.3"])
def test_aupro_rejects_bad_limit(limit):
    masks, maps = _random_maps(0)
    with pytest.raises(ValueError, match="fpr_limit"):
        pro_metric.aupro(masks, maps, fpr_limit=limit)


def test_aupro_needs_a_defect_region():
    with pytest.raises(ValueError, match="no defect pixel"):
        pro_metric.aupro(np.zeros((1, 4, 4), bool), np.zeros((1, 4, 4)))
