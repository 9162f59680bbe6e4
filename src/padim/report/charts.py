"""Inline SVG charts for the HTML report: ROC and PRO curves, and a score histogram with the threshold.

Plain strings, no script and no plotting library, so the report page stands alone.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np

_GOOD_COLOR = "#1f77b4"
_DEFECT_COLOR = "#d62728"


def _thin_curve(x: np.ndarray, y: np.ndarray, max_points: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Keep at most ``max_points`` points, evenly spaced along the curve's length.

    A pixel ROC has one point per distinct pixel score (millions); spacing by arc length,
    not by index, keeps the steep start where a few thresholds cover most of the height.
    """
    if len(x) <= max_points:
        return x, y
    length = np.concatenate(([0.0], np.cumsum(np.abs(np.diff(x)) + np.abs(np.diff(y)))))
    keep = np.searchsorted(length, np.linspace(0.0, length[-1], max_points))
    keep = np.unique(np.clip(np.concatenate(([0], keep, [len(x) - 1])), 0, len(x) - 1))
    return x[keep], y[keep]


def svg_roc(title: str, curves: Sequence[tuple[str, np.ndarray, np.ndarray, str]]) -> str:
    """An ROC chart: (label, fpr, tpr, colour) per curve, with a legend and the chance diagonal."""
    return svg_curves(title, curves, "false positive rate", "true positive rate")


def svg_pro(curve: tuple[np.ndarray, np.ndarray], aupro: float | None, fpr_limit: float = 0.3) -> str:
    """The PRO curve (Bergmann et al. 2021) up to ``fpr_limit``, the range AUPRO integrates.

    Args:
        curve: ``(fpr, pro)`` from :func:`padim.eval.pro.pro_curve`, fpr non-decreasing.
        aupro: the normalised area, shown in the legend (None: left out).
        fpr_limit: the x axis ends here; the curve is cut (interpolated) at it.
    """
    fpr, pro = (np.asarray(a, dtype=np.float64) for a in curve)
    keep = fpr <= fpr_limit
    x = np.append(fpr[keep], fpr_limit)
    y = np.append(pro[keep], np.interp(fpr_limit, fpr, pro))
    label = "all defect regions" + ("" if aupro is None else f" (AUPRO {aupro:.4f})")
    return svg_curves(
        "Per-region overlap (PRO)",
        [(label, x / fpr_limit, y, "#000000")],
        f"false positive rate (0 to {fpr_limit:g})",
        "mean overlap per defect region",
        x_ticks=(0.0, fpr_limit / 2, fpr_limit),
        diagonal=False,
    )


