"""Where a part sits in an image: its pose against the reference, by phase correlation, and how sure that is.

Translation comes from phase correlation (Kuglin and Hines 1975): the normalised cross-power
spectrum of two images that differ by a shift is a plane wave, whose inverse transform peaks at
the shift; the peak is refined to a twentieth of a pixel by an upsampled DFT around it
(Guizar-Sicairos, Thurman and Fienup, Opt. Lett. 33, 2008), as
``skimage.registration.phase_cross_correlation`` and ``cv2.phaseCorrelate`` do (the tests compare
with both). The transforms are NumPy's FFT: the runtime install has neither OpenCV nor SciPy.
A rotation (``rigid``) is found by trying angles: the input is turned back by each candidate and
phase-correlated, each candidate's registration is scored by its correlation with the reference,
and a parabola through the best three refines the angle.

Confidence is the zero-mean normalised correlation between the reference and the input brought into
the reference frame, over the part of the frame the input covers (1 for the same picture): the
coefficient ECC maximises (Evangelidis and Psarakis 2008). A part that is not the trained part, an
empty or uniform frame, or a part moved out of view scores low.

Grays are (N, h, w) float32 luminance at the registration size (:func:`padim.align.reference.grays`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from padim.align.warps import coverage, resample

#: Subpixel refinement: the peak is located to 1/UPSAMPLE of a pixel (in two rounds: fewer DFT points).
UPSAMPLE = 20


def _window(shape: tuple[int, int]) -> np.ndarray:
    """A 2-D Hann window: the images' borders fade out, so their wrap-around does not make a false peak."""
    return np.outer(np.hanning(shape[0]), np.hanning(shape[1])).astype(np.float32)


def spectrum(grays: np.ndarray) -> np.ndarray:
    """The windowed, zero-mean 2-D FFT of (..., h, w) grays, complex64."""
    grays = np.asarray(grays, dtype=np.float32)
    centred = grays - grays.mean(axis=(-2, -1), keepdims=True)
    return np.fft.fft2(centred * _window(grays.shape[-2:])).astype(np.complex64)


#: Whitening floor, relative to the strongest frequency: frequencies where the images hold almost no
#: energy would otherwise weigh as much as the rest and bury the peak in noise (smooth parts).
FLOOR = 0.01


def _whitened(product: np.ndarray) -> np.ndarray:
    """The cross-power spectrum normalised to unit magnitude, regularised (:data:`FLOOR`), over the last two axes."""
    magnitude = np.abs(product)
    return product / (magnitude + FLOOR * magnitude.max(axis=(-2, -1), keepdims=True) + 1e-30)


