"""The HTML report: written, well-formed, holds the metrics, the SVG charts and the example images."""

from __future__ import annotations

import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest
from sklearn import metrics as skm

from padim.eval import metrics, operating_points, pro, summary
from padim.report import charts
from padim.report import html as report
from padim.report import overlays as visualize

_VOID = {"meta", "img", "br", "hr", "input", "link"}


class _PageParser(HTMLParser):
    """Collects text, tags and image sources, and checks that every tag is closed in order."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[str] = []
        self.images: list[str] = []
        self.svg_labels: list[str] = []
        self.text: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "svg":
            self.svg_labels.append(attrs.get("aria-label", ""))
        if tag not in _VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)  # <line/> and friends: opened and closed at once

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(f"unexpected </{tag}>")

    def handle_data(self, data):
        self.text.append(data)


def _data(with_curves: bool = True) -> report.ReportData:
    rng = np.random.default_rng(0)
    types = ["good"] * 6 + ["crack"] * 4 + ["hole & <dent>"] * 3
    labels = np.array([t != "good" for t in types])
    scores = rng.normal(size=len(types)) + labels
    masks = np.zeros((len(types), 8, 8), dtype=bool)
    masks[labels, 2:5, 2:5] = True
    maps = (rng.random(masks.shape) + masks).astype(np.float32)
    threshold = 0.5
    result = summary.summarize(labels, scores, types, maps=maps, masks=masks, threshold=threshold)
    paths = [f"images/{t}/{i:03d}.png" for i, t in enumerate(types)]
    paths[0] = "images/<script>alert(1)</script>.png"
    wrong = np.flatnonzero(labels != (scores >= threshold))
    images = rng.integers(0, 256, (len(types), 8, 8, 3), dtype=np.uint8)
    mistakes = {int(i): (images[i], images[i], visualize.overlay(images[i], maps[i], 0.0, 2.0)) for i in wrong}
    curves = {}
    if with_curves:
        curves = dict(pixel_roc=metrics.roc_curve(masks, maps)[:2], pro=pro.pro_curve(masks, maps)[:2])
    model = {"backbone": "resnet18 <random>", "trained on": "7 good images"}
    return report.ReportData(paths, labels, scores, types, result, threshold, mistakes, model=model, **curves)


def _parse(path) -> _PageParser:
    parser = _PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    return parser


def test_report_page_is_complete(tmp_path):
    data = _data()
    index = report.write_report(tmp_path / "out", data)
    assert index == tmp_path / "out" / "index.html"
    page = _parse(index)
    assert page.errors == [] and page.stack == []
    text = " ".join(page.text)
    overall = data.metrics["overall"]
    for key in ("image_auroc", "pixel_auroc", "aupro", "image_f1_max", "image_accuracy"):
        assert f"{overall[key]:.4f}" in text
    crack = data.metrics["per_defect"]["crack"]
    assert f"{crack['image_auroc']:.4f}" in text
    assert page.svg_labels == [
        "Image-level ROC",
        "Pixel-level ROC",
        "Per-region overlap (PRO)",
        "image score histogram",
    ]
    assert "threshold 0.5" in text and "resnet18 <random>" in text
    # Every mistake as original | ground truth | overlay, and nothing else.
    n_wrong = int((data.labels != (data.scores >= 0.5)).sum())
    assert n_wrong >= 2 and len(page.images) == 3 * n_wrong == 3 * len(data.mistakes)
    for src in page.images:
        assert (index.parent / src).is_file()
    assert sorted(p.name for p in index.parent.iterdir()) == sorted(["index.html", *page.images])


def test_report_tables_hold_the_counts(tmp_path):
    data = _data()
    page_text = report.write_report(tmp_path, data).read_text(encoding="utf-8")
    predicted = data.scores >= 0.5
    (tn, fp), (fn, tp) = skm.confusion_matrix(data.labels, predicted)
    confusion = page_text.split('<table class="confusion">')[1].split("</table>")[0]
    assert f"<td>{tn}</td>" in confusion and f"{fp} false alarm" in confusion and f"{fn} miss" in confusion
    images = page_text.split('<table class="images">')[1].split("</table>")[0]
    assert images.count("<tr") == 1 + len(data.labels)  # a header, then every image
    assert images.count("wrong-row") == fp + fn
    thresholds = page_text.split('<table class="thresholds">')[1].split("</table>")[0]
    for name in ("model", "F1-max", "100% recall"):
        assert f"<td>{name}</td>" in thresholds
    # A defect type's row counts its own images: 4 cracks, not 4 plus the 6 good ones.
    metrics_rows = page_text.split('<table class="metrics">')[1].split("</table>")[0].split("<tr")
    crack_row = [row for row in metrics_rows if "<td>crack</td>" in row][0]
    assert crack_row.split("<td>")[2].startswith("4<")


def test_report_escapes_text(tmp_path):
    data = _data()
    page_text = report.write_report(tmp_path, data).read_text(encoding="utf-8")
    page = _parse(tmp_path / "index.html")
    assert "script" not in page.tags
    assert "&lt;script&gt;" in page_text
    assert "hole &amp; &lt;dent&gt;" in page_text
    assert "hole & <dent>" in " ".join(page.text)


def test_report_without_curves_or_mistakes(tmp_path):
    data = _data(with_curves=False)
    data.mistakes = {}
    page = _parse(report.write_report(tmp_path, data))
    assert page.svg_labels == ["Image-level ROC", "image score histogram"]
    assert page.images == [] and "No false alarms and no misses" in " ".join(page.text)


def test_svg_roc_thins_long_curves():
    x = np.linspace(0, 1, 100_000) ** 3
    svg = charts.svg_roc("t", [("c", x, np.sqrt(x), "#000")])
    points = svg.split('points="')[1].split('"')[0].split()
    assert len(points) <= 402
    assert points[0] == "45.0,290.0" and points[-1] == "305.0,30.0"  # both ends kept


def test_pro_chart_ends_at_the_fpr_limit():
    fpr, pro = np.array([0.0, 0.1, 0.5, 1.0]), np.array([0.0, 0.6, 0.9, 1.0])
    svg = charts.svg_pro((fpr, pro), 0.5)
    points = svg.split('points="')[1].split('"')[0].split()
    # x = 0.3 is the right edge (305); PRO there is interpolated: 0.6 + 0.3 * 0.5 = 0.75.
    assert points[-1] == f"305.0,{30 + 0.25 * 260:.1f}" and "AUPRO 0.5000" in svg


def test_confusion_and_threshold_table_against_sklearn():
    rng = np.random.default_rng(3)
    labels = rng.random(60) < 0.4
    scores = rng.normal(size=60) + labels
    counts = operating_points.confusion(labels, scores, 0.3)
    (tn, fp), (fn, tp) = skm.confusion_matrix(labels, scores >= 0.3)
    assert counts == dict(true_negatives=tn, false_alarms=fp, misses=fn, true_positives=tp)
    rows = operating_points.threshold_table(labels, scores, 0.3)
    assert [r["threshold"] for r in rows] == sorted(r["threshold"] for r in rows)
    named = {r["name"]: r for r in rows if r["name"]}
    assert set(named) == {"model", "F1-max", "100% recall", "no false alarm"}
    assert named["100% recall"]["misses"] == 0 and named["no false alarm"]["false_alarms"] == 0
    # Nothing higher than the "100% recall" threshold misses nothing; nothing lower than "no false alarm" is clean.
    assert (scores[labels] >= named["100% recall"]["threshold"]).all()
    assert not (scores[~labels] >= named["no false alarm"]["threshold"]).any()
    assert (scores[~labels] >= scores[scores < named["no false alarm"]["threshold"]].max()).any()
    best = max(skm.f1_score(labels, scores >= t) for t in scores)
    assert named["F1-max"]["f1"] == pytest.approx(best)
    for row in rows:
        predicted = scores >= row["threshold"]
        assert row["recall"] == pytest.approx(skm.recall_score(labels, predicted))
        assert row["false_alarms"] == int((predicted & ~labels).sum())


def test_modules_import_neither_torch_nor_sklearn():
    code = (
        "import sys, padim.eval.metrics, padim.report.overlays, padim.report.html; "
        "print(sorted(m for m in ('torch', 'sklearn', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_histogram_caps_far_outliers_into_a_last_bin():
    from padim.report.charts import svg_histogram as _svg_histogram

    scores = np.array([1.0, 1.5, 2.0, 2.5, 3.0, 1000.0])
    labels = np.array([False, False, False, True, True, True])
    svg = _svg_histogram(scores, labels, threshold=2.0, bins=10)
    assert "&#8805;5" in svg  # the axis ends at threshold + 3 * (threshold - lowest) = 5
    # The outlier is drawn in the last bin: a defect bar whose left edge is the last bin's.
    assert 'x="423.0"' in svg and "defective: 1" in svg
    plain = _svg_histogram(scores[:-1], labels[:-1], threshold=2.0, bins=10)
    assert "&#8805;" not in plain


def test_threshold_table_has_no_duplicate_rows():
    rows = operating_points.threshold_table([0, 0, 1, 1], [1.0, 3.0, 2.0, 4.0], 2.5, n_even=5)
    unnamed = [r["threshold"] for r in rows if not r["name"]]
    named = {r["threshold"] for r in rows if r["name"]}
    assert unnamed and not set(unnamed) & named and len(unnamed) == len(set(unnamed))
