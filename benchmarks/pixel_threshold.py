"""Which pixel threshold draws the best defect regions? Candidates chosen on held-out good maps only.

For each category: fit PaDiM with the defaults (its held-out good images set the image
threshold), then take the anomaly maps of those held-out good images and derive candidate
pixel thresholds from them alone: the image threshold itself (the rule before issue 12), and
quantiles of all their pixels. Each candidate is scored on the labelled test set, with regions
drawn only on images the image threshold flags (as ``padim.scoring.regions.region_mask`` does):

- ``dice``: mean Dice of predicted region and ground truth over the flagged defective images;
- ``pro``: mean per-region overlap at that threshold over every ground-truth region (how much
  of each defect the outline covers, MVTec's PRO at one operating point);
- ``precision``: predicted defect pixels inside the ground truth, over the flagged defective images;
- ``good_area``: the mean fraction of a flagged good image that is outlined (false region);
- ``pixel_fpr``: fraction of all normal test pixels at or above the pixel threshold (ungated).

    python benchmarks/pixel_threshold.py            # bottle and hazelnut_toy, 256 px
Writes ``benchmarks/results/pixel_threshold.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np
from scipy import ndimage

from padim.eval.evaluation import evaluate_model
from padim.io.datasets import split_holdout, train_samples
from padim.model.padim import Padim

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = [Path("/work/shared/data/mvtec_ad/bottle"), Path("/work/shared/data/hazelnut_toy/hazelnut")]
QUANTILES = (0.99, 0.995, 0.999, 0.9995, 0.9999, 1.0)


def score_candidate(pixel_t: float, image_t: float, maps, masks, labels, flagged) -> dict:
    dice, precision, overlaps, good_area = [], [], [], []
    for m, g, bad, flag in zip(maps, masks, labels, flagged):
        predicted = (m >= pixel_t) & flag
        if bad:
            regions, n = ndimage.label(g, structure=np.ones((3, 3)))
            overlaps += [float(predicted[regions == k].mean()) for k in range(1, n + 1)]
            if flag:
                dice.append(2 * (predicted & g).sum() / max(predicted.sum() + g.sum(), 1))
                precision.append((predicted & g).sum() / max(predicted.sum(), 1))
        elif flag:
            good_area.append(float(predicted.mean()))
    normal = ~np.stack(masks)
    return dict(
        pixel_threshold=float(pixel_t),
        ratio_to_image_threshold=float(pixel_t / image_t),
        dice=float(np.mean(dice)) if dice else None,
        pro=float(np.mean(overlaps)),
        precision=float(np.mean(precision)) if precision else None,
        good_area=float(np.mean(good_area)) if good_area else 0.0,
        pixel_fpr=float((np.stack(maps)[normal] >= pixel_t).mean()),
    )


def run(category: Path, image_size: int) -> dict:
    model = Padim(image_size=image_size).fit(category)
    _, held = split_holdout(train_samples(category), model.holdout, model.seed)
    good_maps = model.predict([s.path for s in held]).anomaly_map
    evaluation = evaluate_model(model.predictor(), category)
    image_t = model.calibration_.threshold
    flagged = evaluation.scores >= image_t
    masks = [np.zeros(evaluation.maps.shape[1:], bool) if m is None else m for m in evaluation.masks]
    args = (image_t, evaluation.maps, masks, evaluation.labels, flagged)
    rows = {"image threshold": score_candidate(image_t, *args)}
    for q in QUANTILES:
        rows[f"good pixels q{q:g}"] = score_candidate(float(np.quantile(good_maps, q)), *args)
    return dict(category=category.name, n_held_out=len(held), image_threshold=image_t, candidates=rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, nargs="+", default=DEFAULT_DATA)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "pixel_threshold")
    args = parser.parse_args()
    results = [run(category, args.image_size) for category in args.data]
    lines = [
        "# Pixel threshold candidates (regions drawn on flagged images only)",
        "",
        f"`python benchmarks/pixel_threshold.py`, {platform.node()}, image size {args.image_size}.",
        "",
    ]
    for result in results:
        lines += [
            f"## {result['category']} ({result['n_held_out']} held-out good images, "
            f"image threshold {result['image_threshold']:.2f})",
            "",
            "| rule | pixel threshold | / image threshold | Dice | PRO | precision | good area | pixel FPR |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, row in result["candidates"].items():
            cells = [row[k] for k in ("dice", "pro", "precision", "good_area", "pixel_fpr")]
            lines.append(
                f"| {name} | {row['pixel_threshold']:.2f} | {row['ratio_to_image_threshold']:.2f} | "
                + " | ".join("-" if c is None else f"{c:.3f}" for c in cells)
                + " |"
            )
        lines.append("")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text("\n".join(lines))
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
