"""The HTML tables of the evaluation report: model, verdicts at the threshold, metrics, thresholds, images.

Plain strings for :mod:`padim.report.html`; every text that comes from data (paths, defect types,
model names) is HTML-escaped here. Numbers come from :mod:`padim.eval.evaluation` and
:mod:`padim.eval.operating_points`.
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np

# The metrics table's columns: key of a summary (padim.eval.evaluation.summarize), and its header.
METRIC_COLUMNS = (
    ("n_images", "images"),
    ("image_auroc", "image AUROC"),
    ("pixel_auroc", "pixel AUROC"),
    ("aupro", "AUPRO (FPR ≤ 0.3)"),
    ("image_f1_max", "image F1-max"),
    ("image_accuracy", "accuracy @ threshold"),
    ("image_precision", "precision @ threshold"),
    ("image_recall", "recall @ threshold"),
    ("n_false_alarms", "false alarms"),
    ("n_missed", "misses"),
)


def fmt(value: Any, digits: int = 4) -> str:
    """A cell: – for None, ints as they are, floats to ``digits`` decimals, text escaped."""
    if value is None:
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.{digits}f}"
    return html.escape(str(value))


def _table(header: list[str] | None, rows: list[tuple[str, list[str]]], css: str = "") -> str:
    """``rows``: (row class, already-escaped cells); no header row for None."""
    head = "" if header is None else "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>\n"
    body = "\n".join(f'<tr class="{c}">' + "".join(f"<td>{x}</td>" for x in cells) + "</tr>" for c, cells in rows)
    return f'<table class="{css}">\n{head}{body}\n</table>'


def model_table(details: dict[str, Any]) -> str:
    """Two columns, what and value (``details`` in display order)."""
    rows = [("", [html.escape(str(k)), fmt(v)]) for k, v in details.items()]
    return _table(None, rows, "details")


def confusion_table(counts: dict[str, int]) -> str:
    """The 2 x 2 confusion matrix, actual class by verdict, mistakes highlighted."""
    tn, fp, fn, tp = (counts[k] for k in ("true_negatives", "false_alarms", "misses", "true_positives"))

    def wrong(text: str, count: int) -> str:
        return f'<span class="wrong-cell">{text}</span>' if count else text

    rows = [
        ("", ["good", f"{tn}", wrong(f"{fp} false alarm{'s' * (fp != 1)}", fp), f"{tn + fp}"]),
        ("", ["defective", wrong(f"{fn} miss{'es' * (fn != 1)}", fn), f"{tp}", f"{fn + tp}"]),
        ("total", ["total", f"{tn + fn}", f"{fp + tp}", f"{tn + fp + fn + tp}"]),
    ]
    return _table(["actual \\ verdict", "OK (called good)", "DEFECT (called defective)", "total"], rows, "confusion")


def metrics_table(result: dict[str, Any]) -> str:
    """Overall, then one row per defect type (counting that type's images only)."""
    rows = [("overall", ["overall", *(fmt(result["overall"].get(k)) for k, _ in METRIC_COLUMNS)])]
    for name, summary in result.get("per_defect", {}).items():
        rows.append(("", [html.escape(str(name)), *(fmt(summary.get(k)) for k, _ in METRIC_COLUMNS)]))
    return _table(["defect type", *(title for _, title in METRIC_COLUMNS)], rows, "metrics")


def thresholds_table(rows: list[dict[str, Any]]) -> str:
    """:func:`padim.eval.operating_points.threshold_table` rows; the model's row in bold."""

    def rate(count: int, share: float | None) -> str:
        return f"{count}" if share is None else f"{count} ({share:.1%})"

    cells = [
        (
            "overall" if row["name"] == "model" else "",
            [
                html.escape(row["name"]),
                fmt(row["threshold"]),
                rate(row["false_alarms"], row["false_alarm_rate"]),
                rate(row["misses"], row["miss_rate"]),
                fmt(row["precision"], 3),
                fmt(row["recall"], 3),
                fmt(row["f1"], 3),
            ],
        )  # fmt: skip
        for row in rows
    ]
    header = ["", "threshold", "false alarms", "misses", "precision", "recall", "F1"]
    return _table(header, cells, "thresholds")


def images_table(rows: list[dict[str, Any]]) -> str:
    """:func:`padim.eval.operating_points.image_rows`; wrong verdicts marked."""
    cells = []
    for row in rows:
        wrong = row["correct"] is False
        verdict = fmt(row["verdict"])
        if wrong:
            verdict += ' <span class="wrong">' + ("false alarm" if row["defect_type"] == "good" else "miss") + "</span>"
        cells.append(
            (
                "wrong-row" if wrong else "",
                [
                    f'<span class="path">{html.escape(row["path"])}</span>',
                    html.escape(row["defect_type"]),
                    fmt(row["score"]),
                    fmt(row["normalized_score"], 3),
                    verdict,
                    fmt(row["correct"]),
                ],
            )  # fmt: skip
        )
    return _table(["image", "defect type", "score", "normalised", "verdict", "right"], cells, "images")
