"""``padim calibrate``: a ``.padim`` file rewritten with new thresholds, everything else as it was.

An inspector often wants another threshold after seeing the line: a number of their own, a
quantile of a fresh folder of good images, or a rule on good and defective images (F1-max, or
the highest threshold that finds a share R of the defective ones). :func:`recalibrate_file`
builds the new :class:`padim.scoring.calibration.Calibration` (by hand, or
:func:`padim.runtime.calibrate.calibration_from_images`) and writes the same tensors and metadata
with only ``calibration`` changed, under a temporary name renamed into place. Reading and writing
the file needs no torch (:mod:`padim.modelfile.padim_file`); scoring images with a ``.padim``
model needs the training extra, as every ``.padim`` model does.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from padim.errors import OptionError
from padim.modelfile.padim_file import read_model_file, write_model_file
from padim.runtime.calibrate import calibration_from_images
from padim.runtime.opening import open_model
from padim.scoring.calibration import PIXEL_QUANTILE, Calibration, manual
from padim.scoring.rules import label

PathLike = str | os.PathLike


@dataclass
class CalibrationChange:
    """What :func:`recalibrate_file` did.

    Attributes:
        path: the model file written.
        old: the calibration before (None for an uncalibrated model).
        new: the calibration written.
        good_scores: the good images' scores, when images were given.
        defective_scores: the defective images' scores, when given.
    """

    path: Path
    old: Calibration | None
    new: Calibration
    good_scores: np.ndarray | None = None
    defective_scores: np.ndarray | None = None

    def lines(self) -> list[str]:
        """What changed, for a person: each threshold before and after, and what it means."""
        old, new = self.old, self.new

        def value(c: Calibration | None, pixel: bool = False) -> str:
            if c is None:
                return "none"
            number = c.region_threshold if pixel else c.threshold
            return f"{number:.4g} ({c.describe_pixel() if pixel else c.describe()})"

        out = []
        for name, pixel in (("threshold", False), ("pixel threshold (regions)", True)):
            before, after = value(old, pixel), value(new, pixel)
            out.append(f"{name}: {before} (unchanged)" if before == after else f"{name}: {before} -> {after}")
        for scores, what, good in ((self.good_scores, "good images flagged", True),
                                   (self.defective_scores, "defective images missed", False)):  # fmt: skip
            if scores is not None:
                counts = [_wrong(scores, c.threshold, good) for c in (old, new) if c is not None]
                out.append(f"{what}: {' -> '.join(map(str, counts))} of {scores.size}")
        out.append(f"wrote {self.path}")
        return out


def _wrong(scores: np.ndarray, threshold: float, good: bool) -> int:
    """False alarms among good images' scores, or misses among defective ones, at ``threshold``."""
    flagged = int(label(scores, threshold).sum())
    return flagged if good else scores.size - flagged


def recalibrate_file(
    model: PathLike,
    *,
    threshold: float | None = None,
    good: Any = None,
    defective: Any = None,
    quantile: float | None = None,
    recall: float | None = None,
    pixel_threshold: float | None = None,
    pixel_quantile: float = PIXEL_QUANTILE,
    output: PathLike | None = None,
    device: str = "cpu",
    backend: str = "auto",
    executor: str = "auto",
    **options: Any,
) -> CalibrationChange:
    """Give a ``.padim`` model file a new calibration; everything else in the file stays as it was.

    Exactly one of ``threshold`` (by hand) and ``good`` (from images) is given, or neither
    with ``pixel_threshold`` alone. With ``good`` only, the threshold is the ``quantile``
    (default: the model's own) of their scores; with ``defective`` too, F1-max or ``recall``.

    Args:
        model: the ``.padim`` file.
        output: where to write (default: ``model`` itself, replaced atomically).
        device, backend, executor: what runs the model over the images.
        others: as :func:`calibration_from_images`; ``pixel_threshold`` sets the region
            threshold by hand.

    Raises:
        OptionError: for a combination that does not say what to do, or an ``.onnx`` file.
        ModelFileError: for an unreadable model file. DataError, ImageError: for the images.
    """
    model = Path(model)
    if model.suffix.lower() == ".onnx":
        raise OptionError(
            f"{model}: padim calibrate rewrites .padim files; calibrate the .padim model and export it "
            "again, or give --threshold to padim predict or padim serve"
        )
    _check_choice(threshold, good, defective, quantile, recall, pixel_threshold)
    tensors, meta = read_model_file(model)
    old = None if meta.get("calibration") is None else Calibration(**meta["calibration"])
    good_scores = bad_scores = None
    if good is not None:
        predictor = open_model(model, device=device, backend=backend, executor=executor)
        quantile = float(meta.get("quantile", 0.99)) if quantile is None else quantile
        new, good_scores, bad_scores, _ = calibration_from_images(
            predictor, good, defective, quantile=quantile, recall=recall, pixel_quantile=pixel_quantile, **options
        )
    elif threshold is not None:
        new = manual(threshold, old)
    elif old is None:
        raise OptionError(f"{model} has no threshold yet: give --threshold T or --good DIR with --pixel-threshold")
    else:
        new = old
    if pixel_threshold is not None:
        new = new.with_pixel_threshold(pixel_threshold)
    target = Path(output) if output is not None else model
    if target.is_dir():
        raise OptionError(f"--output {target} is a folder; expected a model file path such as model.padim")
    write_model_file(target, tensors, {**meta, "calibration": new.to_dict()})
    return CalibrationChange(target, old, new, good_scores, bad_scores)


def _check_choice(threshold, good, defective, quantile, recall, pixel_threshold) -> None:
    """Refuse option combinations that do not name one calibration rule."""
    for name, number in (("--threshold", threshold), ("--pixel-threshold", pixel_threshold)):
        if number is not None and not math.isfinite(number):
            raise OptionError(f"{name} must be a finite number, got {number!r}")
    if threshold is not None and good is not None:
        raise OptionError("give either --threshold T or --good DIR, not both")
    if defective is not None and good is None:
        raise OptionError("--defective needs --good DIR too (good images the model was not fitted on)")
    if quantile is not None and (good is None or defective is not None):
        raise OptionError("--quantile applies to --good DIR alone (without --defective)")
    if recall is not None and defective is None:
        raise OptionError("--recall needs --good DIR and --defective DIR")
    if threshold is None and good is None and pixel_threshold is None:
        raise OptionError(
            "say how to calibrate: --threshold T, or --good DIR (with --defective DIR for F1 or --recall)"
        )
