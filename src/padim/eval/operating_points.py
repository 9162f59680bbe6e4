"""What a threshold does on a labelled test set: the confusion matrix, a table of thresholds, each image's verdict.

An inspector choosing a threshold for PaDiM (Defard et al. 2020, https://arxiv.org/abs/2011.08785)
weighs false alarms (good parts rejected) against misses (defective parts passed). These
functions give the counts the report and ``padim evaluate --json`` show: at the model's
threshold (:func:`confusion`), at several candidate thresholds including the F1-maximising one
and the highest that misses nothing (:func:`threshold_table`), and per image
(:func:`image_rows`). NumPy only; an image is called defective by the verdict rule,
:func:`padim.scoring.rules.label` (``score >= threshold``; a score that is not a number is never normal).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from padim.eval.metrics import f1_max
from padim.scoring.rules import label


def confusion(labels: Any, scores: Any, threshold: float) -> dict[str, int]:
    """Counts at ``threshold``: ``{true_negatives, false_alarms, misses, true_positives}``.

    >>> confusion([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9], 0.5)
    {'true_negatives': 1, 'false_alarms': 1, 'misses': 1, 'true_positives': 1}
    """
    labels = np.asarray(labels, dtype=bool)
    called = label(np.asarray(scores, dtype=np.float64), threshold)
    return dict(
        true_negatives=int((~labels & ~called).sum()),
        false_alarms=int((~labels & called).sum()),
        misses=int((labels & ~called).sum()),
        true_positives=int((labels & called).sum()),
    )


def _row(name: str, labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    counts = confusion(labels, scores, threshold)
    tp, fp, fn = counts["true_positives"], counts["false_alarms"], counts["misses"]
    n_good, n_bad = int((~labels).sum()), int(labels.sum())
    return dict(
        name=name,
        threshold=float(threshold),
        false_alarms=fp,
        false_alarm_rate=fp / n_good if n_good else None,
        misses=fn,
        miss_rate=fn / n_bad if n_bad else None,
        precision=tp / (tp + fp) if tp + fp else None,
        recall=tp / n_bad if n_bad else None,
        f1=2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None,
    )


def threshold_table(labels: Any, scores: Any, model_threshold: float | None = None, n_even: int = 5) -> list[dict]:
    """False alarms and misses at several thresholds, lowest threshold first.

    Named rows: ``"model"`` (``model_threshold``, if given), ``"F1-max"``, ``"100% recall"``
    (the highest threshold that misses no defective image: the lowest defective score) and
    ``"no false alarm"`` (the lowest threshold that flags no good image: the lowest score above
    every good one, or just above the highest good score if none is). Then
    ``n_even`` thresholds evenly spaced from the lowest score to the highest named threshold
    (where verdicts change; far defective scores would spread them uselessly), named ``""``.

    Returns:
        Rows ``{name, threshold, false_alarms, false_alarm_rate, misses, miss_rate, precision,
        recall, f1}`` (rates and ratios None where undefined).

    >>> [(r["name"], r["threshold"], r["false_alarms"], r["misses"]) for r in threshold_table([0, 0, 1, 1], [1, 3, 2, 4], n_even=0)]
    [('100% recall', 2.0, 1, 0), ('F1-max', 2.0, 1, 0), ('no false alarm', 4.0, 0, 1)]
    """
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    named: list[tuple[str, float]] = []
    if model_threshold is not None:
        named.append(("model", float(model_threshold)))
    if labels.any():
        named += [("F1-max", f1_max(labels, scores)[1]), ("100% recall", float(scores[labels].min()))]
    if (~labels).any():
        highest_good = scores[~labels].max()
        above = scores[scores > highest_good]
        named.append(("no false alarm", float(above.min() if above.size else np.nextafter(highest_good, np.inf))))
    top = max([t for _, t in named], default=float(scores.max()))
    taken = {t for _, t in named}
    even = [("", float(t)) for t in np.linspace(scores.min(), top, n_even) if float(t) not in taken] if n_even else []
    rows = [_row(name, labels, scores, t) for name, t in named + even]
    # Lowest threshold first; a named row before an unnamed one at the same threshold.
    return sorted(rows, key=lambda r: (r["threshold"], r["name"] == "", r["name"]))


def image_rows(
    paths: Sequence[Any],
    defect_types: Sequence[str],
    scores: Any,
    threshold: float | None,
    normalized: Any = None,
) -> list[dict[str, Any]]:
    """One row per image: ``{path, defect_type, score, normalized_score, verdict, correct}``.

    ``verdict`` is ``"DEFECT"`` or ``"OK"`` and ``correct`` a bool (both None without a
    threshold); an image is defective when its defect type is not ``"good"``.

    >>> image_rows(["a.png", "b.png"], ["good", "crack"], [0.2, 0.3], 0.25)[1]["correct"]
    True
    """
    scores = np.asarray(scores, dtype=np.float64)
    rows = []
    for i, (path, defect_type) in enumerate(zip(paths, defect_types)):
        called = None if threshold is None else bool(label(scores[i], threshold))
        rows.append(
            dict(
                path=str(path),
                defect_type=str(defect_type),
                score=float(scores[i]),
                normalized_score=None if normalized is None else float(normalized[i]),
                verdict=None if called is None else ("DEFECT" if called else "OK"),
                correct=None if called is None else called == (defect_type != "good"),
            )
        )
    return rows
