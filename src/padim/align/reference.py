"""A model's reference: what good parts look like where they sit, and the rule that says a registration is trusted.

:func:`build` makes the reference from good training images, which need not be aligned: it starts
from their mean, then registers each image to it, moves the frame to the parts' average pose and
averages the registered images, a few times over. :func:`register` gives each image of a
pre-processed batch its pose, its confidence, and whether it is trusted (confidence at or above the
model's threshold, the pose within range, and most of the reference frame covered by the image);
:func:`threshold_from` sets the confidence threshold from held-out good images alone.

Poses are in pixels of the working size (the model's input); registration runs on a luminance
image at most :data:`MAX_SIDE` pixels on its long side. NumPy only.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, replace

import numpy as np

from padim.align import registration, warps
from padim.align.warps import to_reference
from padim.io.images import IMAGENET_MEAN, IMAGENET_STD

#: Registration runs at the working size, or at this long side when the working size is larger: half the
#: default working size, a fifth of a pixel there (0.4 px of the working size, a tenth of a Gaussian's cell).
MAX_SIDE = 128
#: Rotations beyond this many degrees are not searched (``rigid``): a part turned further is untrusted.
MAX_ANGLE = 5.0
#: A registration is trusted only if the part stays within this share of the image's side...
MAX_SHIFT = 0.15
#: ...and at least this share of the reference frame comes from the photo (not its repeated border).
MIN_COVERAGE = 0.75
#: The confidence threshold allows images this many times as far from a perfect match as the worst held-out good one.
MARGIN = 1.0
#: Rounds of register-and-average when building the reference.
ROUNDS = 3
#: Motions a model can register: ``none`` (the trained position), ``translate``, ``rigid`` (translation and rotation).
MOTIONS = ("none", "translate", "rigid")
#: Rec. 601 luminance weights.
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@dataclass(frozen=True)
class Reference:
    """The registration part of a fitted model.

    Attributes:
        motion: ``"translate"`` or ``"rigid"``.
        gray: (h, w) float32 the reference luminance at the registration size.
        working_size: (H, W) the model's working size, the frame poses are expressed in.
        threshold: confidence below which a registration is not trusted (None: every registration that covers the frame is).
        max_shift: the largest shift trusted, as a share of the working size's sides.
        max_angle: the largest rotation searched and trusted, in degrees.
    """

    motion: str
    gray: np.ndarray
    working_size: tuple[int, int]
    threshold: float | None = None
    max_shift: float = MAX_SHIFT
    max_angle: float = MAX_ANGLE

    def __post_init__(self) -> None:
        # Computed once: every batch is phase-correlated against them.
        object.__setattr__(self, "spectrum", registration.spectrum(self.gray))
        search = registration.AngleSearch.make(self.gray, self.max_angle) if self.motion == "rigid" else None
        object.__setattr__(self, "search", search)

    def to_dict(self) -> dict:
        """JSON-ready, the gray as base64 float32 bytes (exact)."""
        gray = np.ascontiguousarray(self.gray, dtype="<f4")
        return dict(motion=self.motion, shape=list(gray.shape), gray=base64.b64encode(gray.tobytes()).decode("ascii"),
                    working_size=list(self.working_size), threshold=self.threshold, max_shift=self.max_shift,
                    max_angle=self.max_angle)  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict) -> Reference:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: for a malformed record (a model file names it).
        """
        try:
            shape = tuple(int(v) for v in data["shape"])
            gray = np.frombuffer(base64.b64decode(data["gray"]), dtype="<f4").reshape(shape).astype(np.float32)
            threshold = None if data["threshold"] is None else float(data["threshold"])
            reference = cls(str(data["motion"]), gray, tuple(int(v) for v in data["working_size"]), threshold,
                            float(data["max_shift"]), float(data["max_angle"]))  # fmt: skip
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"malformed alignment record ({error})") from None
        if reference.motion not in MOTIONS[1:] or len(shape) != 2 or not np.isfinite(gray).all():
            raise ValueError(f"malformed alignment record (motion {reference.motion!r}, shape {shape})")
        return reference


@dataclass(frozen=True)
class Registration:
    """Each image's registration: (N,) arrays.

    Attributes:
        poses: (N, 3) (dx, dy, angle): how the part moved against the reference, in working-size
            pixels and degrees.
        confidence: the registered image's correlation with the reference (1: the same picture).
        coverage: the share of the reference frame the image covers.
        trusted: the registration can be believed; a verdict on an untrusted one is never "normal".
    """

    poses: np.ndarray
    confidence: np.ndarray
    coverage: np.ndarray
    trusted: np.ndarray

    def __len__(self) -> int:
        return len(self.trusted)


def registration_size(working_size: tuple[int, int]) -> tuple[int, int]:
    """(h, w) registration runs at: the working size, scaled down to a :data:`MAX_SIDE` long side.

    >>> registration_size((256, 256)), registration_size((512, 1024))
    ((128, 128), (64, 128))
    """
    height, width = working_size
    scale = min(1.0, MAX_SIDE / max(height, width))
    return max(16, round(height * scale)), max(16, round(width * scale))


