"""Tiling the backbone over large images: overlapping tiles, their feature maps stitched into one grid.

A CNN's activation memory grows with the image's area: a 4000 x 3000 image needs gigabytes in
the first layers alone. Here the backbone runs over tiles that overlap by a margin; each tile
keeps only the features of its core (the tile less the margin, except where the tile meets the
image's border), and the cores are stitched into the grid the whole image would give. Tile
origins and core bounds are multiples of the largest stride, so every layer's cells line up
with the untiled image's: a core cell equals the untiled feature exactly when its receptive
field stays inside the tile, and the margin keeps the difference small where it does not
(the receptive field's far edge weighs little). Only the chosen channels are stitched, so
the stitched grid costs d channels, not C.

The plan is fixed per working size, so the tile loop unrolls into the traced graph
(:class:`padim.graph.modules.Embedder` calls :func:`tiled_features`): exported models tile too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from padim.errors import OptionError
from padim.features.embedding import select

#: Tile side used when the working size is larger than this on either side and no tile size is given.
AUTO_TILE = 1024


@dataclass(frozen=True)
class Span:
    """One tile along one axis, in pixels: the tile ``[start, stop)`` and the core ``[core_start, core_stop)`` it keeps."""

    start: int
    stop: int
    core_start: int
    core_stop: int


def margin_for(tile: int, align: int) -> int:
    """The overlap kept on each side of a tile: an eighth of it, a multiple of ``align``, at least ``align``.

    >>> margin_for(1024, 16), margin_for(64, 16)
    (128, 16)
    """
    return max(align, (tile // 8) // align * align)


def plan_axis(length: int, tile: int, margin: int, align: int) -> list[Span]:
    """Cover ``[0, length)`` with tiles of at most ``tile`` pixels whose cores partition it.

    Cores after the first start at multiples of ``align`` (``tile`` and ``margin`` are
    multiples of it); each tile reaches ``margin`` pixels beyond its core, within the image.

    >>> [(s.start, s.stop, s.core_start, s.core_stop) for s in plan_axis(100, 64, 16, 16)]
    [(0, 64, 0, 48), (32, 96, 48, 80), (64, 100, 80, 100)]
    """
    if length <= tile:
        return [Span(0, length, 0, length)]
    bounds = [0, tile - margin]
    while bounds[-1] + margin < length:  # the last tile can reach the border from its core start
        bounds.append(bounds[-1] + tile - 2 * margin)
    bounds[-1] = length
    return [Span(max(0, low - margin), min(length, high + margin), low, high) for low, high in zip(bounds, bounds[1:])]


def check_tile(tile: int, align: int) -> None:
    """Refuse a tile side that is not a multiple of ``align`` or leaves no core.

    Raises:
        OptionError: naming ``tile_size``, what it must be and the value.
    """
    margin = margin_for(tile, align)
    if tile % align or tile < 2 * margin + align:
        raise OptionError(f"tile_size must be a multiple of {align} (the backbone's largest stride) and at least "
                          f"{2 * margin + align}, got {tile}")  # fmt: skip


def resolve_tile(tile_size: int | None, image_size: Sequence[int], align: int) -> int:
    """The tile side for a working size: ``tile_size`` as given (0: no tiling), or None: automatic.

    Automatic: :data:`AUTO_TILE` when the working size exceeds it on a side, else no tiling.

    Raises:
        OptionError: for a tile side :func:`check_tile` refuses.
    """
    if tile_size is None:
        tile_size = AUTO_TILE if max(image_size) > AUTO_TILE else 0
    if isinstance(tile_size, bool) or not isinstance(tile_size, int) or tile_size < 0:
        raise OptionError(f"tile_size must be an int >= 0 (0: no tiling) or None (automatic), got {tile_size!r}")
    if tile_size == 0 or max(image_size) <= tile_size:
        return 0
    check_tile(tile_size, align)
    return tile_size


@dataclass(frozen=True)
class TilePlan:
    """The tiles of one working size: ``rows`` and ``cols`` (:class:`Span`), ``tile`` and ``margin`` in pixels."""

    rows: tuple[Span, ...]
    cols: tuple[Span, ...]
    tile: int
    margin: int

    @classmethod
    def make(cls, image_size: Sequence[int], tile: int, align: int) -> TilePlan:
        """Tiles of side ``tile`` (a multiple of ``align``, the largest stride) over (H, W) images."""
        margin = margin_for(tile, align)
        rows, cols = (tuple(plan_axis(int(size), tile, margin, align)) for size in image_size)
        return cls(rows, cols, int(tile), margin)

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)


def tiled_features(
    extractor: nn.Module, images: Tensor, layer_idx: Sequence[Tensor], rows: Sequence[Span], cols: Sequence[Span]
) -> list[Tensor]:
    """The chosen channels of each layer, computed tile by tile and stitched (see the module doc).

    Args:
        extractor: a :class:`padim.features.backbones.FeatureExtractor` (its ``layer_info`` gives the strides).
        images: (N, 3, H, W).
        layer_idx: per layer the local channel indices (:func:`padim.features.embedding.split_channels`).
        rows, cols: the tiles along each axis (:func:`plan_axis`).

    Returns:
        per layer (N, d_l, H_l, W_l).
    """
    strides = [info.stride for info in extractor.layer_info]
    stitched_rows: list[list[Tensor]] = [[] for _ in strides]
    for row in rows:
        pieces: list[list[Tensor]] = [[] for _ in strides]
        for col in cols:
            tile = images[:, :, row.start : row.stop, col.start : col.stop]
            for k, (feature, stride) in enumerate(zip(select(extractor(tile), layer_idx), strides)):
                pieces[k].append(feature[:, :, _cells(row, stride, rows), _cells(col, stride, cols)])
        for k, parts in enumerate(pieces):
            stitched_rows[k].append(parts[0] if len(parts) == 1 else torch.cat(parts, dim=3))
    return [parts[0] if len(parts) == 1 else torch.cat(parts, dim=2) for parts in stitched_rows]


def _cells(span: Span, stride: int, spans: Sequence[Span]) -> slice:
    """The core's cells in the tile's feature map (the last tile keeps everything to its end)."""
    start = (span.core_start - span.start) // stride
    return slice(start, None if span is spans[-1] else (span.core_stop - span.start) // stride)
