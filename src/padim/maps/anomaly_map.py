"""From patch embeddings to an anomaly map: Mahalanobis distance, up-sampling, Gaussian blur.

PaDiM (Defard et al. 2020, https://arxiv.org/abs/2011.08785) scores patch position (i, j)
of a test image by the Mahalanobis distance of its embedding x_ij to the Gaussian
N(mu_ij, Sigma_ij) learnt from normal images (Eq. 2):

    M(x_ij) = sqrt((x_ij - mu_ij)^T Sigma_ij^-1 (x_ij - mu_ij))

The map of distances is up-sampled (bilinear) to the image size and smoothed with a Gaussian
of standard deviation ``sigma``. Both steps are linear and separable, so they are one pair of
small matrices (:func:`resize_blur_matrix`). The functions here are the only definitions;
:class:`padim.graph.modules.Scorer` traces them into the inference graph, and
:class:`AnomalyMapGenerator` keeps anomalib's API (``anomalib.models.padim.maps.anomaly_map``) on
top of them.

Shapes: N images, D kept channels, H x W feature grid, P = H * W patches. Embeddings and
statistics are patch-first: patches (P, N, D), mean (P, D), precision factor (P, D, D); anomalib's
layouts are (N, D, H, W) for the embedding and (D, P) for the mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from padim.errors import OptionError
from padim.features.embedding import to_patch_layout
from padim.io.images import as_size
from padim.stats.gaussian import unpack_triangular

#: Float32 bytes of the float16 factors cast at once by :func:`mahalanobis`.
CAST_CHUNK_BYTES = 16 * 2**20


def mahalanobis(patches: Tensor, mean: Tensor, precision_cholesky: Tensor) -> Tensor:
    """Mahalanobis distance of every patch embedding to its own Gaussian (PaDiM Eq. 2).

    With the precision factored as C C^T, (x - mu)^T Sigma^-1 (x - mu) = ||(x - mu) C||^2: one
    batched matmul over all patches and a norm (ONNX ``ReduceL2``), instead of a product with
    the precision, an element-wise product and a sum.

    Factors held in float16 (a model too large for float32 factors in memory, see
    :func:`padim.model.memory.runtime_dtype`) are cast to the patches' dtype a chunk of patches at a
    time, so the float32 copy never exists whole; factors given packed, (P, D(D+1)/2)
    (:func:`padim.stats.gaussian.pack_triangular`), are unpacked a chunk at a time likewise (eager
    PyTorch only: how a fit sets its threshold with no unpacked copy). The arithmetic is float32.

    Args:
        patches: (P, N, D) patch-first embeddings of N images.
        mean: (P, D) per-patch means.
        precision_cholesky: (P, D, D) per-patch factors C of the inverse covariances,
            precision = C C^T (:func:`padim.stats.gaussian.precision_cholesky_from_stats`; any C
            with that product, e.g. ``torch.linalg.cholesky(precision)``), or their upper
            triangles packed, (P, D(D+1)/2).

    Returns:
        (P, N) distances.

    >>> x = torch.tensor([[[3.0, 4.0]]])
    >>> mahalanobis(x, torch.zeros(1, 2), torch.eye(2)[None]).item()
    5.0
    """
    centred = patches - mean[:, None, :]
    packed = precision_cholesky.dim() == 2
    if precision_cholesky.dtype == patches.dtype and not packed:
        return torch.linalg.vector_norm(torch.bmm(centred, precision_cholesky), dim=2)
    n_patches, dim = mean.shape
    step = max(1, CAST_CHUNK_BYTES // (dim * dim * 4))
    parts = []
    for start in range(0, n_patches, step):
        factor = precision_cholesky[start : start + step]
        factor = unpack_triangular(factor, patches.dtype) if packed else factor.to(patches.dtype)
        parts.append(torch.linalg.vector_norm(torch.bmm(centred[start : start + step], factor), dim=2))
    return torch.cat(parts)


def blur_radius(sigma: float) -> int:
    """Radius in pixels of the Gaussian kernel for ``sigma``: anomalib's ``2 * int(4 * sigma + 0.5) + 1`` taps.

    >>> blur_radius(4)
    16
    """
    return int(4.0 * float(sigma) + 0.5)


def check_blur(size: Sequence[int], sigma: float) -> None:
    """Refuse maps that reflect padding cannot blur: each side must exceed the kernel's radius.

    Raises:
        OptionError: naming sigma, the radius and the size.
    """
    if not (isinstance(sigma, (int, float)) and not isinstance(sigma, bool) and sigma > 0 and math.isfinite(sigma)):
        raise OptionError(f"sigma must be a finite number > 0, got {sigma!r}")
    radius = blur_radius(sigma)
    if min(size) <= radius:
        raise OptionError(f"sigma={sigma} needs maps larger than {radius} pixels per side, got {tuple(size)}")


def gaussian_kernel1d(sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian kernel of ``2 * blur_radius(sigma) + 1`` taps, float64.

    >>> k = gaussian_kernel1d(1.0); k.shape[0], round(float(k.sum()), 6), int(k.argmax())
    (9, 1.0, 4)
    """
    if not sigma > 0:
        raise OptionError(f"sigma must be > 0, got {sigma!r}")
    offsets = np.arange(2 * blur_radius(sigma) + 1) - blur_radius(sigma)
    kernel = np.exp(-(offsets**2) / (2.0 * float(sigma) ** 2))
    return kernel / kernel.sum()


