"""The one builder of a fitted model's inference graph: its modules, traced graphs and executors.

Fitting, int8 calibration, prediction and export all build "the embedder" and "the pipeline"
here, from one record of what defines them (:class:`GraphSpec`: the cut backbone, the kept
channels, the Gaussian grid, the working size, the tiles, the blur and the int8 ranges). No
caller assembles a module itself, so none can leave a setting out (the int8 calibration once
built its embedder without the Gaussian grid and failed on ``--grid-stride 8``).

How a predictor holds the precision factors is decided here too: unpacked (P, D, D) in float32,
or in float16 when float32 factors would pass :func:`runtime_limit` (:func:`runtime_factors`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor

from padim.features.backbones import FeatureExtractor
from padim.features.tiling import TilePlan
from padim.graph.modules import OUTPUTS, Embedder, Pipeline, Scorer
from padim.graph.quantize import Quantization, quantize
from padim.graph.runners import ChainedRunner, make_runner
from padim.graph.trace import onnx_bytes, pipeline_onnx
from padim.machine import machine_memory, release_freed_memory
from padim.stats.gaussian import triangle_dim, unpack_triangular

#: The embedding graph's batch axes: images (N, 3, H, W) -> patches (P, N, D).
EMBED_AXES = {"images": 0, "patches": 1}


@dataclass(frozen=True)
class GraphSpec:
    """What defines a fitted model's inference graph (a :class:`padim.model.padim.Padim` gives its own).

    Attributes:
        extractor: the cut backbone.
        channel_idx: (D,) kept channels, sorted indices into the layers' concatenated channels.
        feature_size: (H, W) grid of the Gaussians.
        image_size: (H_img, W_img) working size.
        tile_size: the backbone's tile side in pixels (0: whole images; :mod:`padim.features.tiling`).
        sigma: the map's blur.
        quantization: the int8 backbone's ranges (:mod:`padim.graph.quantize`), or None.
        precision: the backbone's dtype: ``"float32"``, ``"int8"`` (with ``quantization``) or
            ``"bfloat16"`` (the traced float32 graph run by OpenVINO in bfloat16).
    """

    extractor: FeatureExtractor
    channel_idx: Tensor
    feature_size: tuple[int, int]
    image_size: tuple[int, int]
    tile_size: int
    sigma: float
    quantization: Quantization | None = None
    precision: str = "float32"


def embedder(spec: GraphSpec) -> Embedder:
    """The embedding module: backbone (tiled or not), kept channels, Gaussian grid."""
    align = spec.extractor.layer_info[-1].stride
    tiles = TilePlan.make(spec.image_size, spec.tile_size, align) if spec.tile_size else None
    return Embedder(spec.extractor, spec.channel_idx, grid=spec.feature_size, tiles=tiles)


def pipeline(spec: GraphSpec) -> Pipeline:
    """The whole inference module, images to labels (:class:`padim.graph.modules.Pipeline`)."""
    return Pipeline(embedder(spec), Scorer(spec.feature_size, spec.image_size, spec.sigma))


def _images(spec: GraphSpec) -> Tensor:
    return torch.zeros(2, 3, *spec.image_size)


def _int8(spec: GraphSpec) -> Any:
    """The graph transform of an int8 model (the same ranges for every graph), or None."""
    return None if spec.quantization is None else partial(quantize, quantization=spec.quantization)


def embedding_graph(spec: GraphSpec) -> bytes:
    """The float32 embedding traced to ONNX (what int8 calibration measures ranges on)."""
    graph = onnx_bytes(embedder(spec), {"images": _images(spec)}, ["patches"], EMBED_AXES)
    release_freed_memory()  # tracing ran the module once at the working size
    return graph


def embedding_runner(spec: GraphSpec, device: Any, onnxruntime: bool) -> Any:
    """An executor of the embedding: ``runner(images=...)["patches"]`` (P, N, D)."""
    runner = make_runner(embedder(spec), {"images": _images(spec)}, ["patches"], EMBED_AXES, device=device,
                         onnxruntime=onnxruntime, transform=_int8(spec), precision=spec.precision)  # fmt: skip
    release_freed_memory()
    return runner


def pipeline_runner(spec: GraphSpec, mean: Tensor, packed: Tensor, device: Any, onnxruntime: bool) -> Any:
    """An executor of the whole pipeline with the Gaussians bound: ``runner(images=, threshold=, scale=)``."""
    example = {"images": _images(spec), "mean": mean, "precision_cholesky": runtime_factors(packed),
               "threshold": torch.tensor(1.0), "scale": torch.tensor(1.0)}  # fmt: skip
    axes = {"images": 0, **dict.fromkeys(OUTPUTS, 0)}
    runner = make_runner(pipeline(spec), example, OUTPUTS, axes, bound=("mean", "precision_cholesky"), device=device,
                         onnxruntime=onnxruntime, transform=_int8(spec), precision=spec.precision)  # fmt: skip
    release_freed_memory()
    return runner


def compact_runner(spec: GraphSpec, embed: Any, mean: Tensor, packed: Tensor, device: Any) -> ChainedRunner:
    """The pipeline as an embedding executor already held, then the scorer in eager PyTorch on the packed factors.

    The least memory (no unpacked copy of the factors, no second trace): how a fit sets its threshold.
    """
    scorer = Scorer(spec.feature_size, spec.image_size, spec.sigma)
    return ChainedRunner(embed, scorer, {"mean": mean, "precision_cholesky": packed}, device)


def pipeline_graph(spec: GraphSpec, state: dict[str, Tensor]) -> bytes:
    """The whole pipeline as ONNX bytes with the inputs ``images`` and the state's names (int8: quantised)."""
    graph = pipeline_onnx(pipeline(spec), spec.image_size, state)
    return graph if spec.quantization is None else quantize(graph, spec.quantization)


def runtime_limit() -> int:
    """Largest float32 factor array (bytes) a predictor holds unpacked: 4 GB or a quarter of the memory."""
    return min(4 * 2**30, machine_memory() // 4)


def runtime_dtype(n_patches: int, dim: int) -> str:
    """``"float32"`` for factors (P, D, D) within :func:`runtime_limit`, else ``"float16"``.

    float16 factors take half the memory; :func:`padim.maps.anomaly_map.mahalanobis` casts them a
    chunk at a time (about 5 ns per factor entry and batch on a CPU).
    """
    return "float32" if n_patches * dim * dim * 4 <= runtime_limit() else "float16"


def runtime_factors(packed: Tensor, dtype: str | None = None) -> Tensor:
    """The precision factors as a predictor holds them: (P, D, D) unpacked from (P, D(D+1)/2).

    Args:
        packed: the packed factors (:func:`padim.stats.gaussian.precision_cholesky_from_stats`).
        dtype: ``"float32"`` or ``"float16"``; None: :func:`runtime_dtype`.
    """
    n_patches, size = packed.shape
    dtype = runtime_dtype(n_patches, triangle_dim(size)) if dtype is None else dtype
    return unpack_triangular(packed, torch.float32 if dtype == "float32" else torch.float16)
