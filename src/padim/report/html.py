"""A self-contained HTML report of one evaluation: the model, its verdicts, its mistakes, its curves.

``write_report`` writes ``index.html``: the model's details; the confusion matrix at its
threshold; the metrics of :func:`padim.eval.evaluation.summarize` (overall, and per defect type
counting that type's images); false alarms and misses at several thresholds, the F1-max one
and the highest that misses nothing among them (:mod:`padim.eval.operating_points`); the image ROC
curves, the pixel ROC and the PRO curve (MVTec AD's localisation measure, Bergmann et al.
2021) and the score histogram, as inline SVG (:mod:`padim.report.charts`); every false alarm and
every miss of PaDiM (Defard et al. 2020, https://arxiv.org/abs/2011.08785) as original |
ground truth | overlay; and a table of every image with its score and verdict. The page
needs no script, style sheet or network. Pictures are written first, each atomically, and the
page last, so it never links to a missing picture. Text from the data is HTML-escaped.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from padim.eval import metrics as padim_metrics
from padim.eval.operating_points import confusion, image_rows, threshold_table
from padim.io.files import write_text
from padim.io.pictures import save_png
from padim.report import tables
from padim.report.charts import svg_histogram, svg_pro, svg_roc

# Matplotlib's "tab10": distinct for the per-defect ROC curves.
_PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip
#: The mistakes' pictures: longest side in pixels.
PICTURE_SIDE = 384

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 110em; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; vertical-align: top; }
th:first-child, td:first-child { text-align: left; }
table.details td:last-child, table.images td:nth-child(2) { text-align: left; }
tr.overall { font-weight: bold; background: #f4f4f4; }
tr.wrong-row { background: #fdecea; }
.charts { display: flex; flex-wrap: wrap; gap: 2em; }
.mistake { display: flex; flex-wrap: wrap; gap: 0.8em; margin: 1.2em 0; align-items: flex-start; }
figure { margin: 0; }
figure img { width: 300px; border: 1px solid #ccc; }
figcaption { font-size: 0.85em; max-width: 300px; }
.caption { flex-basis: 100%; font-size: 0.95em; }
.path { overflow-wrap: anywhere; }
.wrong, .wrong-cell { color: #b00; font-weight: bold; white-space: nowrap; }
svg text { font-size: 11px; font-family: system-ui, sans-serif; }
"""


@dataclass
class ReportData:
    """What :func:`write_report` draws.

    Attributes:
        paths: N image paths.
        labels: (N,) 1/True for defective images, 0/False for good.
        scores: (N,) image anomaly scores, higher = more anomalous.
        defect_types: N defect type names, ``"good"`` for good images.
        metrics: the dict returned by :func:`padim.eval.evaluation.summarize`.
        threshold: the image decision threshold (``score >= threshold`` is defective).
        mistakes: image index -> (original, ground truth, overlay) pictures, each (H, W, 3)
            uint8, for the false alarms and misses (see :func:`mistake_pictures`).
        normalized: optional (N,) normalised scores.
        pixel_roc: optional pixel-level ``(fpr, tpr)`` from :func:`padim.eval.metrics.roc_curve`.
        pro: optional ``(fpr, pro)`` from :func:`padim.eval.pro.pro_curve`.
        model: what the model is, label -> value, in display order (empty: no section).
        threshold_note: how the threshold was set, in words.
        title: the page title.

    Raises:
        ValueError: if lengths disagree, labels are not 0/1, scores or threshold are not
            finite, or a picture index or array is invalid.
    """

    paths: list[str]
    labels: np.ndarray
    scores: np.ndarray
    defect_types: list[str]
    metrics: dict[str, Any]
    threshold: float
    mistakes: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    normalized: np.ndarray | None = None
    pixel_roc: tuple[np.ndarray, np.ndarray] | None = None
    pro: tuple[np.ndarray, np.ndarray] | None = None
    model: dict[str, Any] = field(default_factory=dict)
    threshold_note: str = ""
    title: str = "PaDiM anomaly detection report"

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels)
        if labels.ndim != 1 or not np.isin(labels, (0, 1)).all():
            raise ValueError(f"labels must be (N,) of 0/1 or bool, got shape {labels.shape}")
        self.labels, n = labels.astype(bool), labels.size
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
        for index, pictures in self.mistakes.items():
            if not (isinstance(index, (int, np.integer)) and 0 <= index < n):
                raise ValueError(f"mistakes keys must be image indices in [0, {n}), got {index!r}")
            shapes = [(np.asarray(p).dtype, np.asarray(p).shape) for p in pictures]
            if len(shapes) != 3 or any(d != np.uint8 or len(s) != 3 or s[2] != 3 for d, s in shapes):
                raise ValueError(f"mistakes[{index}] must be three (H, W, 3) uint8 pictures, got {shapes}")


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


