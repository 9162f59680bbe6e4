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

import numpy as np

from padim.align.warps import coverage, resample

#: Subpixel refinement: the peak is located to 1/UPSAMPLE of a pixel.
UPSAMPLE = 20


def _window(shape: tuple[int, int]) -> np.ndarray:
    """A 2-D Hann window: the images' borders fade out, so their wrap-around does not make a false peak."""
    return np.outer(np.hanning(shape[0]), np.hanning(shape[1])).astype(np.float32)


def spectrum(grays: np.ndarray) -> np.ndarray:
    """The windowed, zero-mean 2-D FFT of (..., h, w) grays, complex64."""
    grays = np.asarray(grays, dtype=np.float32)
    centred = grays - grays.mean(axis=(-2, -1), keepdims=True)
    return np.fft.fft2(centred * _window(grays.shape[-2:])).astype(np.complex64)


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
    product = spectrum(gray) * np.conj(reference_spectrum)
    product /= np.maximum(np.abs(product), 1e-12)
    correlation = np.fft.ifft2(product)
    height, width = correlation.shape
    row, col = np.unravel_index(int(np.argmax(np.abs(correlation))), correlation.shape)
    row, col = (row - height if row > height // 2 else row), (col - width if col > width // 2 else col)
    # Refine on a 1.5-pixel square around the coarse peak, UPSAMPLE points per pixel.
    steps = (np.arange(int(np.ceil(1.5 * UPSAMPLE))) - int(np.ceil(1.5 * UPSAMPLE)) // 2) / UPSAMPLE
    fine = np.abs(_inverse_dft_at(product, row + steps, col + steps)) / product.size
    i, j = np.unravel_index(int(np.argmax(fine)), fine.shape)
    return float(col + steps[j]), float(row + steps[i]), float(fine[i, j])


def correlation(reference: np.ndarray, gray: np.ndarray, pose: np.ndarray) -> float:
    """The zero-mean normalised correlation of the reference and ``gray`` brought into its frame, where ``gray`` covers it.

    Returns 0 for a uniform image (nothing to correlate).
    """
    size = reference.shape
    moved = resample(gray[None, None], pose[None])[0, 0]
    height, width = size
    ys, xs = np.mgrid[0:height, 0:width]
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    c, s = np.cos(np.radians(pose[2])), np.sin(np.radians(pose[2]))
    lx = c * (xs - cx) + s * (ys - cy) + cx + pose[0]
    ly = -s * (xs - cx) + c * (ys - cy) + cy + pose[1]
    inside = (lx >= -0.5) & (lx <= width - 0.5) & (ly >= -0.5) & (ly <= height - 0.5)
    if inside.sum() < 16:
        return 0.0
    a, b = reference[inside].astype(np.float64), moved[inside].astype(np.float64)
    a, b = a - a.mean(), b - b.mean()
    norm = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / norm) if norm > 1e-12 else 0.0


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


def rigid_pose(reference: np.ndarray, reference_spectrum: np.ndarray, gray: np.ndarray, max_angle: float,
               step: float = 1.0) -> tuple[np.ndarray, float]:  # fmt: skip
    """(pose, confidence) with a rotation within +-``max_angle`` degrees: the angle whose registration correlates best.

    Candidates every ``step`` degrees; a parabola through the best three refines the angle, and the
    refined angle is kept if it correlates at least as well.
    """
    angles = np.arange(-max_angle, max_angle + step / 2, step)
    found = [_pose_at(reference, reference_spectrum, gray, float(a)) for a in angles]
    values = np.array([conf for _, conf in found])
    k = int(np.argmax(values))
    best = found[k]
    refined = _vertex(angles, values, k)
    if refined != angles[k]:
        candidate = _pose_at(reference, reference_spectrum, gray, refined)
        best = candidate if candidate[1] >= best[1] else best
    return best


def register(reference: np.ndarray, reference_spectrum: np.ndarray, grays: np.ndarray, motion: str,
             max_angle: float = 10.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Poses (N, 3) (dx, dy, angle at the registration size), confidences (N,) and coverages (N,) of grays.

    Args:
        reference: (h, w) the reference gray; reference_spectrum: its :func:`spectrum`.
        grays: (N, h, w) inputs at the same size.
        motion: ``"translate"`` (shift only) or ``"rigid"`` (shift and rotation within ``max_angle`` degrees).
    """
    poses, confidences, covered = [], [], []
    for gray in np.asarray(grays, dtype=np.float32):
        if motion == "rigid":
            pose, confidence = rigid_pose(reference, reference_spectrum, gray, max_angle)
        else:
            pose, confidence = _pose_at(reference, reference_spectrum, gray, 0.0)
        poses.append(pose)
        confidences.append(confidence)
        covered.append(coverage(pose, reference.shape))
    return np.array(poses).reshape(-1, 3), np.array(confidences), np.array(covered)