def gaussian_blur(image: Tensor, sigma: float) -> Tensor:
    """Gaussian blur with reflect padding, as two 1-D passes.

    Numerically the dense 2-D convolution with the outer-product kernel that anomalib applies,
    at 2k instead of k^2 multiply-adds per pixel (k = 33 taps for sigma = 4).

    Args:
        image: (N, C, H, W).
        sigma: standard deviation in pixels.

    Returns:
        (N, C, H, W), same dtype.

    Raises:
        OptionError: if the image is not larger than the kernel's radius (reflect padding needs that).
    """
    n, c, h, w = image.shape
    check_blur((h, w), sigma)
    kernel = torch.from_numpy(gaussian_kernel1d(sigma)).to(image.device, image.dtype)
    radius = blur_radius(sigma)
    x = image.reshape(n * c, 1, h, w)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    return x.reshape(n, c, h, w)


def resize_blur_matrix(size_in: int, size_out: int, sigma: float) -> np.ndarray:
    """(size_out, size_in) float64 matrix A with A @ x = blur(bilinear_resize(x)) along one axis.

    Both steps are linear and separable, so ``gaussian_blur(up_sample(d))`` of an (h, w) map
    equals ``A_h @ d @ A_w.T`` (:func:`resize_blur`): two small matmuls instead of a 33-tap
    convolution over the full-size map. Built in NumPy, so that it is a constant in a graph.
    Resize: half-pixel centres (``align_corners=False``), edges clamped; blur: reflect padding.

    >>> a = resize_blur_matrix(4, 16, 1.0); a.shape, bool(np.allclose(a.sum(axis=1), 1.0))
    ((16, 4), True)
    """
    check_blur((size_out,), sigma)
    resize = np.zeros((size_out, size_in))
    for i in range(size_out):
        source = max((i + 0.5) * size_in / size_out - 0.5, 0.0)
        low = min(int(source), size_in - 1)
        high = min(low + 1, size_in - 1)
        resize[i, low] += 1.0 - (source - low)
        resize[i, high] += source - low
    kernel = gaussian_kernel1d(sigma)
    offsets = np.arange(kernel.size) - blur_radius(sigma)
    blur = np.zeros((size_out, size_out))
    for i in range(size_out):
        j = np.abs(i + offsets)  # reflect below 0 ...
        j = np.where(j > size_out - 1, 2 * (size_out - 1) - j, j)  # ... and above size_out - 1
        np.add.at(blur[i], j, kernel)
    return blur @ resize


def resize_blur(distance: Tensor, a_h: Tensor, a_w: Tensor) -> Tensor:
    """Up-sample and blur (..., h, w) maps to (..., H, W) with the matrices of :func:`resize_blur_matrix`."""
    return a_h @ distance @ a_w.T