def _picture_names(index: int) -> tuple[str, str, str]:
    return tuple(f"{kind}_{index:05d}.png" for kind in ("original", "truth", "overlay"))


def _mistakes(data: ReportData) -> str:
    """Every false alarm and miss, worst first: original | ground truth | overlay, with a caption."""
    if not data.mistakes:
        return "<p>No false alarms and no misses at this threshold.</p>"
    margin = {i: abs(data.scores[i] - data.threshold) for i in data.mistakes}
    blocks = []
    for index in sorted(data.mistakes, key=lambda i: (-margin[i], i)):
        miss = bool(data.labels[index])
        kind = "miss" if miss else "false alarm"
        side = "below" if miss else "at or above"
        path, defect = html.escape(data.paths[index]), html.escape(data.defect_types[index])
        names = _picture_names(index)
        truth = "ground truth: the defect outlined" if miss else "ground truth: no defect"
        captions = ("original", truth, "heatmap and predicted regions")
        figures = "".join(
            f'<figure><img src="{name}" alt="{caption} of {path}"><figcaption>{caption}</figcaption></figure>'
            for name, caption in zip(names, captions)
        )
        blocks.append(
            f'<div class="mistake"><div class="caption"><span class="wrong">{kind}</span> '
            f'<span class="path">{path}</span> ({defect}): score {data.scores[index]:.4f}, {side} the '
            f"threshold {data.threshold:.4f}</div>{figures}</div>"
        )
    return "\n".join(blocks)


def write_report(directory: str | os.PathLike, data: ReportData) -> Path:
    """Write ``index.html`` and the mistakes' pictures into ``directory`` (created if missing).

    Pictures are written first and the page last, each atomically, so an interrupted run
    leaves either the previous page or a complete new one. Pictures of earlier runs that this
    page no longer shows are left in place.

    Returns:
        The path of ``index.html``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for index, pictures in data.mistakes.items():
        for name, picture in zip(_picture_names(int(index)), pictures):
            save_png(directory / name, np.asarray(picture))

    labels, threshold = data.labels, float(data.threshold)
    charts = []
    curves = _image_roc_curves(data)
    if curves:
        charts.append(svg_roc("Image-level ROC", curves))
    if data.pixel_roc is not None:
        pixel_auroc = data.metrics.get("overall", {}).get("pixel_auroc")
        label = "all pixels" if pixel_auroc is None else f"all pixels (AUROC {pixel_auroc:.4f})"
        charts.append(svg_roc("Pixel-level ROC", [(label, *data.pixel_roc, "#000000")]))
    if data.pro is not None:
        charts.append(svg_pro(data.pro, data.metrics.get("overall", {}).get("aupro")))
    charts.append(svg_histogram(data.scores, labels, threshold))
    counts = confusion(labels, data.scores, threshold)
    rows = image_rows(data.paths, data.defect_types, data.scores, threshold, data.normalized)
    note = f" ({html.escape(data.threshold_note)})" if data.threshold_note else ""
    title = html.escape(data.title)
    model = f"<h2>Model</h2>\n{tables.model_table(data.model)}" if data.model else ""
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
Threshold {threshold:.4f}{note}: an image is called defective when its score is at or above it.
{counts["false_alarms"]} false alarm(s) and {counts["misses"]} miss(es).</p>
{model}
<h2>Verdicts at the threshold</h2>
{tables.confusion_table(counts)}
<h2>Metrics</h2>
<p>A defect type's row counts that type's images only; its AUROC, F1-max and pixel metrics compare them
with all {int((~labels).sum())} good images.</p>
{tables.metrics_table(data.metrics)}
<h2>Other thresholds</h2>
<p>False alarms (good images called defective) and misses (defective images called good) if the
threshold were set elsewhere: F1-max balances the two; "100% recall" is the highest threshold that misses
no defective image here; "no false alarm" the lowest that flags no good image.
Set one with <code>padim calibrate MODEL --threshold T</code>.</p>
{tables.thresholds_table(threshold_table(labels, data.scores, threshold))}
<h2>Curves</h2>
<div class="charts">
{chr(10).join(charts)}
</div>
<h2>Every false alarm and every miss</h2>
{_mistakes(data)}
<h2>Every image</h2>
{tables.images_table(rows)}
</body>
</html>
"""
    index_path = directory / "index.html"
    write_text(index_path, page)
    return index_path
