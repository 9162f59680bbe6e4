"""Streaming per-patch Gaussian statistics: constant memory, exact merges, packed triangles.

PaDiM (Defard et al. 2020, https://arxiv.org/abs/2011.08785, Sec. 3.2) fits one Gaussian
per patch position from the N training embeddings. Instead of keeping all N embeddings
(anomalib does, and runs out of memory), we keep the sufficient statistics: a count, the
mean (P, D) and the scatter matrix M2 = sum (x - mean)(x - mean)^T per patch. Batches are
combined with the pairwise update of Chan, Golub and LeVeque (1979), which is exact in exact
arithmetic and numerically safe (no sum of squares minus square of sums):

    n = n_a + n_b,  delta = mean_b - mean_a
    mean = mean_a + delta * n_b / n
    M2 = M2_a + M2_b + delta delta^T * n_a n_b / n

The same rule merges statistics from two streams (or two machines) into exactly those of one.
The covariance is the unbiased M2 / (n - 1) plus ``eps`` * I (Sec. 3.2: eps = 0.01).

Symmetric and triangular matrices are stored packed: their upper triangles, row by row,
(P, D(D+1)/2) (:func:`pack_triangular`). The scatter matrices take half the memory of full
ones, and the precision factors C (precision = C C^T, upper triangular) are written packed in
float16, a quarter of the float32 factors' bytes, the form of the model file.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from padim.errors import DataError

#: Largest temporary (bytes) that the precision builds at once; work is split over patches to
#: stay under it, so fitting memory is the accumulators plus a few tens of MB.
CHUNK_BYTES = 8 * 2**20
#: Largest product (bytes) an update builds at once: fewer, larger steps (each small step costs
#: a few thread hand-offs, which dominated with 8 MB steps on two busy cores).
UPDATE_CHUNK_BYTES = 32 * 2**20


@dataclass
class GaussianStats:
    """Running statistics of P independent D-dimensional Gaussians.

    Attributes:
        count: number of samples seen (the same for every patch: each image gives every patch).
        mean: (P, D) float64.
        m2: (P, D(D+1)/2) scatter matrices about the mean, packed (:func:`pack_triangular`),
            float64 or float32. Updates centre each batch on its own mean before the product
            (Chan et al.), so float32 loses no digits to cancellation and halves the memory;
            float64 merges exactly.
    """

    count: int
    mean: Tensor
    m2: Tensor

    @classmethod
    def empty(
        cls, n_patches: int, dim: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64
    ) -> GaussianStats:
        """Statistics of no samples yet; ``dtype`` is that of the scatter matrices."""
        mean = torch.zeros(n_patches, dim, dtype=torch.float64, device=device)
        return cls(0, mean, torch.zeros(n_patches, triangle_size(dim), dtype=dtype, device=device))

    def update(self, samples: Tensor | Sequence[Tensor]) -> GaussianStats:
        """Add a batch in place and return self.

        Args:
            samples: (P, N, D) patch-first embeddings of N images (:mod:`padim.features.embedding`), any
                float dtype, or a list of such blocks (one batch, without concatenating them).
                Pass many images at once: the packing costs about as much as a product of 8
                images, whatever N.
        """
        parts = [samples] if isinstance(samples, Tensor) else list(samples)
        n_patches, dim = parts[0].shape[0], parts[0].shape[2]
        n_b = sum(part.shape[1] for part in parts)
        if any((part.shape[0], part.shape[2]) != tuple(self.mean.shape) for part in parts):
            shapes = [tuple(part.shape) for part in parts]
            raise ValueError(f"samples (P, N, D) must have (P, D) = {tuple(self.mean.shape)}, got {shapes}")
        if n_b == 0:
            return self
        n_a, n = self.count, self.count + n_b
        mean_b = sum(part.sum(dim=1, dtype=torch.float64) for part in parts) / n_b
        delta = mean_b - self.mean
        index, shift = _upper_index(dim, self.m2.device), mean_b.to(self.m2.dtype)
        # Per chunk of patches, rows = [x - mean_b; sqrt(n_a n_b / n) delta] (P, N + 1, D), so
        # M2 += C^T C + w delta delta^T is one batched product, whose upper triangle is added.
        step = max(1, UPDATE_CHUNK_BYTES // (max(n_b + 1, dim) * dim * self.m2.element_size()))
        for start in range(0, n_patches, step):
            stop = min(start + step, n_patches)
            rows = torch.empty(stop - start, n_b + 1, dim, dtype=self.m2.dtype, device=self.m2.device)
            offset = 0
            for part in parts:
                rows[:, offset : offset + part.shape[1]].copy_(part[start:stop])
                offset += part.shape[1]
            rows[:, :n_b].sub_(shift[start:stop, None, :])
            rows[:, n_b].copy_(delta[start:stop] * (n_a * n_b / n) ** 0.5)
            product = torch.bmm(rows.transpose(1, 2), rows).view(stop - start, dim * dim)
            self.m2[start:stop].add_(product.index_select(1, index))
        self.mean.add_(delta, alpha=n_b / n)
        self.count = n
        return self

    def merge(self, other: GaussianStats) -> GaussianStats:
        """Statistics of the union of two sample sets (a new object; neither input changes)."""
        if self.mean.shape != other.mean.shape:
            raise ValueError(f"cannot merge statistics of shape {tuple(self.mean.shape)} and {tuple(other.mean.shape)}")
        n = self.count + other.count
        if n == 0:
            return GaussianStats(0, self.mean.clone(), self.m2.clone())
        delta = other.mean - self.mean
        weight = self.count * other.count / n
        dim = delta.shape[1]
        m2, index = self.m2 + other.m2, _upper_index(dim, delta.device)
        # M2 += w delta delta^T, a chunk of patches at a time, in M2's dtype: batched outer
        # products, then their upper triangles (3x faster than gathering the triangle's pairs).
        step = max(1, CHUNK_BYTES // (dim * dim * m2.element_size()))
        for start in range(0, m2.shape[0], step):
            part = delta[start : start + step].to(m2.dtype)
            outer = torch.bmm(part[:, :, None], part[:, None, :]).view(part.shape[0], dim * dim)
            m2[start : start + step].add_(outer.index_select(1, index), alpha=weight)
        return GaussianStats(n, self.mean + delta * (other.count / n), m2)

    def covariance(self, eps: float = 0.01) -> Tensor:
        """(P, D, D) float64 unbiased covariance plus ``eps`` * I.

        Raises:
            DataError: with fewer than two samples (the unbiased estimate is undefined).
        """
        if self.count < 2:
            raise DataError(f"fitting needs at least 2 good images, got {self.count}")
        n_patches, dim = self.mean.shape
        scatter = self.m2.to(torch.float64) / (self.count - 1)
        cov = torch.empty(n_patches, dim * dim, dtype=torch.float64, device=self.m2.device)
        cov.index_copy_(1, _upper_index(dim, cov.device, lower=True), scatter)  # the mirror image first,
        cov.index_copy_(1, _upper_index(dim, cov.device), scatter)  # then the upper triangle and diagonal
        cov = cov.view(n_patches, dim, dim)
        cov.diagonal(dim1=1, dim2=2).add_(eps)
        return cov


def _upper_index(dim: int, device: torch.device | str = "cpu", lower: bool = False) -> Tensor:
    """Positions of the upper triangle in a flattened D x D matrix, row by row (``lower``: their mirror images)."""
    rows, cols = torch.triu_indices(dim, dim, device=device)
    return cols * dim + rows if lower else rows * dim + cols


def precision_cholesky_from_stats(
    stats: GaussianStats, eps: float = 0.01, chunk_bytes: int = CHUNK_BYTES, *, packed: bool = False
) -> Tensor:
    """Cholesky factors C of the precisions: precision = C C^T, C upper triangular.

    With covariance = L L^T (Cholesky, L lower), C = (L^-1)^T, so the Mahalanobis distance is
    ||(x - mean) C|| (:func:`padim.maps.anomaly_map.mahalanobis`): one matmul and a norm, no product
    with the full precision (scikit-learn's ``GaussianMixture.precisions_cholesky_`` is the same
    factor). The Cholesky factor and the triangular solve run in float64, a chunk of patches at
    a time (each float64 temporary at most ``chunk_bytes``); ``cholesky_inverse`` and
    ``linalg.inv`` on batches of small matrices ran 20 to 60 times slower with 2 threads.

    Args:
        stats: the streamed statistics (not changed).
        eps: added to each covariance's diagonal.
        chunk_bytes: the largest float64 temporary.
        packed: return the compact form of :func:`pack_triangular` in float16, (P, D(D+1)/2),
            a quarter of the float32 factors' memory, without building those.

    Returns:
        (P, D, D) float32, or (P, D(D+1)/2) float16 with ``packed``.
    """
    n_patches, dim = stats.mean.shape
    step = max(1, chunk_bytes // (dim * dim * 8))
    device = stats.m2.device
    if packed:
        out = torch.empty(n_patches, dim * (dim + 1) // 2, dtype=torch.float16, device=device)
    else:
        out = torch.empty(n_patches, dim, dim, dtype=torch.float32, device=device)
    eye = torch.eye(dim, dtype=torch.float64, device=device)
    for start in range(0, n_patches, step):
        part = GaussianStats(stats.count, stats.mean[start : start + step], stats.m2[start : start + step])
        factor = torch.linalg.solve_triangular(torch.linalg.cholesky(part.covariance(eps)), eye, upper=False).mT
        out[start : start + step] = pack_triangular(factor) if packed else factor
    return out


def triangle_size(dim: int) -> int:
    """Entries of a D x D triangle, diagonal included: D(D+1)/2."""
    return dim * (dim + 1) // 2


def triangle_dim(size: int) -> int:
    """D from the length D(D+1)/2 of a packed triangle.

    Raises:
        ValueError: if ``size`` is not a triangular number.

    >>> triangle_dim(5050)
    100
    """
    dim = int(((8 * size + 1) ** 0.5 - 1) / 2 + 0.5)
    if triangle_size(dim) != size or dim < 1:
        raise ValueError(f"{size} is not the length D(D+1)/2 of a packed triangle")
    return dim


def pack_triangular(factor: Tensor) -> Tensor:
    """The upper triangles of (P, D, D) matrices as (P, D(D+1)/2) rows, row by row (``torch.triu_indices``).

    The precision factors are upper triangular (:func:`precision_cholesky_from_stats`), so their
    lower halves are zeros that need not be stored: packed, a model file holds half the bytes.

    >>> pack_triangular(torch.tensor([[[1.0, 2.0], [0.0, 3.0]]])).tolist()
    [[1.0, 2.0, 3.0]]
    """
    dim = factor.shape[-1]
    return factor.reshape(factor.shape[0], dim * dim).index_select(1, _upper_index(dim, factor.device))


def unpack_triangular(packed: Tensor, dtype: torch.dtype = torch.float32, chunk_bytes: int = CHUNK_BYTES) -> Tensor:
    """(P, D, D) upper-triangular matrices of ``dtype`` from their packed rows (:func:`pack_triangular`).

    Works a chunk of patches at a time, so the only large allocation is the result.

    >>> unpack_triangular(torch.tensor([[1.0, 2.0, 3.0]])).tolist()
    [[[1.0, 2.0], [0.0, 3.0]]]
    """
    n_patches, size = packed.shape
    dim = triangle_dim(size)
    out = torch.zeros(n_patches, dim, dim, dtype=dtype, device=packed.device)
    flat = out.view(n_patches, dim * dim)
    index = _upper_index(dim, packed.device)
    step = max(1, chunk_bytes // (dim * dim * out.element_size()))
    for start in range(0, n_patches, step):
        flat[start : start + step].index_copy_(1, index, packed[start : start + step].to(dtype))
    return out


def precision_from_cholesky(precision_cholesky: Tensor) -> Tensor:
    """The precisions C C^T (P, D, D) from their factors (:func:`precision_cholesky_from_stats`)."""
    return torch.bmm(precision_cholesky, precision_cholesky.transpose(1, 2))


def accumulate(
    stats: GaussianStats | None, patches: Tensor | Sequence[Tensor], dtype: torch.dtype = torch.float32
) -> GaussianStats:
    """Add (P, N, D) patch embeddings, or a list of them, to ``stats`` (started with ``dtype`` scatter matrices if None)."""
    first = patches if isinstance(patches, Tensor) else patches[0]
    if stats is None:
        stats = GaussianStats.empty(first.shape[0], first.shape[2], first.device, dtype)
    return stats.update(patches)


def stream(
    stats: GaussianStats | None, blocks: Iterable[Tensor], dtype: torch.dtype = torch.float32, group_bytes: int = 0
) -> GaussianStats | None:
    """Add blocks of patch embeddings (P, n, D) as they come, ``group_bytes`` of them per update.

    The backbone gives a few images at a time (its activations bound the memory); the update
    packs its products, which costs as much for 1 image as for 30, so blocks are grouped first.
    Returns ``stats`` updated (None if there were no blocks and no statistics).
    """
    pending: list[Tensor] = []
    for block in blocks:
        pending.append(block)
        if sum(p.numel() * p.element_size() for p in pending) >= group_bytes:
            stats, pending = accumulate(stats, pending, dtype), []
    return accumulate(stats, pending, dtype) if pending else stats