def _inverse_dft_at(product: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The inverse DFT of ``product`` (h, w) evaluated at fractional positions: (len(rows), len(cols)).

    Two small matrix products instead of an FFT of an array many times larger: how the peak is
    refined (Guizar-Sicairos et al. 2008).
    """
    height, width = product.shape
    row_kernel = np.exp(2j * np.pi * rows[:, None] * np.fft.fftfreq(height)[None, :])
    col_kernel = np.exp(2j * np.pi * np.fft.fftfreq(width)[:, None] * cols[None, :])
    # einsum, not @: matrices this small run faster on one thread than on BLAS's pool.
    return np.einsum("ik,kj->ij", row_kernel, np.einsum("kl,lj->kj", product, col_kernel))


def shift(reference_spectrum: np.ndarray, gray: np.ndarray) -> tuple[float, float, float]:
    """(dx, dy, peak): how far ``gray``'s content moved from the reference's, and the correlation peak's height.

    Args:
        reference_spectrum: :func:`spectrum` of the reference, (h, w).
        gray: (h, w) the input at the same size.

    Returns:
        (dx, dy) in pixels of that size, to 1/:data:`UPSAMPLE` pixel; peak: the normalised
        cross-correlation's maximum (near 1 for a clean shift, near 0 for unrelated images).
    """
    product = _whitened(spectrum(gray) * np.conj(reference_spectrum))
    correlation = np.fft.ifft2(product)
    height, width = correlation.shape
    row, col = np.unravel_index(int(np.argmax(np.abs(correlation))), correlation.shape)
    peak = np.array([row - height if row > height // 2 else row, col - width if col > width // 2 else col], float)
    # Refine around the coarse peak: a 1.5-pixel square at a quarter pixel, then half a pixel at 1/UPSAMPLE.
    for span, spacing in ((1.5, 0.25), (0.5, 1.0 / UPSAMPLE)):
        steps = np.arange(-span / 2, span / 2 + spacing / 2, spacing)
        fine = np.abs(_inverse_dft_at(product, peak[0] + steps, peak[1] + steps)) / product.size
        i, j = np.unravel_index(int(np.argmax(fine)), fine.shape)
        peak = peak + np.array([steps[i], steps[j]])
    return float(peak[1]), float(peak[0]), float(fine[i, j])


@functools.lru_cache(maxsize=8)
def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (x, y) of an image, centred on its middle: reused for every image of that size."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return xs - (width - 1) / 2.0, ys - (height - 1) / 2.0


def correlation(reference: np.ndarray, gray: np.ndarray, pose: np.ndarray) -> float:
    """The zero-mean normalised correlation of the reference and ``gray`` brought into its frame, where ``gray`` covers it.

    Returns 0 for a uniform image (nothing to correlate).
    """
    height, width = reference.shape
    moved = resample(gray[None, None], pose[None])[0, 0]
    xs, ys = _grid(height, width)
    c, s = np.float32(np.cos(np.radians(pose[2]))), np.float32(np.sin(np.radians(pose[2])))
    lx = c * xs + s * ys + np.float32(pose[0])
    ly = -s * xs + c * ys + np.float32(pose[1])
    inside = (np.abs(lx) <= width / 2.0) & (np.abs(ly) <= height / 2.0)
    if inside.sum() < 16:
        return 0.0
    a, b = reference[inside].astype(np.float64), moved[inside].astype(np.float64)
    a, b = a - a.mean(), b - b.mean()
    norm = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / norm) if norm > 1e-12 else 0.0


def shrink(gray: np.ndarray, factor: int) -> np.ndarray:
    """(..., h, w) box-averaged by ``factor`` on each side (the edges that do not fill a box dropped)."""
    h, w = gray.shape[-2] // factor * factor, gray.shape[-1] // factor * factor
    boxes = gray[..., :h, :w].reshape(*gray.shape[:-2], h // factor, factor, w // factor, factor)
    return boxes.mean(axis=(-3, -1))


def _pose_at(reference: np.ndarray, reference_spectrum: np.ndarray, gray: np.ndarray, angle: float) -> tuple:
    """(pose, confidence) of ``gray`` for one rotation candidate: turned back by ``angle``, then phase-correlated."""
    turned = gray if angle == 0.0 else resample(gray[None, None], np.array([[0.0, 0.0, angle]]))[0, 0]
    dx, dy, _ = shift(reference_spectrum, turned)
    # The shift found on the turned-back input, as the pose of the input: p_in = R (p_ref - c) + c + R d.
    c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
    pose = np.array([c * dx + s * dy, -s * dx + c * dy, angle])
    return pose, correlation(reference, gray, pose)


def _vertex(angles: np.ndarray, values: np.ndarray, k: int) -> float:
    """The angle at the top of the parabola through the k-th value and its neighbours (the k-th angle at an end)."""
    if not 0 < k < len(angles) - 1:
        return float(angles[k])
    low, mid, high = values[k - 1], values[k], values[k + 1]
    curve = low - 2 * mid + high
    step = angles[k + 1] - angles[k]
    return float(angles[k] + (0.5 * (low - high) / curve * step if curve < 0 else 0.0))


#: The coarse angle search runs on images this many times smaller (at least 32 px a side).
SEARCH_SHRINK = 2


@dataclass(frozen=True)
class AngleSearch:
    """The reference turned by each candidate angle, small, as spectra: built once per reference.

    Attributes:
        angles: (K,) candidate angles in degrees.
        factor: how many times smaller than the registration size.
        spectra: (K, h, w) :func:`spectrum` of the small reference turned by each angle.
    """

    angles: np.ndarray
    factor: int
    spectra: np.ndarray

    @classmethod
    def make(cls, reference: np.ndarray, max_angle: float, step: float = 1.0) -> AngleSearch:
        factor = max(1, min(SEARCH_SHRINK, min(reference.shape) // 32))
        small = shrink(reference, factor)
        angles = np.arange(-max_angle, max_angle + step / 2, step)
        # The reference point p lands at R(a) p in an input turned by a: sample the reference at R(-a) p.
        turned = resample(np.repeat(small[None, None], len(angles), 0), np.stack(
            [np.zeros_like(angles), np.zeros_like(angles), -angles], axis=1))[:, 0]  # fmt: skip
        return cls(angles, factor, spectrum(turned))


def rigid_pose(reference: np.ndarray, reference_spectrum: np.ndarray, gray: np.ndarray,
               search: AngleSearch) -> tuple[np.ndarray, float]:  # fmt: skip
    """(pose, confidence) with a rotation within the search's range: the angle whose registration correlates best.

    Coarse: the small input is phase-correlated with the small reference turned by every candidate
    angle at once (one FFT of the input), a parabola through the three highest peaks giving the
    angle. Fine, at the registration size: three angles half a step apart around it, each scored by
    the correlation of its registration, refined by a parabola.
    """
    product = _whitened(spectrum(shrink(gray, search.factor))[None] * np.conj(search.spectra))
    peaks = np.abs(np.fft.ifft2(product)).reshape(len(search.angles), -1).max(axis=1)
    centre = _vertex(search.angles, peaks, int(np.argmax(peaks)))
    step = float(search.angles[1] - search.angles[0]) if len(search.angles) > 1 else 1.0
    fine = centre + np.array([-step / 2, 0.0, step / 2])
    found = [_pose_at(reference, reference_spectrum, gray, float(a)) for a in fine]
    refined = _vertex(fine, np.array([conf for _, conf in found]), 1)
    best = max(found, key=lambda item: item[1])
    if refined not in fine:
        candidate = _pose_at(reference, reference_spectrum, gray, refined)
        best = candidate if candidate[1] >= best[1] else best
    return best


def register(reference: np.ndarray, reference_spectrum: np.ndarray, grays: np.ndarray, motion: str,
             max_angle: float = 5.0, search: AngleSearch | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Poses (N, 3) (dx, dy, angle at the registration size), confidences (N,) and coverages (N,) of grays.

    Args:
        reference: (h, w) the reference gray; reference_spectrum: its :func:`spectrum`.
        grays: (N, h, w) inputs at the same size.
        motion: ``"translate"`` (shift only) or ``"rigid"`` (shift and rotation within ``max_angle`` degrees).
        search: the rigid search's turned references (:class:`AngleSearch`; None: made here).
    """
    if motion == "rigid" and search is None:
        search = AngleSearch.make(reference, max_angle)
    poses, confidences, covered = [], [], []
    for gray in np.asarray(grays, dtype=np.float32):
        if motion == "rigid":
            pose, confidence = rigid_pose(reference, reference_spectrum, gray, search)
        else:
            pose, confidence = _pose_at(reference, reference_spectrum, gray, 0.0)
        poses.append(pose)
        confidences.append(confidence)
        covered.append(coverage(pose, reference.shape))
    return np.array(poses).reshape(-1, 3), np.array(confidences), np.array(covered)
