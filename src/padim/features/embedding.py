"""Patch embeddings: backbone activations of several layers, on one grid, in d random channels.

PaDiM (Defard et al. 2020, https://arxiv.org/abs/2011.08785, Sec. 3.1) concatenates the
activations of several layers, the coarser ones resized (nearest) onto the finest layer's grid,
and keeps ``n_features`` channels drawn at random (Sec. 4.2: as good as PCA). Choosing the
channels before resizing gives the same numbers and resizes fewer channels.

The embedding is laid out patch-first, (H, W, N, D) flattened to (P, N, D) with P = H * W:
the per-patch statistics (:mod:`padim.stats.gaussian`) and the Mahalanobis distance
(:mod:`padim.maps.anomaly_map`) work on one (N, D) block per patch, so this layout needs no
transpose of the large tensor afterwards. anomalib's layout, (N, D, H, W), is
``patches.reshape(H, W, N, D).permute(2, 3, 0, 1)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def select_channels(n_total: int, n_features: int, seed: int) -> Tensor:
    """``n_features`` distinct channel indices out of ``n_total``, drawn from ``seed``, sorted.

    Drawn with torch's CPU generator, which gives the same numbers on every machine.

    >>> select_channels(10, 4, seed=0).tolist() == select_channels(10, 4, seed=0).tolist()
    True
    """
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n_total, generator=generator)[:n_features].sort().values


def split_channels(channel_idx: Tensor, channels: Sequence[int]) -> list[Tensor]:
    """The channel split: indices into the concatenation of all layers, as indices per layer.

    Args:
        channel_idx: (D,) sorted indices into the concatenated C_1 + ... + C_L channels.
        channels: C_l per layer.

    Returns:
        L int64 tensors of local indices (empty for a layer that gives no channel).

    >>> [t.tolist() for t in split_channels(torch.tensor([0, 2, 3, 6]), [3, 2, 4])]
    [[0, 2], [0], [1]]
    """
    channel_idx = torch.as_tensor(channel_idx, dtype=torch.long).cpu()
    parts, start = [], 0
    for n_channels in channels:
        inside = (channel_idx >= start) & (channel_idx < start + n_channels)
        parts.append(channel_idx[inside] - start)
        start += n_channels
    return parts


def nearest_indices(size_in: int, size_out: int) -> Tensor:
    """Source index of each output position of a nearest resize (PyTorch's ``mode="nearest"``).

    Computed in float32 as PyTorch (and so anomalib) does: floor(i * (size_in / size_out)).

    >>> nearest_indices(2, 5).tolist()
    [0, 0, 0, 1, 1]
    """
    scale = torch.tensor(size_in / size_out, dtype=torch.float32)
    return (torch.arange(size_out, dtype=torch.float32) * scale).floor().long().clamp(max=size_in - 1)


def select(features: Sequence[Tensor], layer_idx: Sequence[Tensor]) -> list[Tensor]:
    """Each layer's kept channels: per layer (N, C_l, H_l, W_l) -> (N, d_l, H_l, W_l)."""
    return [feature.index_select(1, local.to(feature.device)) for feature, local in zip(features, layer_idx)]


def embed(
    features: Sequence[Tensor], layer_idx: Sequence[Tensor] | None = None, grid: Sequence[int] | None = None
) -> Tensor:
    """Patch-first PaDiM embedding from layer activations (Sec. 3.1).

    Each layer's kept channels are moved to the last axis while the layer is still small,
    brought onto the grid of the Gaussians, and the layers are concatenated along channels.
    A layer coarser than the grid is resized (nearest) onto it by gathering rows and columns,
    as PaDiM does; a layer finer than the grid (a coarser Gaussian grid, chosen to bound the
    model's memory) is averaged over the r x r cells that make one grid cell. Traceable: the
    graph holds constant indices.

    Args:
        features: per layer (N, C_l, H_l, W_l); the first on the finest grid.
        layer_idx: per layer the local channel indices (:func:`split_channels`); None when the
            features hold only the kept channels already (:func:`select`).
        grid: (H, W) of the Gaussians; None: the first layer's grid. A layer finer than it must
            be an integer multiple of it on each side.

    Returns:
        (P, N, D) with P = H * W in row-major order, D = the total number of kept channels.
    """
    if layer_idx is not None:
        features = select(features, layer_idx)
    n = features[0].shape[0]
    height, width = features[0].shape[2:] if grid is None else (int(grid[0]), int(grid[1]))
    parts = []
    for part in features:
        if part.shape[1] == 0:
            continue
        h_l, w_l = int(part.shape[2]), int(part.shape[3])  # constants in a traced graph
        if h_l > height or w_l > width:  # finer than the grid: average r x r cells
            part = F.avg_pool2d(part, (h_l // height, w_l // width))
        part = part.permute(2, 3, 0, 1)  # (H_l, W_l, N, d_l)
        h_l, w_l = part.shape[:2]
        if (h_l, w_l) != (height, width):
            part = part.index_select(0, nearest_indices(h_l, height).to(part.device))
            part = part.index_select(1, nearest_indices(w_l, width).to(part.device))
        parts.append(part)
    return torch.cat(parts, dim=3).reshape(height * width, n, -1)


def to_image_layout(patches: Tensor, grid: Sequence[int]) -> Tensor:
    """(P, N, D) patch-first embedding as anomalib's (N, D, H, W)."""
    height, width = grid
    _, n, d = patches.shape
    return patches.reshape(height, width, n, d).permute(2, 3, 0, 1)


def to_patch_layout(embedding: Tensor) -> Tensor:
    """anomalib's (N, D, H, W) embedding as (P, N, D), contiguous."""
    n, d, height, width = embedding.shape
    return embedding.permute(2, 3, 0, 1).reshape(height * width, n, d)
