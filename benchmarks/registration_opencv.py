"""Prototype (research, OpenCV): register each image to a reference built from the good training images.

Small plain functions, NumPy and OpenCV only (no torch), so they can move into the package's
pre-processing and run before the ONNX graph on a line PC. Shapes and units:

- A *picture* is (H, W, 3) uint8 RGB at the model's working size (:func:`rgb_batch`: the resize
  of :func:`padim.images.preprocess` without its normalisation). Registration works on those, so
  its cost does not grow with the camera's resolution; a *batch* is the model's input (N, 3, H, W)
  float32 (:func:`normalise`).
- A *gray* is (h, w) float32 luminance at the registration size (by default half the working
  size, cv2.INTER_AREA).
- A *warp* W is a 2x3 float64 affine matrix mapping reference-frame pixel coordinates (x, y) to
  the input image's pixel coordinates, pixel centres at integers (OpenCV's convention). That is
  what ``cv2.findTransformECC(template=reference, input=image)`` estimates, so
  ``cv2.warpAffine(image, W, flags=WARP_INVERSE_MAP)`` brings the image into the reference
  frame, and ``cv2.warpAffine(map, W)`` (no flag) brings a map computed in the reference frame
  back into the input's coordinates.

Pipeline (:func:`preprocess_registered`): 8-bit pictures at the working size -> gray at half size
-> phase correlation (coarse shift, ``cv2.phaseCorrelate``) -> ECC at each pyramid level
(``cv2.findTransformECC``, MOTION_TRANSLATION or MOTION_EUCLIDEAN) -> warp scaled to the working
size -> picture warped into the reference frame (``cv2.warpAffine``, bilinear, border replicated)
-> ImageNet normalisation. After the model: :func:`warp_maps_back`. Fit: :func:`build_reference`
on the training pictures, :func:`confidence_threshold` on the held-out ones.

Confidence: ECC's final correlation coefficient (zero-mean normalised, in [-1, 1]) between the
reference and the registered image, 0 when ECC fails to converge or an image is flat (OpenCV
raises then). :func:`confidence_threshold` sets the rule from held-out good training images.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)

MOTIONS = {"translation": cv2.MOTION_TRANSLATION, "rigid": cv2.MOTION_EUCLIDEAN}


@dataclass
class Reference:
    """What registration keeps in a model: the reference and how to register against it.

    Attributes:
        grays: the reference at each pyramid level, coarsest first, (h_l, w_l) float32.
        work_size: (H, W) working size the warps are expressed in.
        motion: ``"translation"`` or ``"rigid"``.
        train_warps: (N, 2, 3) final warps of the training images (working-size pixels).
        train_confidence: (N,) their ECC coefficients against the final reference.
        threshold: the confidence threshold (:func:`confidence_threshold`), or None.
        max_shift, max_angle: the warp range beyond which a registration is not trusted
            (working-size pixels, degrees); None: no limit.
    """

    grays: list[np.ndarray]
    work_size: tuple[int, int]
    motion: str
    train_warps: np.ndarray = field(default_factory=lambda: np.zeros((0, 2, 3)))
    train_confidence: np.ndarray = field(default_factory=lambda: np.zeros(0))
    threshold: float | None = None
    max_shift: float | None = None
    max_angle: float | None = None


@dataclass
class Registration:
    """Per-image registration results for N images.

    Attributes:
        warps: (N, 2, 3) float64, reference -> input pixel coordinates at the working size.
        confidence: (N,) ECC coefficient (0 where ECC failed).
        response: (N,) phase correlation peak response (``cv2.phaseCorrelate``'s second value).
        valid: (N,) fraction of the reference frame that the input image covers.
        trusted: (N,) bool: usable, confidence at or above the threshold, warp within the range
            (:func:`trusted`); the others must fail closed.
        applied: (N, 2, 3) the warps actually applied: ``warps`` where usable (:func:`usable`), the
            identity where registration failed outright (that image goes through unregistered, so
            its map still lies where the photo is).
    """

    warps: np.ndarray
    confidence: np.ndarray
    response: np.ndarray
    valid: np.ndarray
    trusted: np.ndarray
    applied: np.ndarray


def rgb_batch(images, size: tuple[int, int]) -> np.ndarray:
    """Decoded RGB PIL images -> (N, H, W, 3) uint8 at the working size ``size`` = (H, W).

    The same resize as :func:`padim.images.preprocess` (Pillow, bilinear), stopped before the
    normalisation: registration and the warp into the reference frame work on these 8-bit
    pictures (``cv2.warpAffine`` on uint8 is several times cheaper than on float32 planes), then
    :func:`normalise` finishes the pre-processing.
    """
    from PIL import Image

    h, w = size
    return np.stack([np.asarray(image.convert("RGB").resize((w, h), Image.BILINEAR)) for image in images])


def normalise(rgb: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32, ImageNet-normalised: ``normalise(rgb_batch(x, s)) == preprocess(x, s)``."""
    batch = rgb.astype(np.float32) / np.float32(255.0)
    batch = (batch - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)


def gray_from_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, h, w) float32 luminance in [0, 1] at ``size`` (h, w).

    ``cv2.cvtColor(COLOR_RGB2GRAY)`` (Rec. 601 weights), then ``cv2.resize(INTER_AREA)`` in float32.
    """
    h, w = size
    out = np.empty((len(rgb), h, w), np.float32)
    for i, image in enumerate(rgb):
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32) * np.float32(1 / 255)
        out[i] = gray if gray.shape == (h, w) else cv2.resize(gray, (w, h), interpolation=cv2.INTER_AREA)
    return out


def warp_rgb_to_reference(rgb: np.ndarray, warps: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 pictures brought into the reference frame, same shape.

    ``cv2.warpAffine(..., flags=INTER_LINEAR | WARP_INVERSE_MAP, borderMode=BORDER_REPLICATE)`` per
    image (see :func:`warp_to_reference` for the border). An identity warp copies the image as is.
    """
    h, w = rgb.shape[1:3]
    out = np.empty_like(rgb)
    for i, (image, warp) in enumerate(zip(rgb, warps)):
        if np.array_equal(warp, np.eye(2, 3)):
            out[i] = image
        else:
            out[i] = cv2.warpAffine(image, warp, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                    borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
    return out


def preprocess_registered(reference: Reference, images, **options) -> tuple[np.ndarray, Registration]:
    """Decoded PIL images -> the model's input in the reference frame, and the :class:`Registration`.

    What a registered model's pre-processing does before the graph (NumPy, Pillow, OpenCV only):
    :func:`rgb_batch`, :func:`gray_from_rgb`, :func:`register_grays`, the usable/trusted decisions
    of :func:`register_rgb` (:func:`usable`, :func:`trusted`), :func:`warp_rgb_to_reference`, :func:`normalise`.

    Returns:
        ((N, 3, H, W) float32 for the graph, the registration: ``applied`` warps for
        :func:`warp_maps_back`, ``trusted`` for failing closed).
    """
    rgb = rgb_batch(images, reference.work_size)
    return register_rgb(reference, rgb, **options)


def register_rgb(reference: Reference, rgb: np.ndarray, **options) -> tuple[np.ndarray, Registration]:
    """:func:`preprocess_registered` from (N, H, W, 3) uint8 pictures already at the working size.

    Two decisions per image:

    - the warp is *applied* unless registration failed outright (:func:`usable`: ECC raised, or
      under ``MIN_VALID`` of the reference frame would come from the photo): a failed image goes
      through unregistered (identity warp), so its map still lies over the photo. (Falling back on
      every untrusted image instead cost bottle 0.006 to 0.02 pixel AUROC: a defect lowers the
      coefficient of a registration that is right.)
    - the result is *trusted* only if it is usable, its ECC coefficient reaches the threshold and
      (when set) the warp is within the range (:func:`trusted`); the caller must fail closed on
      the others (report them anomalous, or "cannot be checked").
    """
    grays = gray_from_rgb(rgb, reference.grays[-1].shape)
    warps, ccs, responses = register_grays(reference, grays, **options)
    valid = np.array([coverage(w, reference.work_size) for w in warps])
    applied = np.where(usable(ccs, valid)[:, None, None], warps, np.eye(2, 3)[None])
    info = Registration(warps, ccs, responses, valid, trusted(reference, warps, ccs, valid), applied)
    return normalise(warp_rgb_to_reference(rgb, applied)), info


def scale_matrix(size_from: tuple[int, int], size_to: tuple[int, int]) -> np.ndarray:
    """3x3 map of pixel coordinates at ``size_from`` = (h, w) to the same point at ``size_to``.

    Pixel centres at integers, images covering [-0.5, size - 0.5] (what cv2.resize assumes):
    x_to = (x_from + 0.5) * k - 0.5 with k = w_to / w_from (likewise y).
    """
    ky, kx = size_to[0] / size_from[0], size_to[1] / size_from[1]
    return np.array([[kx, 0, 0.5 * kx - 0.5], [0, ky, 0.5 * ky - 0.5], [0, 0, 1.0]])


def rescale_warp(warp: np.ndarray, size_from: tuple[int, int], size_to: tuple[int, int]) -> np.ndarray:
    """A 2x3 warp between frames of ``size_from`` expressed between the same frames at ``size_to``."""
    s = scale_matrix(size_from, size_to)
    full = s @ np.vstack([warp, [0, 0, 1]]) @ np.linalg.inv(s)
    return full[:2]


def compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """2x3 affine a o b (b first)."""
    return (np.vstack([a, [0, 0, 1]]) @ np.vstack([b, [0, 0, 1]]))[:2]


def invert(warp: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine (``cv2.invertAffineTransform``)."""
    return cv2.invertAffineTransform(np.asarray(warp, np.float64))


def warp_params(warp: np.ndarray, size: tuple[int, int]) -> tuple[float, float, float]:
    """(dx, dy, angle in degrees) of a near-rigid warp, the shift measured at the image centre.

    ``angle`` follows ``cv2.getRotationMatrix2D``: positive turns the content counter-clockwise as
    displayed. For a warp reference -> input, (dx, dy, angle) is how the part moved in the input.
    """
    h, w = size
    centre = np.array([(w - 1) / 2.0, (h - 1) / 2.0, 1.0])
    moved = warp @ centre
    angle = float(np.degrees(np.arctan2(-warp[0, 1], warp[0, 0])))
    return float(moved[0] - centre[0]), float(moved[1] - centre[1]), angle


def pyramid(gray: np.ndarray, levels: int) -> list[np.ndarray]:
    """``levels`` copies of a gray image, each half the size of the next, coarsest first (cv2.INTER_AREA)."""
    out = [gray]
    for _ in range(levels - 1):
        h, w = out[0].shape
        out.insert(0, cv2.resize(out[0], (max(8, w // 2), max(8, h // 2)), interpolation=cv2.INTER_AREA))
    return out


def estimate_warp(reference: list[np.ndarray], gray: np.ndarray, motion: str = "rigid",
                  iterations: int | tuple[int, ...] = (15, 5), eps: float = 1e-4, blur: int = 5, max_angle: float | None = None) -> tuple[np.ndarray, float, float]:  # fmt: skip
    """Warp from the reference frame to one image, at the finest pyramid level's size.

    Phase correlation (``cv2.phaseCorrelate`` with a Hanning window) at the coarsest level gives the
    starting shift; ``cv2.findTransformECC`` (``MOTION_TRANSLATION`` or ``MOTION_EUCLIDEAN``,
    Gaussian pre-filter ``blur`` taps) refines it at every level, coarse to fine.

    Args:
        reference: the reference pyramid, coarsest first (:func:`pyramid`).
        gray: (h, w) float32 image at the finest level's size.
        motion: ``"translation"`` or ``"rigid"`` (translation + rotation).
        iterations, eps: ECC's termination criteria (``cv2.TERM_CRITERIA_COUNT | EPS``); iterations
            per level, coarsest first (one int: every level), the last repeated for extra levels.
            Iterations at the coarse level are cheap (a quarter of the pixels); the fine level only
            polishes.
        max_angle: rigid only: a rotation found beyond this many degrees is not believed (a part
            turned every way, or a round part whose angle the image does not fix): the image is
            registered again by translation alone, from the same starting shift.

    Returns:
        (warp 2x3 float64 at the finest level, ECC coefficient (0.0 if ECC raised), phase
        correlation response).
    """
    levels = pyramid(gray, len(reference))
    window = cv2.createHanningWindow(levels[0].shape[::-1], cv2.CV_32F)
    (sx, sy), response = cv2.phaseCorrelate(reference[0], levels[0], window)
    start = np.array([[1.0, 0.0, sx], [0.0, 1.0, sy]])
    warp, cc = _ecc_pyramid(reference, levels, start, motion, iterations, eps, blur)
    if motion == "rigid" and max_angle is not None and abs(np.degrees(np.arctan2(warp[1, 0], warp[0, 0]))) > max_angle:
        warp, cc = _ecc_pyramid(reference, levels, start, "translation", iterations, eps, blur)
    return warp, cc, float(response)


def _ecc_pyramid(reference, levels, warp, motion, iterations, eps, blur) -> tuple[np.ndarray, float]:
    """``cv2.findTransformECC`` coarse to fine from ``warp`` (at the coarsest level); (warp, coefficient)."""
    cc = 0.0
    counts = (iterations,) if isinstance(iterations, int) else tuple(iterations)
    for i, (ref, img) in enumerate(zip(reference, levels)):
        if i:
            warp = rescale_warp(warp, reference[i - 1].shape, ref.shape)
        criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, int(counts[min(i, len(counts) - 1)]), eps)
        try:
            cc, found = cv2.findTransformECC(ref, img, warp.astype(np.float32), MOTIONS[motion], criteria, None, blur)
            warp = found.astype(np.float64)
        except cv2.error:  # no convergence, or a flat image: not trusted
            cc = 0.0
    return warp, float(cc)


def coverage(warp: np.ndarray, size: tuple[int, int]) -> float:
    """Fraction of the reference frame (h, w) whose pixels come from inside the input image.

    Counted on a grid of at most 64 x 64 points: the warp sends reference pixels to input
    pixels; a point counts when it lands within [-0.5, size - 0.5].
    """
    h, w = size
    ys, xs = np.meshgrid(np.linspace(0, h - 1, min(h, 64)), np.linspace(0, w - 1, min(w, 64)), indexing="ij")
    pts = warp @ np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)])
    inside = (pts[0] >= -0.5) & (pts[0] <= w - 0.5) & (pts[1] >= -0.5) & (pts[1] <= h - 0.5)
    return float(inside.mean())


def warp_to_reference(image: np.ndarray, warp: np.ndarray, border: int = cv2.BORDER_REPLICATE) -> np.ndarray:
    """One pre-processed image (3, H, W) float32 brought into the reference frame (same size).

    ``cv2.warpAffine(..., flags=INTER_LINEAR | WARP_INVERSE_MAP)``: each reference pixel v takes
    the input's bilinear value at W v. Reference pixels whose source lies outside the input (no
    image data) repeat the input's nearest edge pixel (``BORDER_REPLICATE``): the surroundings
    continue outwards, which the Gaussians of edge patches have seen in training (the training
    images are warped the same way).
    """
    _, h, w = image.shape
    hwc = np.ascontiguousarray(image.transpose(1, 2, 0))
    out = cv2.warpAffine(hwc, warp, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=border)
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def warp_batch_to_reference(batch: np.ndarray, warps: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) float32 pre-processed images -> the same in the reference frame (:func:`warp_to_reference`)."""
    return np.stack([warp_to_reference(image, warp) for image, warp in zip(batch, warps)])


def warp_maps_back(maps: np.ndarray, warps: np.ndarray) -> np.ndarray:
    """Anomaly maps (N, H, W) float32 computed in the reference frame -> in each input image's coordinates.

    ``cv2.warpAffine(map, W)`` (W: reference -> input), bilinear: input pixel u takes the map's
    value at W^-1 u. Input pixels that fall outside the reference frame (the part moved so far that
    the reference never saw that area) take the nearest map value (``BORDER_REPLICATE``).
    """
    _, h, w = maps.shape
    return np.stack([cv2.warpAffine(m, warp, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                     for m, warp in zip(maps, warps)])  # fmt: skip


def reg_size(work_size: tuple[int, int], scale: float) -> tuple[int, int]:
    """Registration size (h, w): the working size times ``scale``, at least 16 px a side."""
    return max(16, round(work_size[0] * scale)), max(16, round(work_size[1] * scale))


def register_grays(reference: Reference, grays: np.ndarray, **options) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Warps at the working size (N, 2, 3), ECC coefficients (N,) and phase responses (N,) for (N, h, w) grays."""
    size = reference.grays[-1].shape
    warps, ccs, responses = [], [], []
    for gray in grays:
        warp, cc, response = estimate_warp(reference.grays, gray, reference.motion, **options)
        warps.append(rescale_warp(warp, size, reference.work_size))
        ccs.append(cc)
        responses.append(response)
    return np.array(warps), np.array(ccs), np.array(responses)


def mean_rigid(warps: np.ndarray) -> np.ndarray:
    """The mean of near-rigid 2x3 warps: mean angle and mean translation, as one rigid 2x3 warp."""
    angle = np.mean(np.arctan2(warps[:, 1, 0], warps[:, 0, 0]))
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, warps[:, 0, 2].mean()], [s, c, warps[:, 1, 2].mean()]])


def build_reference(grays: np.ndarray, work_size: tuple[int, int], motion: str = "rigid", levels: int = 2,
                    rounds: int = 3, **options) -> Reference:  # fmt: skip
    """The reference of a set of good training images, which need not be aligned.

    Starts from their pixel-wise mean (sharp for an aligned set; for a set of randomly placed parts
    a blurred image centred on their average pose), then ``rounds`` times: register every image to
    the reference, re-centre the warps on their mean (so that the reference frame sits at the
    parts' average pose, not at one image's), and average the images warped into that frame
    (``cv2.warpAffine``). A last registration gives each training image's warp and confidence.

    Args:
        grays: (N, h, w) float32 training pictures at the registration size (:func:`gray_from_rgb`).
        work_size: (H, W) working size the warps are expressed in.
        motion: ``"translation"`` or ``"rigid"``.
        levels: pyramid levels (each half the next).

    Returns:
        A :class:`Reference` without threshold (see :func:`confidence_threshold`).
    """
    mean = grays.mean(axis=0).astype(np.float32)
    reference = Reference(pyramid(mean, levels), tuple(work_size), motion)
    size = grays.shape[1:]
    for _ in range(rounds):
        warps, _, _ = register_grays(reference, grays, **options)
        small = np.array([rescale_warp(w, work_size, size) for w in warps])
        centre = invert(mean_rigid(small))
        small = np.array([compose(w, centre) for w in small])
        warped = [cv2.warpAffine(g, w, g.shape[::-1], flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                 borderMode=cv2.BORDER_REPLICATE) for g, w in zip(grays, small)]  # fmt: skip
        reference = Reference(pyramid(np.mean(warped, axis=0).astype(np.float32), levels), tuple(work_size), motion)
    reference.train_warps, reference.train_confidence, _ = register_grays(reference, grays, **options)
    return reference


def confidence_threshold(confidences: np.ndarray, margin: float = 1.0) -> float:
    """The ECC coefficient below which a registration is not trusted, from good images alone.

    threshold = 1 - (1 + margin) * (1 - min(confidences)): an image may be up to ``1 + margin``
    times as far from a perfect match (coefficient 1) as the worst good image. The distance to 1
    differs from set to set by a factor of 30 (0.004 to 0.015 for MVTec bottle against a sharp
    mean, 0.10 to 0.15 for hazelnuts turned every way against a blurred one), so the rule scales
    with it rather than subtracting a constant. Held-out good images (not in the reference) should
    give ``confidences``: training images are slightly optimistic, being part of the mean.
    """
    worst = float(np.min(np.asarray(confidences, np.float64)))
    return 1.0 - (1.0 + margin) * (1.0 - worst)


#: Least fraction of the reference frame that must come from the photo (:func:`coverage`).
MIN_VALID = 0.75


def usable(confidence: np.ndarray, valid: np.ndarray, min_valid: float = MIN_VALID) -> np.ndarray:
    """(N,) bool: registration did not fail outright (ECC converged, coverage >= ``min_valid``)."""
    return (np.asarray(confidence) > 0) & (np.asarray(valid) >= min_valid)


def trusted(reference: Reference, warps: np.ndarray, confidence: np.ndarray, valid: np.ndarray,
            min_valid: float = MIN_VALID) -> np.ndarray:  # fmt: skip
    """(N,) bool: usable, confidence at or above the threshold, warp within the range (when set).

    With no threshold and no range set on ``reference``, every usable registration is trusted.
    """
    ok = usable(confidence, valid, min_valid)
    if reference.threshold is not None:
        ok &= np.asarray(confidence) >= reference.threshold
    params = np.array([warp_params(w, reference.work_size) for w in warps]).reshape(-1, 3)
    if reference.max_shift is not None:
        ok &= np.hypot(params[:, 0], params[:, 1]) <= reference.max_shift
    if reference.max_angle is not None:
        ok &= np.abs(params[:, 2]) <= reference.max_angle
    return ok
