"""Streaming per-patch Gaussian statistics: constant memory, exact merges.

PaDiM (Defard et al. 2020, https://arxiv.org/abs/2011.08785, Sec. 3.2) fits one Gaussian
per patch position from the N training embeddings. Instead of keeping all N embeddings
(anomalib does, and runs out of memory), we keep the sufficient statistics: a count, the
mean (P, D) and the scatter matrix M2 = sum (x - mean)(x - mean)^T (P, D, D), in float64.
Batches are combined with the pairwise update of Chan, Golub and LeVeque (1979), which is
exact in exact arithmetic and numerically safe (no sum of squares minus square of sums):

    n = n_a + n_b,  delta = mean_b - mean_a
    mean = mean_a + delta * n_b / n
    M2 = M2_a + M2_b + delta delta^T * n_a n_b / n

The same rule merges statistics from two streams (or two machines) into exactly those of one.
The covariance is the unbiased M2 / (n - 1) plus ``eps`` * I (Sec. 3.2: eps = 0.01).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class GaussianStats:
    """Running statistics of P independent D-dimensional Gaussians.

    Attributes:
        count: number of samples seen (the same for every patch: each image gives every patch).
        mean: (P, D) float64.
        m2: (P, D, D) float64 scatter matrix about the mean.
    """

    count: int
    mean: Tensor
    m2: Tensor

    @classmethod
    def empty(cls, n_patches: int, dim: int, device: torch.device | str = "cpu") -> "GaussianStats":
        """Statistics of no samples yet."""
        zeros = dict(dtype=torch.float64, device=device)
        return cls(0, torch.zeros(n_patches, dim, **zeros), torch.zeros(n_patches, dim, dim, **zeros))

    def update(self, samples: Tensor) -> "GaussianStats":
        """Add a batch in place and return self.

        Args:
            samples: (N, P, D) embeddings of N images, any float dtype.
        """
        n_b, n_patches, dim = samples.shape
        if (n_patches, dim) != tuple(self.mean.shape):
            raise ValueError(f"samples (N, P, D) must have (P, D) = {tuple(self.mean.shape)}, got {tuple(samples.shape)}")
        if n_b == 0:
            return self
        x = samples.to(torch.float64).transpose(0, 1)  # (P, N, D)
        mean_b = x.mean(dim=1)
        centred = x - mean_b[:, None, :]
        n_a, n = self.count, self.count + n_b
        delta = mean_b - self.mean
        # Fold the between-means term into the same batched product by appending one weighted
        # row: M2 += C^T C + w * delta delta^T, written in place, with no (P, D, D) temporary.
        rows = torch.cat([centred, delta[:, None, :] * (n_a * n_b / n) ** 0.5], dim=1)
        self.m2.baddbmm_(rows.transpose(1, 2), rows)
        self.mean.add_(delta, alpha=n_b / n)
        self.count = n
        return self

    def merge(self, other: "GaussianStats") -> "GaussianStats":
        """Statistics of the union of two sample sets (a new object; neither input changes)."""
        if self.mean.shape != other.mean.shape:
            raise ValueError(f"cannot merge statistics of shape {tuple(self.mean.shape)} and {tuple(other.mean.shape)}")
        n = self.count + other.count
        if n == 0:
            return GaussianStats(0, self.mean.clone(), self.m2.clone())
        delta = other.mean - self.mean
        weight = self.count * other.count / n
        m2 = self.m2 + other.m2 + weight * delta[:, :, None] * delta[:, None, :]
        return GaussianStats(n, self.mean + delta * (other.count / n), m2)

    def covariance(self, eps: float = 0.01) -> Tensor:
        """(P, D, D) float64 unbiased covariance plus ``eps`` * I.

        Raises:
            ValueError: with fewer than two samples (the unbiased estimate is undefined).
        """
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 images, got {self.count}")
        cov = self.m2 / (self.count - 1)
        cov.diagonal(dim1=1, dim2=2).add_(eps)
        return cov


def precision_from_stats(stats: GaussianStats, eps: float = 0.01, chunk: int = 512) -> Tensor:
    """Inverse covariances (P, D, D) in float32, through a Cholesky factorisation in float64.

    Works on ``chunk`` patches at a time so that the float64 temporaries stay small.
    """
    n_patches = stats.mean.shape[0]
    out = torch.empty_like(stats.m2, dtype=torch.float32)
    for start in range(0, n_patches, chunk):
        part = GaussianStats(stats.count, stats.mean[start : start + chunk], stats.m2[start : start + chunk])
        out[start : start + chunk] = torch.cholesky_inverse(torch.linalg.cholesky(part.covariance(eps))).float()
    return out
