"""The score rules: the normalised score against a piecewise reference, torch = NumPy = the exported
graph; the region rule against a loop; the threshold rules against brute force; calibration records."""

import math

import numpy as np
import onnxruntime as ort
import pytest
import torch

from padim.eval import thresholds
from padim.graph.modules import OUTPUTS
from padim.io.images import list_images, load_image, preprocess
from padim.scoring import rules as scoring
from padim.scoring.calibration import PIXEL_QUANTILE, Calibration


def reference_normalize(score, t, s):
    """The documented rule, one number at a time, in Python floats."""
    if math.isnan(score):
        return math.nan
    x = (score - t) / s
    value = max(0.0, 0.5 + x / 2) if x < 0 else 0.5 + x / (2 * (1 + x))
    return min(value, 1 - 2**-24)


def test_normalize_matches_the_documented_rule_on_numpy_and_torch():
    scores = np.array([-5.0, 0.0, 3.0, 5.9, 6.0, 8.0, 10.0, 14.0, 26.0, 1e3, 1e9, np.nan])
    expected = [reference_normalize(float(v), 10.0, 4.0) for v in scores]
    np.testing.assert_allclose(scoring.normalize(scores, 10.0, 4.0), expected, rtol=1e-12, equal_nan=True)
    as_torch = scoring.normalize(torch.from_numpy(scores), torch.tensor(10.0), torch.tensor(4.0)).numpy()
    np.testing.assert_allclose(as_torch, expected, rtol=1e-12, equal_nan=True)


def test_normalize_keeps_ranking_above_the_threshold_and_stays_below_one():
    scores = np.geomspace(10.001, 1e6, 2000)  # from just above the threshold to 10**5 scales above it
    values = scoring.normalize(scores, 10.0, 4.0)
    assert (np.diff(values) > 0).all() and values.max() < 1.0 and values.min() > 0.5
    # The slope is continuous at the threshold: 1 / (2 s) on both sides.
    below, above = scoring.normalize(np.array([10 - 1e-6, 10 + 1e-6]), 10.0, 4.0) - 0.5
    assert below == pytest.approx(-above, rel=1e-5) and above == pytest.approx(1e-6 / 8, rel=1e-5)
    # In float32, as the graph computes it, the ceiling is the largest float32 below 1.
    far = scoring.normalize(np.array([1e30], np.float32), np.float32(10), np.float32(4))
    assert far.dtype == np.float32 and far[0] == np.float32(1 - 2**-24) < 1


def test_exported_graph_ranks_far_scores(mvtec_tree, tiny_onnx):
    """A scale much smaller than the scores' spread: the old rule made them all 1.0."""
    paths = [p for sub in ("good", "scratch", "spot") for p in list_images(mvtec_tree / "test" / sub)]
    batch = preprocess([load_image(p) for p in paths], 64)
    session = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    feeds = {"images": batch, "threshold": np.array(0.1, np.float32), "scale": np.array(0.01, np.float32)}
    out = dict(zip(OUTPUTS, session.run(list(OUTPUTS), feeds)))
    expected = [reference_normalize(float(s), 0.1, 0.01) for s in out["score"]]
    np.testing.assert_allclose(out["normalized_score"], expected, atol=1e-6)
    order = np.argsort(out["score"])
    assert (np.diff(out["normalized_score"][order]) > 0).all() and out["normalized_score"].max() < 1


def test_region_rule_against_a_loop():
    rng = np.random.default_rng(0)
    maps = rng.random((4, 5, 6))
    maps[1, 2, 3] = np.nan
    scores = np.array([0.95, np.nan, 0.5, 0.99])
    got = scoring.region(maps, scores, 0.9, 0.7)
    for n in range(4):
        flagged = not scores[n] < 0.9
        for i in range(5):
            for j in range(6):
                assert got[n, i, j] == (flagged and not maps[n, i, j] < 0.7)
    np.testing.assert_array_equal(
        scoring.region(torch.from_numpy(maps), torch.from_numpy(scores), 0.9, 0.7).numpy(), got
    )


def test_threshold_rules_against_brute_force():
    rng = np.random.default_rng(1)
    bad = np.round(rng.normal(size=17) * 3, 1)  # ties included
    for recall in (0.05, 0.3, 0.5, 0.77, 1.0):
        t = thresholds.threshold_for_recall(bad, recall)
        reaching = [c for c in bad if (bad >= c).mean() >= recall]
        assert t == max(reaching)
    good_pixels = rng.random((3, 20, 20))
    assert thresholds.pixel_threshold(good_pixels, 0.999) == np.quantile(good_pixels, 0.999)
    calibration = thresholds.from_normal_scores([1.0, 2.0, 3.0, 4.0], 0.5, good_pixels)
    assert calibration.threshold == 2.5 and calibration.center == 2.5 and calibration.good_scores == (1, 2, 3, 4)
    assert calibration.pixel_quantile == 0.999 and calibration.false_alarm_rate == 0.5
    with pytest.raises(ValueError, match="recall must be in"):
        thresholds.threshold_for_recall(bad, 0.0)


def test_calibration_records():
    c = thresholds.from_labelled_scores([1.0, 3.0, 2.0], [2.5, 6.0], recall=0.5, good_pixels=np.arange(10.0))
    assert c.source == "recall" and c.threshold == 6.0 and c.recall == 0.5
    assert Calibration(**c.to_dict()) == c  # what a model file stores reads back the same
    assert c.describe() == "highest threshold finding 50% of the defective images"
    manual = c.with_threshold(2.0)
    assert manual.source == "manual" and manual.recall is None and manual.good_scores == c.good_scores
    assert manual.false_alarm_rate == pytest.approx(2 / 3)
    # The regions' threshold never passes the image threshold: a flagged image always has a region.
    assert c.with_pixel_threshold(99.0).region_threshold == c.threshold
    assert Calibration(threshold=2.0, center=1.0).region_threshold == 2.0
    for bad in ({"threshold": math.nan, "center": 1.0}, {"threshold": 1.0, "center": 0.0, "source": "guess"}):
        with pytest.raises(ValueError):
            Calibration(**bad)


def test_fit_sets_the_pixel_threshold_from_the_held_out_maps(tiny_model, mvtec_tree):
    from padim.io.datasets import split_holdout, train_samples

    _, held = split_holdout(train_samples(mvtec_tree), tiny_model.holdout, tiny_model.seed)
    prediction = tiny_model.predict([s.path for s in held])
    calibration = tiny_model.calibration_
    assert calibration.pixel_quantile == PIXEL_QUANTILE
    expected = np.quantile(prediction.anomaly_map[:, ::2, ::2], PIXEL_QUANTILE)
    assert calibration.pixel_threshold == pytest.approx(expected, rel=1e-5)
    assert calibration.good_scores == pytest.approx(sorted(prediction.score), rel=1e-5)
