"""Moving images and maps between an input's frame and the model's reference frame (rigid motions, bilinear).

A *pose* (dx, dy, angle) says how a part moved in an input image against the reference: the
reference-frame point p lands at ``R(angle) (p - c) + c + (dx, dy)`` in the input, with c the
image's centre, pixel centres at integers, x to the right and y down, and a positive angle turning
the part counter-clockwise as displayed (OpenCV's ``getRotationMatrix2D`` convention).
:func:`to_reference` brings an image into the reference frame (each reference pixel takes the
input's bilinear value where it lands; beyond the input's border the nearest edge pixel repeats,
as ``cv2.warpAffine(..., WARP_INVERSE_MAP, BORDER_REPLICATE)`` does), and :func:`to_input` brings a
map computed in the reference frame back to the input's coordinates, so a defect is drawn where it
is on the photo that was taken. NumPy only: the runtime install has no OpenCV (the tests compare
with it).

Shapes: images (N, C, H, W) float32, maps (N, H, W), poses (N, 3) float64 in pixels of that size.
"""

from __future__ import annotations

import math

import numpy as np

#: A pose that moves nothing.
IDENTITY = (0.0, 0.0, 0.0)


def matrix(pose: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The 2x3 affine matrix of a pose at an image size (H, W): reference (x, y, 1) -> input (x, y).

    >>> (matrix(np.array([2.0, -1.0, 0.0]), (5, 5)) + 0.0).tolist()
    [[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]]
    """
    dx, dy, angle = (float(v) for v in pose)
    height, width = size
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    # Counter-clockwise as displayed, with y pointing down: x' = c x + s y, y' = -s x + c y about the centre.
    rotation = np.array([[c, s], [-s, c]])
    shift = np.array([cx + dx, cy + dy]) - rotation @ np.array([cx, cy])
    return np.hstack([rotation, shift[:, None]])


def inverse(pose: np.ndarray) -> np.ndarray:
    """The pose that undoes ``pose`` (the input's frame seen from the reference).

    >>> (inverse(np.array([3.0, 1.0, 0.0])) + 0.0).tolist()
    [-3.0, -1.0, 0.0]
    """
    dx, dy, angle = (float(v) for v in pose)
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    # p_in = R (p_ref - c) + c + d  =>  p_ref = R^T (p_in - c - d) + c = R^T (p_in - c) + c - R^T d
    back = -np.array([[c, -s], [s, c]]) @ np.array([dx, dy])
    return np.array([back[0], back[1], -angle])


def _sample(images: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Bilinear samples of (C, H, W) at float coordinates (h, w) each, clamped to the border (replicate)."""
    _, height, width = images.shape
    xs = np.clip(xs, 0.0, width - 1.0)
    ys = np.clip(ys, 0.0, height - 1.0)
    x0 = np.minimum(np.floor(xs).astype(np.int64), width - 2) if width > 1 else np.zeros(xs.shape, np.int64)
    y0 = np.minimum(np.floor(ys).astype(np.int64), height - 2) if height > 1 else np.zeros(ys.shape, np.int64)
    fx = (xs - x0).astype(np.float32)
    fy = (ys - y0).astype(np.float32)
    x1, y1 = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)
    top = images[:, y0, x0] * (1 - fx) + images[:, y0, x1] * fx
    bottom = images[:, y1, x0] * (1 - fx) + images[:, y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def _shift(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """(C, H, W) sampled at (x + dx, y + dy), bilinear, border replicated: a translation, one axis at a time."""
    out = image
    for axis, offset in ((2, dx), (1, dy)):
        size = out.shape[axis]
        position = np.clip(np.arange(size) + offset, 0.0, size - 1.0)
        low = np.floor(position).astype(np.int64)
        high = np.minimum(low + 1, size - 1)
        frac = (position - low).astype(np.float32)
        shape = [1, 1, 1]
        shape[axis] = size
        frac = frac.reshape(shape)
        lows = np.take(out, low, axis=axis)
        out = lows + frac * (np.take(out, high, axis=axis) - lows)
    return out


def resample(images: np.ndarray, poses: np.ndarray) -> np.ndarray:
    """(N, C, H, W) sampled at each pose's landing points: pixel p takes the value at ``matrix(pose) p``."""
    images = np.asarray(images, dtype=np.float32)
    out = np.empty_like(images)
    height, width = images.shape[2:]
    grid = None
    for i, pose in enumerate(np.asarray(poses, dtype=np.float64).reshape(-1, 3)):
        if pose[2] == 0.0:
            out[i] = _shift(images[i], pose[0], pose[1])
            continue
        if grid is None:
            ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
            grid = np.stack([xs, ys, np.ones_like(xs)])
        landing = np.tensordot(matrix(pose, (height, width)), grid, axes=1)
        out[i] = _sample(images[i], landing[0], landing[1])
    return out


def to_reference(images: np.ndarray, poses: np.ndarray) -> np.ndarray:
    """Images (N, C, H, W) brought into the reference frame: reference pixel p takes the input's value at pose(p)."""
    return resample(images, poses)


def to_input(maps: np.ndarray, poses: np.ndarray) -> np.ndarray:
    """Maps (N, H, W) computed in the reference frame, brought back to each input's coordinates."""
    maps = np.asarray(maps, dtype=np.float32)
    back = np.array([inverse(p) for p in np.asarray(poses, dtype=np.float64).reshape(-1, 3)])
    return resample(maps[:, None], back)[:, 0]


def coverage(pose: np.ndarray, size: tuple[int, int], points: int = 32) -> float:
    """The share of the reference frame (H, W) that lands inside the input image (the rest repeats its border).

    >>> coverage(np.array([0.0, 0.0, 0.0]), (64, 64)), round(coverage(np.array([32.0, 0.0, 0.0]), (64, 64)), 2)
    (1.0, 0.5)
    """
    height, width = size
    ys, xs = np.meshgrid(np.linspace(0, height - 1, points), np.linspace(0, width - 1, points), indexing="ij")
    landing = matrix(pose, size) @ np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)])
    inside = (landing[0] >= -0.5) & (landing[0] <= width - 0.5) & (landing[1] >= -0.5) & (landing[1] <= height - 0.5)
    return float(inside.mean())
