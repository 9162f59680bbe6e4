"""PaDiM inference, defined once as traceable modules: the embedding, the scorer, and the two chained.

One forward pass (Defard et al. 2020, https://arxiv.org/abs/2011.08785, Sec. 3):

    images (N, 3, H_img, W_img)                      pre-processed (padim.io.images.preprocess)
      -> backbone layers                              padim.features.backbones.FeatureExtractor
      -> channel selection, nearest resize (P, N, D)  padim.features.embedding.embed  [Embedder]
      -> Mahalanobis distance (P, N)                  padim.maps.anomaly_map.mahalanobis
      -> up-sampling + blur (N, H_img, W_img)         padim.maps.anomaly_map.resize_blur
      -> score (N,)                                   padim.scoring.rules.image_score
      -> normalised score, label (N,)                 padim.scoring.rules.normalize, label  [Scorer]

:class:`Pipeline` chains :class:`Embedder` and :class:`Scorer`. The Gaussians (``mean``,
``precision_cholesky``) and the calibration (``threshold``, ``scale``) are inputs of the graph, not
constants: an executor binds them once, so exporting the graph costs no copy of a precision
factor that can pass 2 GB, and a threshold changed after fitting needs no new graph. The
modules are built from a fitted model's settings in one place, :mod:`padim.graph.build`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from padim.features.backbones import FeatureExtractor
from padim.features.embedding import embed, select, split_channels
from padim.features.tiling import TilePlan, tiled_features
from padim.maps.anomaly_map import mahalanobis, resize_blur, resize_blur_matrix
from padim.scoring.rules import image_score, label, normalize

#: Graph inputs besides ``images``, bound by the executor.
STATE_INPUTS = ("mean", "precision_cholesky", "threshold", "scale")
#: Graph outputs of :class:`Pipeline`.
OUTPUTS = ("anomaly_map", "score", "normalized_score", "label")


class Embedder(nn.Module):
    """Backbone and channel selection: images (N, 3, H_img, W_img) -> patch-first (P, N, D).

    Args:
        extractor: the cut backbone.
        channel_idx: (D,) sorted indices into the concatenated channels of its layers.
        grid: (H, W) of the Gaussians; None: the first layer's grid (PaDiM's). A coarser grid
            averages the finer layers (:func:`padim.features.embedding.embed`).
        tiles: run the backbone over these tiles and stitch the features
            (:mod:`padim.features.tiling`); None: over the whole image at once.
    """

    def __init__(
        self,
        extractor: FeatureExtractor,
        channel_idx: Tensor,
        grid: Sequence[int] | None = None,
        tiles: TilePlan | None = None,
    ) -> None:
        super().__init__()
        self.extractor = extractor
        # A plain list, not buffers: the tracer records the indices as constants.
        self.layer_idx = split_channels(channel_idx, [info.channels for info in extractor.layer_info])
        self.grid = None if grid is None else (int(grid[0]), int(grid[1]))
        self.tiles = tiles

    def forward(self, images: Tensor) -> Tensor:
        if self.tiles is None:
            features = select(self.extractor(images), self.layer_idx)
        else:
            features = tiled_features(self.extractor, images, self.layer_idx, self.tiles.rows, self.tiles.cols)
        return embed(features, grid=self.grid)


class Scorer(nn.Module):
    """Patch embeddings and Gaussians -> anomaly maps, scores, normalised scores and labels.

    Args:
        grid: (H, W) feature grid of the embedding.
        image_size: (H_img, W_img) of the maps.
        sigma: standard deviation of the blur, in map pixels.

    Shape:
        patches (P, N, D), mean (P, D), precision_cholesky (P, D, D), threshold (), scale () ->
        anomaly_map (N, H_img, W_img), score (N,), normalized_score (N,), label (N,) bool.
        An uncalibrated model passes threshold NaN: its normalised scores are NaN and every
        label is True (never a silent "normal").
    """

    def __init__(self, grid: Sequence[int], image_size: Sequence[int], sigma: float) -> None:
        super().__init__()
        self.grid = tuple(int(g) for g in grid)
        for name, size, out in (("a_h", self.grid[0], image_size[0]), ("a_w", self.grid[1], image_size[1])):
            self.register_buffer(name, torch.from_numpy(resize_blur_matrix(size, out, sigma)).float(), persistent=False)

    def forward(
        self, patches: Tensor, mean: Tensor, precision_cholesky: Tensor, threshold: Tensor, scale: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        distance = mahalanobis(patches, mean, precision_cholesky)  # (P, N)
        maps = resize_blur(distance.T.reshape(-1, *self.grid), self.a_h, self.a_w)
        score = image_score(maps)
        return maps, score, normalize(score, threshold, scale), label(score, threshold)


class Pipeline(nn.Module):
    """:class:`Embedder` then :class:`Scorer`: the whole inference, images to labels."""

    def __init__(self, embedder: Embedder, scorer: Scorer) -> None:
        super().__init__()
        self.embedder = embedder
        self.scorer = scorer

    def forward(
        self, images: Tensor, mean: Tensor, precision_cholesky: Tensor, threshold: Tensor, scale: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.scorer(self.embedder(images), mean, precision_cholesky, threshold, scale)
