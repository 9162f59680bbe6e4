"""A self-contained HTML report of one evaluation: metrics, ROC curves, score histogram, worst examples.

``write_report`` writes ``index.html`` with the metrics table of :func:`padim.metrics.evaluate`
(overall and per defect type), the image-level ROC curves (and the pixel-level one when
given) and a histogram of image scores for good and defective images with the decision
threshold marked, all as inline SVG, so the page needs no script, style sheet or network.
Beside it go PNG overlays of the worst-scored examples (:func:`worst_examples`): defective
images that scored lowest and good images that scored highest, the mistakes of PaDiM
(Defard et al. 2020, https://arxiv.org/abs/2011.08785) one wants to look at first. Every
file is written atomically, the page last, so it never links to a missing picture. All
text from the data (paths, defect types) is HTML-escaped.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from padim import metrics as padim_metrics
from padim.charts import svg_histogram, svg_roc
from padim.files import write_text
from padim.visualize import save_png

# The table's columns: key of an evaluate() summary, and its header.
_COLUMNS = (
    ("n_images", "images"),
    ("image_auroc", "image AUROC"),
    ("pixel_auroc", "pixel AUROC"),
    ("aupro", "AUPRO (FPR ≤ 0.3)"),
    ("image_f1_max", "image F1-max"),
    ("f1_threshold", "F1-max threshold"),
    ("image_accuracy", "accuracy @ threshold"),
    ("image_precision", "precision @ threshold"),
    ("image_recall", "recall @ threshold"),
)

# Matplotlib's "tab10": distinct for the per-defect ROC curves.
_PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.overall { font-weight: bold; background: #f4f4f4; }
.charts { display: flex; flex-wrap: wrap; gap: 2em; }
.examples { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; max-width: 260px; }
figure img { width: 256px; image-rendering: pixelated; border: 1px solid #ccc; }
figcaption { font-size: 0.85em; word-break: break-all; }
.wrong { color: #b00; font-weight: bold; }
svg text { font-size: 11px; font-family: system-ui, sans-serif; }
"""


@dataclass
class ReportData:
    """What :func:`write_report` draws.

    Attributes:
        paths: N image paths (shown as captions).
        labels: (N,) 1/True for defective images, 0/False for good.
        scores: (N,) image anomaly scores, higher = more anomalous.
        defect_types: N defect type names, ``"good"`` for good images.
        metrics: the dict returned by :func:`padim.metrics.evaluate`.
        threshold: the image decision threshold (``score >= threshold`` is defective).
        overlays: image index -> (H, W, 3) uint8 overlay, for the examples to show, in the
            order to show them (usually the indices of :func:`worst_examples`).
        pixel_roc: optional pixel-level ``(fpr, tpr)`` from :func:`padim.metrics.roc_curve`;
            the page computes the image-level curves itself but never holds all maps.
        title: the page title.

    Raises:
        ValueError: if lengths disagree, labels are not 0/1, scores or threshold are not
            finite, or an overlay index or array is invalid.
    """

    paths: list[str]
    labels: np.ndarray
    scores: np.ndarray
    defect_types: list[str]
    metrics: dict[str, Any]
    threshold: float
    overlays: dict[int, np.ndarray] = field(default_factory=dict)
    pixel_roc: tuple[np.ndarray, np.ndarray] | None = None
    title: str = "PaDiM anomaly detection report"

    def __post_init__(self) -> None:
        self.labels = _as_labels(self.labels)
        n = self.labels.size
        self.scores = np.asarray(self.scores, dtype=np.float64)
        if self.scores.shape != (n,) or not np.isfinite(self.scores).all():
            raise ValueError(f"scores must be {n} finite numbers, got shape {self.scores.shape}")
        self.paths = [str(p) for p in self.paths]
        self.defect_types = [str(t) for t in self.defect_types]
        for name in ("paths", "defect_types"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} must have N = {n} entries, got {len(getattr(self, name))}")
        if not np.isfinite(self.threshold):
            raise ValueError(f"threshold must be a finite number, got {self.threshold!r}")
        for index, image in self.overlays.items():
            if not (isinstance(index, (int, np.integer)) and 0 <= index < n):
                raise ValueError(f"overlays keys must be image indices in [0, {n}), got {index!r}")
            image = np.asarray(image)
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"overlays[{index}] must be an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
        if self.pixel_roc is not None:
            fpr, tpr = (np.asarray(a, dtype=np.float64) for a in self.pixel_roc)
            if fpr.ndim != 1 or fpr.shape != tpr.shape:
                raise ValueError(f"pixel_roc must be (fpr, tpr) of one length, got shapes {fpr.shape}, {tpr.shape}")
            self.pixel_roc = (fpr, tpr)


