"""The batch job: image files in, a CSV of verdicts and heatmap overlays out.

:func:`predict_files` runs a predictor (:mod:`padim.runtime`) over images decoded by the one
loading pipeline (:mod:`padim.loading`) and writes ``predictions.csv`` (``path, score,
normalized_score, label``) and one ``<name>_overlay.png`` per image into a folder: the heatmap
over the image at the image's own aspect ratio, with the predicted region outlined.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from padim.datasets import Sample
from padim.files import write_text
from padim.loading import iter_batches
from padim.visualize import heatmap_range, overlay_at_image_size, save_png

CSV_COLUMNS = ("path", "score", "normalized_score", "label")


@dataclass
class JobSummary:
    """What :func:`predict_files` did: rows written, images flagged, files skipped."""

    csv_path: Path
    n_images: int = 0
    n_anomalous: int = 0
    skipped: dict[Path, str] = field(default_factory=dict)


def overlay_names(paths: Sequence[Path]) -> list[str]:
    """Overlay file names: the image's stem, with its parent folder where stems repeat.

    >>> overlay_names([Path("a/1.png"), Path("b/1.png"), Path("b/2.png")])
    ['a_1', 'b_1', '2']
    """
    stems = [p.stem for p in paths]
    names = [f"{p.parent.name}_{p.stem}" if stems.count(p.stem) > 1 else p.stem for p in paths]
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return unique


def predict_files(
    predictor: Any,
    samples: Sequence[Sample],
    output: str | os.PathLike,
    *,
    overlays: bool = True,
    batch_size: int = 32,
    workers: int | None = None,
    skip_bad: bool = False,
    quiet: bool = True,
) -> JobSummary:
    """Score image files and write the CSV and overlays into ``output`` (created if missing).

    Raises:
        ImageError: for an unreadable image (unless ``skip_bad``).
    """
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    names = overlay_names([s.path for s in samples])
    summary = JobSummary(output / "predictions.csv")
    rows = []
    for batch in iter_batches(
        samples,
        predictor.image_size,
        batch_size=batch_size,
        workers=workers,
        skip_bad=skip_bad,
        quiet=quiet,
        desc="predict",
        skipped=summary.skipped,
        keep_images=overlays,
    ):
        prediction = predictor.predict_batch(batch.images)
        vmin, vmax = heatmap_range(predictor.calibration, prediction.anomaly_map)
        for j, index in enumerate(batch.indices):
            normalized = "" if prediction.normalized_score is None else f"{prediction.normalized_score[j]:.6f}"
            label = "" if prediction.label is None else ("anomalous" if prediction.label[j] else "normal")
            rows.append([str(samples[index].path), f"{prediction.score[j]:.6f}", normalized, label])
            summary.n_anomalous += label == "anomalous"
            if overlays:
                picture = overlay_at_image_size(
                    batch.originals[j], prediction.anomaly_map[j], predictor.calibration, vmin, vmax
                )
                save_png(output / f"{names[index]}_overlay.png", picture)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows(rows)
    write_text(summary.csv_path, buffer.getvalue())
    summary.n_images = len(rows)
    return summary
