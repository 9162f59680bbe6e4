"""The HTML report: written, well-formed, holds the metrics, the SVG charts and the example images."""

from __future__ import annotations

import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest

from padim import charts, evaluation, metrics, report, visualize

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


def _data(with_pixel_roc: bool = True) -> report.ReportData:
    rng = np.random.default_rng(0)
    types = ["good"] * 6 + ["crack"] * 4 + ["hole & <dent>"] * 3
    labels = np.array([t != "good" for t in types])
    scores = rng.normal(size=len(types)) + labels
    masks = np.zeros((len(types), 8, 8), dtype=bool)
    masks[labels, 2:5, 2:5] = True
    maps = (rng.random(masks.shape) + masks).astype(np.float32)
    threshold = 0.5
    result = evaluation.summarize(labels, scores, types, maps=maps, masks=masks, threshold=threshold)
    paths = [f"images/{t}/{i:03d}.png" for i, t in enumerate(types)]
    paths[0] = "images/<script>alert(1)</script>.png"
    picks = report.worst_examples(labels, scores, threshold, k=4)
    images = rng.integers(0, 256, (len(types), 8, 8, 3), dtype=np.uint8)
    overlays = {i: visualize.overlay(images[i], maps[i], 0.0, 2.0, region=maps[i] > 1.2) for i in picks}
    pixel_roc = metrics.roc_curve(masks, maps)[:2] if with_pixel_roc else None
    return report.ReportData(paths, labels, scores, types, result, threshold, overlays, pixel_roc=pixel_roc)


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
    assert page.svg_labels == ["Image-level ROC", "Pixel-level ROC", "image score histogram"]
    assert "threshold 0.5" in text
    assert len(page.images) == len(data.overlays) == 4
    for src in page.images:
        assert (index.parent / src).is_file()
    # Only the page and the overlays, no temporary files.
    assert sorted(p.name for p in index.parent.iterdir()) == sorted(["index.html", *page.images])


def test_report_escapes_text(tmp_path):
    data = _data()
    data.overlays = {0: np.zeros((4, 4, 3), np.uint8)}
    page_text = report.write_report(tmp_path, data).read_text(encoding="utf-8")
    page = _parse(tmp_path / "index.html")
    assert "script" not in page.tags
    assert "&lt;script&gt;" in page_text
    assert "hole &amp; &lt;dent&gt;" in page_text
    assert "hole & <dent>" in " ".join(page.text)


def test_report_without_pixel_roc_or_examples(tmp_path):
    data = _data(with_pixel_roc=False)
    data.overlays = {}
    page = _parse(report.write_report(tmp_path, data))
    assert page.svg_labels == ["Image-level ROC", "image score histogram"]
    assert page.images == []


def test_svg_roc_thins_long_curves():
    x = np.linspace(0, 1, 100_000) ** 3
    svg = charts.svg_roc("t", [("c", x, np.sqrt(x), "#000")])
    points = svg.split('points="')[1].split('"')[0].split()
    assert len(points) <= 402
    assert points[0] == "45.0,290.0" and points[-1] == "305.0,30.0"  # both ends kept


def test_worst_examples_balances_classes_and_orders_by_error():
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.9, 0.6, 0.3, 0.2, 0.95, 0.4])
    picks = report.worst_examples(labels, scores, threshold=0.5, k=4)
    # Good 0.9 (0.4 over), defective 0.2 (0.3 under), defective 0.4, good 0.6.
    assert picks == [1, 4, 6, 2]
    # Too few defective images: good ones fill the rest.
    assert sorted(report.worst_examples(labels, scores, 0.5, k=7)) == list(range(7))
    assert report.worst_examples([0, 0, 0], [0.3, 0.2, 0.1], 0.5, k=2) == [0, 1]
    assert report.worst_examples(labels, scores, 0.5, k=0) == []


def test_worst_examples_rejects_bad_k():
    with pytest.raises(ValueError, match="k must be"):
        report.worst_examples([0, 1], [0.1, 0.2], 0.5, k=-1)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"scores": np.zeros(3)}, "scores must be"),
        ({"paths": ["a"]}, "paths must have"),
        ({"overlays": {99: np.zeros((2, 2, 3), np.uint8)}}, "overlays keys"),
        ({"overlays": {0: np.zeros((2, 2), np.uint8)}}, r"overlays\[0\]"),
        ({"threshold": float("nan")}, "threshold must be"),
    ],
)
def test_report_data_validates(change, match):
    arguments = {
        "paths": ["a", "b"],
        "labels": np.array([0, 1]),
        "scores": np.array([0.1, 0.9]),
        "defect_types": ["good", "crack"],
        "metrics": {},
        "threshold": 0.5,
    }
    arguments.update(change)
    with pytest.raises(ValueError, match=match):
        report.ReportData(**arguments)


def test_modules_import_neither_torch_nor_sklearn():
    code = (
        "import sys, padim.metrics, padim.visualize, padim.report; "
        "print(sorted(m for m in ('torch', 'sklearn', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_histogram_caps_far_outliers_into_a_last_bin():
    from padim.charts import svg_histogram as _svg_histogram

    scores = np.array([1.0, 1.5, 2.0, 2.5, 3.0, 1000.0])
    labels = np.array([False, False, False, True, True, True])
    svg = _svg_histogram(scores, labels, threshold=2.0, bins=10)
    assert "&#8805;5" in svg  # the axis ends at threshold + 3 * (threshold - lowest) = 5
    # The outlier is drawn in the last bin: a defect bar whose left edge is the last bin's.
    assert 'x="423.0"' in svg and "defective: 1" in svg
    plain = _svg_histogram(scores[:-1], labels[:-1], threshold=2.0, bins=10)
    assert "&#8805;" not in plain
