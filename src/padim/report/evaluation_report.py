"""From an evaluation to its report and its JSON: the pictures of each mistake, the model's details, the rows.

:func:`write_evaluation_report` turns what :func:`padim.eval.evaluation.evaluate_model` measured
into :func:`padim.report.html.write_report`'s input: for every false alarm and every miss, the
original image, its ground truth and the overlay (:func:`mistake_pictures`), the pixel ROC and
PRO curves, and the model's details (:func:`model_details`). :func:`evaluation_json` gives
``padim evaluate --json`` the same verdicts: the confusion counts, the threshold table and a
row per image.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from padim.eval import metrics as padim_metrics
from padim.eval.operating_points import confusion, image_rows, threshold_table
from padim.eval.pro import pro_curve
from padim.io.decoders import load_image
from padim.io.images import fit_within
from padim.modelfile.info import model_info
from padim.report.heatmap import overlay_at_image_size
from padim.report.html import PICTURE_SIDE, ReportData, write_report
from padim.report.overlays import contour_width, heatmap_range, overlay
from padim.scoring.calibration import manual
from padim.scoring.rules import label

#: The ground truth's outline and tint.
TRUTH_COLOR = (0, 220, 0)


def _threshold(evaluation: Any, calibration: Any) -> float:
    """The model's threshold, or without one the F1-best split of this test set."""
    if calibration is not None:
        return float(calibration.threshold)
    return float(evaluation.metrics["overall"]["f1_threshold"] or evaluation.scores.max())