def grays(batch: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Luminance (N, h, w) float32 in [0, 1] of a pre-processed batch (N, 3, H, W), box-averaged to ``size``.

    Undoes the ImageNet normalisation (:func:`padim.io.images.preprocess`) channel by channel: linear.
    """
    batch = np.asarray(batch, dtype=np.float32)
    weights = _LUMA * np.asarray(IMAGENET_STD, np.float32)
    offset = float((_LUMA * np.asarray(IMAGENET_MEAN, np.float32)).sum())
    luma = np.tensordot(weights, batch, axes=([0], [1])) + offset  # (N, H, W)
    height, width = luma.shape[1:]
    h, w = size
    if (h, w) == (height, width):
        return luma.astype(np.float32)
    rows = np.minimum((np.arange(height) * h) // height, h - 1)
    cols = np.minimum((np.arange(width) * w) // width, w - 1)
    # Box average: every working pixel into the registration pixel it falls in.
    summed = np.zeros((len(luma), h, width), np.float32)
    np.add.at(summed, (slice(None), rows), luma)
    out = np.zeros((len(luma), h, w), np.float32)
    np.add.at(out, (slice(None), slice(None), cols), summed)
    counts = np.bincount(rows, minlength=h)[:, None] * np.bincount(cols, minlength=w)[None, :]
    return out / counts.astype(np.float32)


def _scaled(poses: np.ndarray, small: tuple[int, int], large: tuple[int, int]) -> np.ndarray:
    """Poses at the registration size expressed at another size (shifts scale; angles do not)."""
    out = np.array(poses, dtype=np.float64).reshape(-1, 3).copy()
    out[:, 0] *= large[1] / small[1]
    out[:, 1] *= large[0] / small[0]
    return out


def register(reference: Reference, batch: np.ndarray) -> Registration:
    """Each image's pose against the reference, its confidence, coverage and whether it is trusted.

    Args:
        reference: the model's :class:`Reference`.
        batch: (N, 3, H, W) pre-processed images at the working size.
    """
    size = reference.gray.shape
    poses, confidence, covered = registration.register(reference.gray, reference.spectrum, grays(batch, size),
                                                       reference.motion, reference.max_angle, reference.search)  # fmt: skip
    poses = _scaled(poses, size, reference.working_size)
    height, width = reference.working_size
    trusted = (covered >= MIN_COVERAGE) & (np.abs(poses[:, 0]) <= reference.max_shift * width)
    trusted &= (np.abs(poses[:, 1]) <= reference.max_shift * height) & (np.abs(poses[:, 2]) < reference.max_angle)
    if reference.threshold is not None:
        trusted &= confidence >= reference.threshold
    return Registration(poses, confidence, covered, trusted)


def applied(found: Registration) -> np.ndarray:
    """The poses an image is moved by: its own where the registration is trusted, none otherwise.

    An image whose registration is not trusted goes through as it is: a pose that cannot be
    believed would move the part, and its map, somewhere wrong (on hazelnut, whose parts turn
    freely, moving them anyway cost 0.007 of pixel AUROC; leaving them cost 0.0003). Its verdict
    fails closed anyway, as every untrusted one's does.
    """
    return np.where(found.trusted[:, None], found.poses, 0.0)


def aligned(reference: Reference, batch: np.ndarray) -> np.ndarray:
    """A pre-processed batch (N, 3, H, W) registered and brought into the reference frame (what the model sees)."""
    return to_reference(np.asarray(batch, dtype=np.float32), applied(register(reference, batch)))


def build(batches: list[np.ndarray], working_size: tuple[int, int], motion: str, rounds: int = ROUNDS) -> Reference:
    """The reference of good training images (pre-processed batches at the working size), aligned or not.

    Starts from their mean; then ``rounds`` times: register every image, move the frame to the
    parts' average pose (so the reference sits where the parts sit on average, not where one of
    them does) and average the images brought into that frame. Its confidence threshold comes
    from these images (:func:`threshold_from`); a fit sets it again from its held-out images.
    """
    size = registration_size(working_size)
    images = np.concatenate([grays(b, size) for b in batches])
    reference = Reference(motion, images.mean(axis=0).astype(np.float32), tuple(working_size))
    for _ in range(rounds):
        poses, _, _ = registration.register(reference.gray, reference.spectrum, images, motion, reference.max_angle)
        centre = poses.mean(axis=0)
        # Each image's pose measured from the average pose: composing with the inverse of the mean
        # (exact for shifts; for the small angles of a line, the angles add).
        frame = poses - centre
        moved = warps.to_reference(images[:, None], frame)[:, 0]
        reference = Reference(motion, moved.mean(axis=0).astype(np.float32), tuple(working_size))
    _, confidence, _ = registration.register(reference.gray, reference.spectrum, images, motion, reference.max_angle)
    return replace(reference, threshold=threshold_from(confidence))


def threshold_from(confidence: np.ndarray, margin: float = MARGIN) -> float:
    """The confidence below which a registration is not trusted, from good images the reference was not built on.

    ``1 - (1 + margin) (1 - worst)``: an image may be ``1 + margin`` times as far from a perfect
    match as the worst good one. How far good images sit from 1 differs between sets by a factor of
    tens (a sharp mean of aligned parts against a blurred one of parts turned every way), so the
    rule scales with it rather than subtracting a constant.

    >>> round(threshold_from(np.array([0.99, 0.995])), 4)
    0.98
    """
    worst = float(np.min(np.asarray(confidence, dtype=np.float64)))
    return 1.0 - (1.0 + margin) * (1.0 - worst)