class AnomalyMapGenerator(nn.Module):
    """anomalib's PaDiM anomaly map generator: distance, bilinear up-sampling, Gaussian blur.

    Args:
        image_size: (height, width) of the output map; any sequence of two ints (stored as a tuple).
        sigma: standard deviation of the Gaussian blur, in pixels of the output map.

    Example:
        >>> gen = AnomalyMapGenerator(image_size=[64, 64], sigma=4)
        >>> emb, mean, prec = torch.randn(2, 5, 8, 8), torch.zeros(5, 64), torch.eye(5).repeat(64, 1, 1)
        >>> gen(embedding=emb, mean=mean, inv_covariance=prec).shape
        torch.Size([2, 1, 64, 64])
    """

    def __init__(self, image_size: Sequence[int], sigma: float = 4) -> None:
        super().__init__()
        self.image_size = tuple(as_size(image_size))
        self.sigma = sigma
        self._matrices: dict = {}

    @staticmethod
    def compute_distance(embedding: Tensor, stats: Sequence[Tensor]) -> Tensor:
        """Mahalanobis distance per patch.

        Args:
            embedding: (N, D, H, W).
            stats: ``[mean, inv_covariance]`` in anomalib's layout: mean (D, H*W), inv_covariance (H*W, D, D).

        Returns:
            (N, 1, H, W) distances.
        """
        mean, inv_covariance = stats
        n, d, h, w = embedding.shape
        if mean.shape != (d, h * w) or inv_covariance.shape != (h * w, d, d):
            raise ValueError(
                f"embedding (N, D, H, W) = {tuple(embedding.shape)} needs mean (D, H*W) = {(d, h * w)} "
                f"and inv_covariance (H*W, D, D) = {(h * w, d, d)}; got {tuple(mean.shape)} "
                f"and {tuple(inv_covariance.shape)}"
            )
        # Any factor C with C C^T = inv_covariance gives the distance; Cholesky in float64.
        factor = torch.linalg.cholesky(inv_covariance.double()).to(inv_covariance.dtype)
        distance = mahalanobis(to_patch_layout(embedding), mean.T, factor)  # (P, N)
        return distance.T.reshape(n, 1, h, w)

    def up_sample(self, distance: Tensor) -> Tensor:
        """Bilinear (``align_corners=False``) resize of (N, 1, h, w) to (N, 1, *image_size)."""
        return F.interpolate(distance, size=self.image_size, mode="bilinear", align_corners=False)

    def smooth_anomaly_map(self, anomaly_map: Tensor) -> Tensor:
        """Gaussian blur of (N, 1, H, W) with standard deviation ``sigma``, reflect padding."""
        return gaussian_blur(anomaly_map, self.sigma)

    def compute_anomaly_map(self, embedding: Tensor, mean: Tensor, inv_covariance: Tensor) -> Tensor:
        """Distance, then up-sampling, then smoothing.

        Args:
            embedding: (N, D, H, W); mean: (D, H*W); inv_covariance: (H*W, D, D).

        Returns:
            (N, 1, *image_size) anomaly map.
        """
        distance = self.compute_distance(embedding, [mean, inv_covariance])
        # Equal to smooth_anomaly_map(up_sample(distance)) to float rounding (tested), as matmuls.
        return resize_blur(distance, *self._resize_blur_matrices(distance.shape[-2:], distance.dtype, distance.device))

    def _resize_blur_matrices(self, grid, dtype, device) -> tuple[Tensor, Tensor]:
        key = (tuple(grid), dtype, device)
        if key not in self._matrices:
            (h, w), (height, width) = grid, self.image_size
            self._matrices[key] = tuple(
                torch.from_numpy(resize_blur_matrix(size, out, self.sigma)).to(device, dtype)
                for size, out in ((h, height), (w, width))
            )
        return self._matrices[key]

    def forward(self, **kwargs: Tensor) -> Tensor:
        """``compute_anomaly_map`` from keyword arguments ``embedding``, ``mean`` and ``inv_covariance``.

        Raises:
            ValueError: naming the keys that are missing.
        """
        missing = [key for key in ("embedding", "mean", "inv_covariance") if key not in kwargs]
        if missing:
            raise ValueError(
                f"AnomalyMapGenerator expects keyword arguments embedding, mean and inv_covariance; "
                f"missing: {', '.join(missing)} (got {sorted(kwargs)})"
            )
        return self.compute_anomaly_map(kwargs["embedding"], kwargs["mean"], kwargs["inv_covariance"])
