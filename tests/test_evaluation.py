"""summarize: the metrics overall and per defect type, against scikit-learn; and format_table."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn import metrics as skm

from padim.eval import metrics, pro, summary

# ---------------------------------------------------------------------------- evaluate


def _dataset(seed: int = 0):
    rng = np.random.default_rng(seed)
    types = ["good"] * 8 + ["crack"] * 5 + ["hole"] * 4
    labels = np.array([t != "good" for t in types])
    scores = np.round(rng.normal(size=len(types)) + labels, 1)
    masks = np.zeros((len(types), 10, 10), dtype=bool)
    for i in np.flatnonzero(labels):
        r, c = rng.integers(0, 7, 2)
        masks[i, r : r + 3, c : c + 3] = True
    maps = (rng.random(masks.shape) + masks * 0.6).astype(np.float32)
    return labels, scores, types, maps, masks


def test_evaluate_keys_and_values_match_sklearn():
    labels, scores, types, maps, masks = _dataset()
    result = summary.summarize(labels, scores, types, maps=maps, masks=list(masks), threshold=0.5)
    assert set(result) == {"overall", "per_defect"}
    assert list(result["per_defect"]) == ["crack", "hole"]
    overall = result["overall"]
    assert tuple(overall) == summary.SUMMARY_KEYS
    assert overall["n_images"] == 17 and overall["n_good"] == 8 and overall["n_defective"] == 9
    assert overall["image_auroc"] == pytest.approx(skm.roc_auc_score(labels, scores))
    assert overall["pixel_auroc"] == pytest.approx(skm.roc_auc_score(masks.ravel(), maps.ravel()))
    assert overall["aupro"] == pytest.approx(pro.aupro(masks, maps))
    predicted = scores >= 0.5
    assert overall["threshold"] == 0.5
    assert overall["image_accuracy"] == pytest.approx(skm.accuracy_score(labels, predicted))
    assert overall["image_precision"] == pytest.approx(skm.precision_score(labels, predicted))
    assert overall["image_recall"] == pytest.approx(skm.recall_score(labels, predicted))
    assert overall["image_f1"] == pytest.approx(skm.f1_score(labels, predicted))
    assert (overall["image_f1_max"], overall["f1_threshold"]) == metrics.f1_max(labels, scores)

    assert overall["n_false_alarms"] == int((predicted & ~labels).sum())
    assert overall["n_missed"] == int((~predicted & labels).sum())

    crack = result["per_defect"]["crack"]
    select = np.array([t in ("good", "crack") for t in types])
    is_crack = np.array([t == "crack" for t in types])
    # The row counts the 5 crack images only; its AUROC compares them with the 8 good ones.
    assert crack["n_images"] == crack["n_defective"] == 5 and crack["n_good"] == 8
    assert crack["image_recall"] == crack["image_accuracy"] == pytest.approx(predicted[is_crack].mean())
    assert crack["n_missed"] == int((~predicted[is_crack]).sum())
    assert crack["image_precision"] is None and crack["n_false_alarms"] is None
    assert crack["image_auroc"] == pytest.approx(skm.roc_auc_score(labels[select], scores[select]))
    assert crack["pixel_auroc"] == pytest.approx(skm.roc_auc_score(masks[select].ravel(), maps[select].ravel()))
    json.dumps(result)  # plain Python numbers only


def test_evaluate_without_maps_or_threshold_gives_none():
    labels, scores, types, _, _ = _dataset()
    overall = summary.summarize(labels, scores, types)["overall"]
    for key in ("pixel_auroc", "aupro", "threshold", "image_accuracy", "image_precision", "image_recall"):
        assert overall[key] is None
    assert overall["image_auroc"] is not None


def test_evaluate_missing_masks():
    labels, scores, types, maps, masks = _dataset()
    with_none = list(masks)
    for i in np.flatnonzero(~labels):
        with_none[i] = None  # good images without a mask count as all-normal
    result = summary.summarize(labels, scores, types, maps=maps, masks=with_none)
    assert result["overall"]["pixel_auroc"] == pytest.approx(skm.roc_auc_score(masks.ravel(), maps.ravel()))

    first_hole = types.index("hole")
    with_none[first_hole] = None  # a defect image without a mask: its groups lose pixel metrics
    result = summary.summarize(labels, scores, types, maps=maps, masks=with_none)
    assert result["overall"]["pixel_auroc"] is None and result["overall"]["aupro"] is None
    assert result["per_defect"]["hole"]["pixel_auroc"] is None
    assert result["per_defect"]["crack"]["pixel_auroc"] is not None
    assert result["per_defect"]["crack"]["aupro"] is not None


def test_evaluate_single_class_is_none():
    result = summary.summarize([1, 1], [0.3, 0.4], ["crack", "crack"], threshold=0.35)
    overall = result["overall"]
    assert overall["image_auroc"] is None
    assert overall["image_f1_max"] == 1.0 and overall["f1_threshold"] == 0.3
    assert overall["image_recall"] == 0.5 and overall["image_precision"] == 1.0
    result = summary.summarize([0, 0], [0.3, 0.4], ["good", "good"], threshold=1.0)
    assert result["per_defect"] == {}
    assert result["overall"]["image_f1_max"] is None and result["overall"]["image_precision"] is None


@pytest.mark.parametrize(
    "labels, types",
    [([0, 1], ["good", "good"]), ([0, 1], ["scratch", "crack"])],
)
def test_evaluate_rejects_types_that_contradict_labels(labels, types):
    with pytest.raises(ValueError, match=r"defect_types\[\d\] must be 'good'"):
        summary.summarize(labels, [0.1, 0.2], types)


def test_evaluate_rejects_mask_of_wrong_size():
    labels, scores, types, maps, masks = _dataset()
    bad = list(masks)
    bad[3] = np.zeros((5, 5), bool)
    with pytest.raises(ValueError, match=r"masks\[3\] must have the map size"):
        summary.summarize(labels, scores, types, maps=maps, masks=bad)