def svg_curves(
    title: str,
    curves: Sequence[tuple[str, np.ndarray, np.ndarray, str]],
    x_label: str,
    y_label: str,
    *,
    x_ticks: Sequence[float] = (0.0, 0.5, 1.0),
    diagonal: bool = True,
) -> str:
    """Curves on the unit square: (label, x, y, colour) per curve, with a legend.

    ``x_ticks`` label the left end, the middle and the right end of the x axis.
    """
    size, left, top = 260, 45, 30
    legend_height = 16 * len(curves)
    width, height = left + size + 15, top + size + 40 + legend_height

    def px(x: float, y: float) -> str:
        return f"{left + x * size:.1f},{top + (1.0 - y) * size:.1f}"

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">',
        f'<text x="{left}" y="18" font-weight="bold">{html.escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{size}" height="{size}" fill="none" stroke="#999"/>',
    ]
    if diagonal:
        parts.append(
            f'<line x1="{left}" y1="{top + size}" x2="{left + size}" y2="{top}" stroke="#bbb" stroke-dasharray="4 3"/>'
        )
    for k, tick in enumerate((0.0, 0.5, 1.0)):
        parts.append(
            f'<text x="{left + tick * size:.1f}" y="{top + size + 14}" text-anchor="middle">{x_ticks[k]:g}</text>'
        )
        parts.append(f'<text x="{left - 5}" y="{top + (1 - tick) * size + 4:.1f}" text-anchor="end">{tick:g}</text>')
    parts.append(
        f'<text x="{left + size / 2}" y="{top + size + 30}" text-anchor="middle">{html.escape(x_label)}</text>'
    )
    parts.append(
        f'<text x="12" y="{top + size / 2}" text-anchor="middle" '
        f'transform="rotate(-90 12 {top + size / 2})">{html.escape(y_label)}</text>'
    )
    for i, (label, x, y, color) in enumerate(curves):
        x, y = _thin_curve(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
        points = " ".join(px(a, b) for a, b in zip(x, y))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="2"/>')
        y_text = top + size + 48 + 16 * i
        parts.append(
            f'<line x1="{left}" y1="{y_text - 4}" x2="{left + 20}" y2="{y_text - 4}" stroke="{color}" stroke-width="3"/>'
        )
        parts.append(f'<text x="{left + 26}" y="{y_text}">{html.escape(label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def svg_histogram(scores: np.ndarray, labels: np.ndarray, threshold: float, bins: int = 30) -> str:
    """Score histogram of good and defective images, overlaid, with the threshold as a dashed line."""
    low = min(float(scores.min()), threshold)
    high = max(float(scores.max()), threshold)
    # A few very high scores would squash the region around the threshold, where decisions
    # are made: cap the axis and gather the scores beyond it in the last bin, marked ">=".
    cap = threshold + 3 * (threshold - low)
    capped = high > cap > low
    if capped:
        high = cap
    if high == low:
        low, high = low - 0.5, high + 0.5
    edges = np.linspace(low, high, bins + 1)
    shown = np.minimum(scores, high)
    good_counts, _ = np.histogram(shown[~labels], bins=edges)
    defect_counts, _ = np.histogram(shown[labels], bins=edges)
    top_count = max(int(good_counts.max(initial=0)), int(defect_counts.max(initial=0)), 1)
    plot_width, plot_height, left, top = 420, 200, 45, 30
    width, height = left + plot_width + 20, top + plot_height + 60
    bar = plot_width / bins

    def x_of(score: float) -> float:
        return left + (score - low) / (high - low) * plot_width

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="image score histogram">',
        f'<text x="{left}" y="12" font-weight="bold">Image scores</text>',
        f'<rect x="{left}" y="{top}" width="{plot_width}" height="{plot_height}" fill="none" stroke="#999"/>',
    ]
    for counts, color, name in ((good_counts, _GOOD_COLOR, "good"), (defect_counts, _DEFECT_COLOR, "defective")):
        for i, count in enumerate(counts):
            if count == 0:
                continue
            h = count / top_count * plot_height
            parts.append(
                f'<rect x="{left + i * bar:.1f}" y="{top + plot_height - h:.1f}" width="{bar:.1f}" '
                f'height="{h:.1f}" fill="{color}" fill-opacity="0.55"><title>{name}: {int(count)}</title></rect>'
            )
    for k, tick in enumerate(np.linspace(low, high, 5)):
        label = f"&#8805;{tick:.3g}" if capped and k == 4 else f"{tick:.3g}"
        parts.append(f'<text x="{x_of(tick):.1f}" y="{top + plot_height + 14}" text-anchor="middle">{label}</text>')
    parts.append(f'<text x="{left - 5}" y="{top + 4}" text-anchor="end">{top_count}</text>')
    parts.append(f'<text x="{left - 5}" y="{top + plot_height}" text-anchor="end">0</text>')
    x = x_of(threshold)
    parts.append(
        f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_height}" stroke="#000" '
        f'stroke-width="1.5" stroke-dasharray="5 3"/>'
    )
    # Anchor the label inwards near either edge, so that it stays inside the picture.
    anchor = "start" if x < left + 0.2 * plot_width else "end" if x > left + 0.8 * plot_width else "middle"
    parts.append(f'<text x="{x:.1f}" y="{top - 4}" text-anchor="{anchor}">threshold {threshold:.4g}</text>')
    legend_y = top + plot_height + 40
    parts.append(
        f'<rect x="{left}" y="{legend_y - 10}" width="12" height="12" fill="{_GOOD_COLOR}" fill-opacity="0.55"/>'
    )
    parts.append(f'<text x="{left + 18}" y="{legend_y}">good ({int((~labels).sum())})</text>')
    parts.append(
        f'<rect x="{left + 120}" y="{legend_y - 10}" width="12" height="12" fill="{_DEFECT_COLOR}" fill-opacity="0.55"/>'
    )
    parts.append(f'<text x="{left + 138}" y="{legend_y}">defective ({int(labels.sum())})</text>')
    parts.append("</svg>")
    return "\n".join(parts)