def truth_picture(picture: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """The picture with its ground-truth region tinted and outlined (unchanged for None or an empty mask).

    >>> truth_picture(np.zeros((4, 4, 3), np.uint8), np.ones((2, 2), bool))[0, 0].tolist()
    [0, 220, 0]
    """
    if mask is None or not np.any(mask):
        return picture.copy()
    height, width = picture.shape[:2]
    resized = np.asarray(Image.fromarray(np.asarray(mask, np.uint8) * 255).resize((width, height), Image.NEAREST)) > 0
    tinted = picture.astype(np.float32)
    tinted[resized] = 0.7 * tinted[resized] + 0.3 * np.asarray(TRUTH_COLOR, np.float32)
    flat = np.zeros((height, width))  # no heat: the overlay only draws the outline
    outlined = overlay(np.round(tinted).astype(np.uint8), flat, 0.0, 1.0, region=resized, alpha=0.0,
                       contour_color=TRUTH_COLOR, contour_px=contour_width((height, width)))  # fmt: skip
    return outlined


def mistake_pictures(path: Any, anomaly_map: Any, mask: Any, score: float, calibration: Any, vmin: float, vmax: float):
    """(original, ground truth, overlay) of one image, its longest side :data:`padim.report.html.PICTURE_SIDE`."""
    image = load_image(path)
    original = np.asarray(image.convert("RGB").resize(fit_within(image.size, PICTURE_SIDE), Image.BILINEAR))
    drawn = overlay_at_image_size(image, anomaly_map, calibration, vmin, vmax, PICTURE_SIDE, score=score)
    return original, truth_picture(original, mask), drawn


def model_details(model_path: Any = None, config: dict | None = None, calibration: Any = None) -> dict[str, Any]:
    """What the report says about the model: file, checksum, backbone, sizes, thresholds and how they were set."""
    details: dict[str, Any] = {}
    n_images = None
    if model_path is not None:
        info = model_info(model_path)
        config, n_images = info["config"], info["n_images"]
        details.update({"model file": str(model_path), "SHA-256": info["sha256"]})
    config = config or {}
    if config:
        size = config.get("image_size") or ["?", "?"]
        details.update(
            {
                "backbone": f"{config.get('backbone')} ({', '.join(config.get('layers') or [])})",
                "working size": f"{size[0]} x {size[1]} px",
                "d (channels kept)": config.get("n_features"),
            }
        )
    if n_images is not None:
        details["trained on"] = f"{n_images} good images"
    if calibration is not None:
        details["threshold"] = f"{calibration.threshold:.6g} ({calibration.describe()})"
        details["pixel threshold"] = f"{calibration.region_threshold:.6g} ({calibration.describe_pixel()})"
    else:
        details["threshold"] = (
            "none: the model is uncalibrated; this report uses the F1-best threshold of this test set"
        )
    return details


def write_evaluation_report(
    evaluation: Any,
    calibration: Any,
    directory: str | os.PathLike,
    *,
    model_path: Any = None,
    config: dict | None = None,
) -> Path:
    """The HTML report of an :class:`padim.eval.evaluation.Evaluation` (see :mod:`padim.report.html`).

    Args:
        evaluation: what :func:`padim.eval.evaluation.evaluate_model` measured.
        calibration: the model's :class:`padim.scoring.calibration.Calibration`, or None (the report then
            uses the F1-best threshold of this test set).
        directory: output folder.
        model_path, config: the model file and configuration, for the details section.
    """
    labels, scores, maps = evaluation.labels, evaluation.scores, evaluation.maps
    threshold = _threshold(evaluation, calibration)
    vmin, vmax = heatmap_range(calibration, maps)
    # Without a calibration, regions and colours follow the report's threshold.
    shown = calibration
    if shown is None:
        shown = manual(threshold)
    wrong = np.flatnonzero(labels != label(scores, threshold))
    mistakes = {
        int(i): mistake_pictures(evaluation.samples[i].path, maps[i], evaluation.masks[i], scores[i], shown, vmin, vmax)
        for i in wrong
    }
    pixel_roc = pro = None
    if all(m is not None for m in evaluation.masks) and labels.any():
        masks = np.stack(evaluation.masks)
        if masks.any() and not masks.all():
            pixel_roc = tuple(padim_metrics.roc_curve(masks.ravel(), maps.ravel())[:2])
            pro = tuple(pro_curve(masks, maps)[:2])
    data = ReportData(
        paths=[str(s.path) for s in evaluation.samples],
        labels=labels,
        scores=scores,
        defect_types=[s.defect_type for s in evaluation.samples],
        metrics=evaluation.metrics,
        threshold=threshold,
        mistakes=mistakes,
        normalized=None if calibration is None else calibration.normalize(scores),
        pixel_roc=pixel_roc,
        pro=pro,
        model=model_details(model_path, config, calibration),
        threshold_note="the F1-best on this test set" if calibration is None else calibration.describe(),
    )
    return write_report(directory, data)


def evaluation_json(evaluation: Any, calibration: Any) -> dict[str, Any]:
    """``{confusion, thresholds, images}`` at the model's threshold (None entries when uncalibrated).

    ``images`` holds one row per test image (:func:`padim.eval.operating_points.image_rows`).
    """
    threshold = None if calibration is None else float(calibration.threshold)
    labels, scores = evaluation.labels, evaluation.scores
    samples = evaluation.samples
    normalized = None if calibration is None else calibration.normalize(scores)
    return dict(
        confusion=None if threshold is None else confusion(labels, scores, threshold),
        thresholds=threshold_table(labels, scores, threshold),
        images=image_rows([s.path for s in samples], [s.defect_type for s in samples], scores, threshold, normalized),
    )


def evaluation_summary(evaluation: Any, calibration: Any, model: Any, data: Any) -> dict[str, Any]:
    """What ``padim evaluate --json`` writes: the headline metrics, every summary, and :func:`evaluation_json`."""
    metrics = evaluation.metrics
    overall = metrics["overall"]
    summary = {key: overall[key] for key in ("image_auroc", "pixel_auroc", "aupro", "image_f1_max", "f1_threshold")}
    summary.update(threshold=overall["threshold"], n_images=overall["n_images"], overall=overall,
                   per_defect=metrics["per_defect"], model=str(model), data=str(data),
                   **evaluation_json(evaluation, calibration))  # fmt: skip
    return summary
