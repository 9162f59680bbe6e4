"""Reduced precision, checked: a model fitted in int8 or bfloat16 against the same fit in float32.

int8 and bfloat16 are faster where the CPU has the instructions for them (VNNI; AVX512-BF16 or
AMX), but they change the features, and PaDiM's per-patch whitening amplifies small changes. They
are never chosen for the user, and a model fitted in one of them is checked before it is kept:
the same images are fitted once more in float32, and both models score the fit's own held-out good
images and the same images with a synthetic defect painted on each (a scratch or a stain:
:func:`padim.io.synthetic.add_defect`, ground truth included). If the reduced model's image or
pixel AUROC is more than :data:`MAX_LOSS` below float32's, the fit is refused with both numbers;
otherwise they are kept in the model file (``precision_check``). With fewer than :data:`MIN_IMAGES`
held-out images the numbers are kept but not enforced (a warning says so).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from padim.errors import OptionError
from padim.eval.metrics import image_auroc, pixel_auroc
from padim.io.images import IMAGENET_MEAN, IMAGENET_STD, denormalize
from padim.io.loading import as_batches, to_samples
from padim.io.synthetic import DEFECT_TYPES, add_defect

#: The largest loss of image or pixel AUROC a reduced precision may cost against float32.
MAX_LOSS = 0.005
#: Held-out images scored, at most (each also with a defect).
MAX_IMAGES = 64
#: Fewer held-out images than this cannot tell a loss of 0.005 from chance: the AUROCs are kept, not enforced.
MIN_IMAGES = 8


def with_defects(batch: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Pre-processed images (N, 3, H, W) with one synthetic defect each, and the defects' masks (N, H, W) bool."""
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for k, picture in enumerate(denormalize(batch)):
        painted, mask = add_defect(picture / 255.0, DEFECT_TYPES[k % len(DEFECT_TYPES)], rng)
        images.append((painted - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD))
        masks.append(mask)
    return np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2), dtype=np.float32), np.stack(masks)


def scores(model: Any, good: np.ndarray, bad: np.ndarray, masks: np.ndarray) -> tuple[float, float]:
    """(image AUROC, pixel AUROC) of a model on good images and the same images with defects."""
    predictor = model.predictor()
    found = predictor.predict(np.concatenate([good, bad]))
    labels = np.r_[np.zeros(len(good)), np.ones(len(bad))]
    truth = np.concatenate([np.zeros_like(masks), masks])
    return image_auroc(labels, found.score), pixel_auroc(truth, found.anomaly_map)


def check_precision(model: Any, data: Any, validation: Any, options: dict) -> dict | None:
    """Fit ``model``'s settings in float32 on ``data`` and compare both on ``validation`` (see the module doc).

    Args:
        model: a fitted :class:`padim.model.padim.Padim` whose backbone is int8 or bfloat16.
        data: the training images it was fitted on (files or a folder: read once more).
        validation: its held-out good images (files or a folder).
        options: decoding options.

    Returns:
        ``{"image_auroc": [float32, reduced], "pixel_auroc": [...], "images": N, "max_loss": MAX_LOSS,
        "enforced": N >= MIN_IMAGES}``,
        or None when the images cannot be read again (batches given in memory): nothing to check on.

    Raises:
        OptionError: when the reduced model loses more than :data:`MAX_LOSS` of either AUROC.
    """
    if to_samples(data, "good") is None or to_samples(validation, "good") is None:
        return None
    good = np.concatenate(list(as_batches(validation, model.image_size_, folder="good", **options)))[:MAX_IMAGES]
    bad, masks = with_defects(good, model.seed)
    reference = type(model)(**{**model.get_params(), "backbone_dtype": "float32"})
    reference.fit(data, validation=validation, **options)
    found = dict(zip(("image_auroc", "pixel_auroc"), zip(scores(reference, good, bad, masks),
                                                         scores(model, good, bad, masks))))  # fmt: skip
    worst = max(found, key=lambda name: found[name][0] - found[name][1])
    enforced = len(good) >= MIN_IMAGES
    if not enforced:
        warnings.warn(f"backbone_dtype={model.backbone_dtype!r}: only {len(good)} held-out images, fewer than "
                      f"{MIN_IMAGES}: its AUROCs against float32 are recorded, not enforced", stacklevel=3)  # fmt: skip
    elif found[worst][0] - found[worst][1] > MAX_LOSS:
        raise OptionError(
            f"backbone_dtype={model.backbone_dtype!r} loses too much here: {worst.replace('_', ' ')} "
            f"{found[worst][1]:.4f} against float32's {found[worst][0]:.4f} on the {len(good)} held-out images with "
            f"synthetic defects (at most {MAX_LOSS} may be lost); fit it in float32"
        )
    return {**{k: [round(float(a), 6), round(float(b), 6)] for k, (a, b) in found.items()}, "images": len(good),
            "max_loss": MAX_LOSS, "enforced": enforced}  # fmt: skip


def checked(model: Any, setup: Any, streamed: bool) -> dict | None:
    """:func:`check_precision` for a model fitted in int8 or bfloat16 here (``streamed``, not on Ray); else None."""
    if model.backbone_dtype == "float32" or not streamed:
        return None
    return check_precision(model, setup.source, setup.validation, setup.options)