def _as_labels(labels: Any) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 1 or not np.isin(array, (0, 1)).all():
        raise ValueError(f"labels must be (N,) of 0/1 or bool, got shape {array.shape}")
    return array.astype(bool)


def worst_examples(labels: Any, scores: Any, threshold: float, k: int = 8) -> list[int]:
    """Pick the examples a report should show: the worst-scored of each class.

    Half of them (rounded up) are the defective images with the lowest scores and half the
    good images with the highest; when one class has too few images, the other fills the
    rest. They are returned most wrong first, by distance to the threshold on the wrong
    side (``threshold - score`` for defective images, ``score - threshold`` for good ones),
    so the mistakes, if any, come first.

    Args:
        labels: (N,) 1/True for defective images, 0/False for good.
        scores: (N,) image anomaly scores.
        threshold: the decision threshold.
        k: how many examples at most.

    Returns:
        Up to ``k`` image indices (Python ints).

    Raises:
        ValueError: if ``k`` is negative or the arrays disagree.

    >>> worst_examples([0, 0, 1, 1, 1], [0.1, 0.9, 0.2, 0.8, 0.7], threshold=0.5, k=2)
    [1, 2]
    """
    labels = _as_labels(labels)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != labels.shape:
        raise ValueError(f"scores must have the shape of labels {labels.shape}, got {scores.shape}")
    if not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k must be a non-negative int, got {k!r}")
    # Wrong-side distance: large when a defective image scores low or a good one high.
    margin = np.where(labels, threshold - scores, scores - threshold)
    defective = np.flatnonzero(labels)
    good = np.flatnonzero(~labels)
    # Stable sorts: equal scores keep index order, so the choice is reproducible.
    defective = defective[np.argsort(-margin[defective], kind="stable")]
    good = good[np.argsort(-margin[good], kind="stable")]
    n_defective = min(len(defective), k - min(len(good), k // 2))
    n_good = min(len(good), k - n_defective)
    chosen = np.concatenate((defective[:n_defective], good[:n_good]))
    chosen = chosen[np.argsort(-margin[chosen], kind="stable")]
    return [int(i) for i in chosen]


def _format(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4f}"
    return html.escape(str(value))


def _metrics_table(result: dict[str, Any]) -> str:
    rows = [("overall", result.get("overall", {}))]
    rows += list(result.get("per_defect", {}).items())
    header = "".join(f"<th>{html.escape(title)}</th>" for _, title in _COLUMNS)
    lines = [f"<table>\n<tr><th>defect type</th>{header}</tr>"]
    for name, summary in rows:
        cells = "".join(f"<td>{_format(summary.get(key))}</td>" for key, _ in _COLUMNS)
        css = ' class="overall"' if name == "overall" else ""
        lines.append(f"<tr{css}><td>{html.escape(str(name))}</td>{cells}</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _image_roc_curves(data: ReportData) -> list[tuple[str, np.ndarray, np.ndarray, str]]:
    """Overall and per-defect image ROC curves; a group with a single class is left out."""
    labels, scores = data.labels, data.scores
    curves = []
    if labels.any() and not labels.all():
        fpr, tpr, _ = padim_metrics.roc_curve(labels, scores)
        curves.append((f"all (AUROC {padim_metrics.auroc(labels, scores):.4f})", fpr, tpr, "#000000"))
        types = np.array(data.defect_types, dtype=object)
        for i, defect in enumerate(sorted(set(types[labels].tolist()))):
            select = ~labels | (types == defect)
            fpr, tpr, _ = padim_metrics.roc_curve(labels[select], scores[select])
            area = padim_metrics.auroc(labels[select], scores[select])
            curves.append((f"{defect} (AUROC {area:.4f})", fpr, tpr, _PALETTE[i % len(_PALETTE)]))
    return curves


def _example_name(index: int) -> str:
    return f"example_{index:05d}.png"


def _examples(data: ReportData) -> str:
    figures = []
    for index in data.overlays:
        index = int(index)
        defective = bool(data.labels[index])
        score = float(data.scores[index])
        called_defective = score >= data.threshold
        if defective and not called_defective:
            verdict = '<span class="wrong">missed defect</span>'
        elif not defective and called_defective:
            verdict = '<span class="wrong">false alarm</span>'
        else:
            verdict = "correct"
        path = html.escape(data.paths[index])
        figures.append(
            f'<figure><img src="{_example_name(index)}" alt="overlay of {path}">'
            f"<figcaption>{path}<br>{html.escape(data.defect_types[index])}, score {score:.4f}, "
            f"{verdict}</figcaption></figure>"
        )
    if not figures:
        return "<p>No examples.</p>"
    return '<div class="examples">\n' + "\n".join(figures) + "\n</div>"


def write_report(directory: str | os.PathLike, data: ReportData) -> Path:
    """Write ``index.html`` and the example overlays ``example_NNNNN.png`` into ``directory``.

    Overlays are written first and the page last, each atomically, so an interrupted run
    leaves either the previous page or a complete new one. Overlay files of earlier runs
    that this page no longer shows are left in place.

    Args:
        directory: output folder, created if missing.
        data: what to show.

    Returns:
        The path of ``index.html``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for index, image in data.overlays.items():
        save_png(directory / _example_name(int(index)), np.asarray(image))

    labels = data.labels
    charts = []
    curves = _image_roc_curves(data)
    if curves:
        charts.append(svg_roc("Image-level ROC", curves))
    if data.pixel_roc is not None:
        pixel_auroc = data.metrics.get("overall", {}).get("pixel_auroc")
        label = "all pixels" if pixel_auroc is None else f"all pixels (AUROC {pixel_auroc:.4f})"
        charts.append(svg_roc("Pixel-level ROC", [(label, *data.pixel_roc, "#000000")]))
    charts.append(svg_histogram(data.scores, labels, float(data.threshold)))

    title = html.escape(data.title)
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>{title}</h1>
<p>{labels.size} images: {int((~labels).sum())} good, {int(labels.sum())} defective.
Threshold {data.threshold:.4f}: an image is called defective when its score is at or above it.</p>
<h2>Metrics</h2>
{_metrics_table(data.metrics)}
<h2>Curves</h2>
<div class="charts">
{chr(10).join(charts)}
</div>
<h2>Worst-scored examples</h2>
<p>Defective images with the lowest scores and good images with the highest, most wrong first.</p>
{_examples(data)}
</body>
</html>
"""
    index_path = directory / "index.html"
    write_text(index_path, page)
    return index_path


def write_evaluation_report(evaluation: Any, calibration: Any, directory: str | os.PathLike) -> Path:
    """The HTML report of an :class:`padim.evaluation.Evaluation`, with overlays of the worst-scored images.

    Args:
        evaluation: what :func:`padim.evaluation.evaluate_model` measured.
        calibration: the model's :class:`padim.scoring.Calibration`, or None (the report then
            marks the F1-best split of this test set).
        directory: output folder.
    """
    from padim.images import load_image
    from padim.visualize import heatmap_range, overlay_at_image_size

    labels, scores, maps = evaluation.labels, evaluation.scores, evaluation.maps
    if calibration is not None:
        threshold = calibration.threshold
    else:
        threshold = float(evaluation.metrics["overall"]["f1_threshold"] or scores.max())
    vmin, vmax = heatmap_range(calibration, maps)
    overlays = {
        i: overlay_at_image_size(load_image(evaluation.samples[i].path), maps[i], calibration, vmin, vmax, max_side=512)
        for i in worst_examples(labels, scores, threshold, k=8)
    }
    pixel_roc = None
    if all(m is not None for m in evaluation.masks) and labels.any():
        masks = np.stack(evaluation.masks)
        if masks.any() and not masks.all():
            pixel_roc = tuple(padim_metrics.roc_curve(masks.ravel(), maps.ravel())[:2])
    data = ReportData(
        paths=[str(s.path) for s in evaluation.samples],
        labels=labels,
        scores=scores,
        defect_types=[s.defect_type for s in evaluation.samples],
        metrics=evaluation.metrics,
        threshold=threshold,
        overlays=overlays,
        pixel_roc=pixel_roc,
    )
    return write_report(directory, data)
