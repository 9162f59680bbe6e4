"""The PaDiM estimator: fit per-patch Gaussians on good images by streaming, then predict.

PaDiM (Defard et al. 2020, https://arxiv.org/abs/2011.08785): embed each patch with several
backbone layers (Sec. 3.1, :mod:`padim.features.embedding`), fit one Gaussian per patch position
(Sec. 3.2, :mod:`padim.stats.gaussian`), and score by the Mahalanobis distance (Sec. 3.3,
:mod:`padim.maps.anomaly_map`). Fitting streams sufficient statistics, so memory does not grow with
the number of images; ``fit`` and ``predict`` are separate methods, not modes of ``forward``.
Inference runs the one pipeline of :mod:`padim.graph.pipeline`; files are :mod:`padim.modelfile.padim_file`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from padim.errors import DataError, NotFittedError, OptionError
from padim.features.backbones import FeatureExtractor, get_spec, resolve_layers
from padim.features.embedding import select_channels
from padim.features.tiling import TilePlan
from padim.graph.pipeline import Embedder, Pipeline, Scorer, check_device, model_runner, parse_device, use_onnxruntime
from padim.graph.quantize import calibrate_model
from padim.io.datasets import split_holdout
from padim.io.images import as_size
from padim.io.loading import as_batches, to_samples
from padim.maps.anomaly_map import check_blur
from padim.model import memory
from padim.model.working_size import apply_plan
from padim.runtime.predictor import Prediction, Predictor
from padim.stats.gaussian import (
    precision_cholesky_from_stats,
    precision_from_cholesky,
    stream,
    unpack_triangular,
)

PathLike = str | os.PathLike
BACKENDS = ("auto", "torch", "onnxruntime")
BACKBONE_DTYPES = ("float32", "int8")


def check_fitted(model: Padim) -> None:
    """Raise :class:`NotFittedError` unless ``model`` has been fitted or loaded."""
    if not hasattr(model, "precision_cholesky_packed_"):
        raise NotFittedError("this Padim model is not fitted yet: call fit(images) or Padim.load(path) first")


def resolve_params(model: Padim) -> dict[str, Any]:
    """Check a model's arguments; return its ``layer_info``, ``layers``, ``n_features`` and ``image_size``.

    Raises:
        OptionError: naming the argument, what it accepts and the value received.
    """
    spec, layer_info = get_spec(model.backbone), resolve_layers(model.backbone, model.layers)
    total = sum(info.channels for info in layer_info)
    n_features = min(spec.default_n_features, total) if model.n_features is None else model.n_features
    if isinstance(n_features, bool) or not isinstance(n_features, (int, np.integer)) or not 1 <= n_features <= total:
        names = [info.name for info in layer_info]
        raise OptionError(f"n_features must be an int from 1 to {total} (the channels of layers {names}), "
                          f"got {n_features!r}")  # fmt: skip
    image_size = as_size(model.image_size)
    check_blur(image_size, model.sigma)
    if min(image_size) <= layer_info[-1].stride:
        raise OptionError(f"image_size must exceed {layer_info[-1].stride} pixels per side for layer "
                          f"{layer_info[-1].name}, got {image_size}")  # fmt: skip
    number = (int, float, np.integer, np.floating)
    for name, ok, expected in (
        ("eps", isinstance(model.eps, number) and 0 <= model.eps < math.inf, "a number >= 0"),
        ("holdout", isinstance(model.holdout, number) and 0 <= model.holdout < 1, "a number in [0, 1)"),
        ("quantile", isinstance(model.quantile, number) and 0 < model.quantile <= 1, "a number in (0, 1]"),
        ("seed", isinstance(model.seed, (int, np.integer)) and 0 <= model.seed < 2**63, "an int in [0, 2**63)"),
        ("backend", model.backend in BACKENDS, f"one of {BACKENDS}"),
        ("stats_dtype", model.stats_dtype in ("float32", "float64"), "'float32' or 'float64'"),
        ("backbone_dtype", model.backbone_dtype in BACKBONE_DTYPES, f"one of {BACKBONE_DTYPES}"),
    ):
        if not ok:
            raise OptionError(f"{name} must be {expected}, got {getattr(model, name)!r}")
    if model.backend == "onnxruntime" and parse_device(model.device).type != "cpu":
        raise OptionError(f"backend='onnxruntime' runs on the CPU; got device={str(model.device)!r}")
    use_onnxruntime(model.backend, model.device, model.backbone_dtype)  # int8: only onnxruntime on the CPU
    check_device(model.device)
    first = layer_info[0].stride
    grid_stride = first if model.grid_stride is None else model.grid_stride
    strides = [first * 2**k for k in range(7)]
    if isinstance(grid_stride, bool) or grid_stride not in strides:
        raise OptionError(f"grid_stride must be one of {strides} (pixels per Gaussian), got {model.grid_stride!r}")
    tile = model.tile_size
    if tile is not None and (isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 0):
        raise OptionError(f"tile_size must be an int >= 0 (0: no tiling) or None (automatic), got {tile!r}")
    layers = tuple(info.name for info in layer_info)
    return dict(layer_info=layer_info, layers=layers, n_features=int(n_features), image_size=image_size,
                grid_stride=int(grid_stride))  # fmt: skip


class Padim:
    """PaDiM anomaly detector. The constructor only stores its arguments; ``fit`` checks them.

    Args (keyword only):
        backbone: ``"efficientnet_lite0"`` (default, offline ImageNet weights), ``"resnet18"`` or
            ``"wide_resnet50_2"``.
        layers: layer names (None: the backbone's defaults).
        n_features: d, channels kept (None: 100, or 550 for wide_resnet50_2, capped at the total).
        image_size: the working size: (height, width), or an int, the short side, with the long
            side from the training files' median aspect ratio (:mod:`padim.model.working_size`).
        seed: seeds the channel selection, the hold-out split and random backbone weights.
        eps: added to each covariance's diagonal (Sec. 3.2).
        sigma: standard deviation of the map's Gaussian blur, in pixels.
        pretrained: load ImageNet weights; False gives random weights (tests).
        weights: a weights file for the backbone instead of the default location.
        device: ``"cpu"``, ``"cuda"``, ...
        holdout: fraction of good images (given as files) kept out of the Gaussians for the threshold.
        quantile: the threshold is this quantile of the held-out good images' scores.
        backend: ``"torch"`` (eager), ``"onnxruntime"`` (CPU; the pipeline traced in memory,
            several times faster) or ``"auto"`` (onnxruntime on the CPU, torch elsewhere).
        stats_dtype: ``"float32"`` (default) or ``"float64"`` scatter matrices while fitting.
        backbone_dtype: ``"float32"`` (default) or ``"int8"``: the backbone quantised (onnxruntime,
            CPU), calibrated on a seeded subset of the good images given to ``fit`` (:mod:`padim.graph.quantize`).
        grid_stride: pixels per Gaussian (None: the first layer's stride); 16 makes the model 16 times smaller.
        tile_size: backbone tiles' side (:mod:`padim.features.tiling`; None: 1024 past 1024 px; 0: never).

    Fitted attributes: ``layers_``, ``image_size_`` (H, W), ``grid_stride_``, ``tile_size_`` (0:
    untiled), ``extractor_`` (the cut backbone), ``channel_idx_`` (D,), ``feature_size_`` (H, W
    grid), ``mean_`` (P, D), ``precision_cholesky_packed_`` (P, D(D+1)/2) float16: the upper
    triangles of the factors C of the precisions C C^T (:func:`padim.stats.gaussian.pack_triangular`),
    ``n_images_``, ``calibration_`` (or None), ``quantization_`` (int8 ranges, or None), ``skipped_``
    (unreadable files left out),
    ``stats_`` (streamed statistics, after ``partial_fit`` or ``fit(keep_stats=True)``),
    ``holdout_paths_`` (the files that set the threshold, for updates: :mod:`padim.model.incremental`).

    Example:
        >>> model = Padim(backbone="resnet18", pretrained=False, image_size=64, n_features=20, sigma=2)
        >>> model = model.fit(torch.randn(4, 3, 64, 64))
        >>> model.predict(torch.randn(2, 3, 64, 64)).anomaly_map.shape
        (2, 64, 64)
    """

    def __init__(self, *, backbone: str = "efficientnet_lite0", layers: Sequence[str] | None = None,
                 n_features: int | None = None, image_size: int | Sequence[int] = 256, seed: int = 0,
                 eps: float = 0.01, sigma: float = 4, pretrained: bool = True, weights: PathLike | None = None,
                 device: str | torch.device = "cpu", holdout: float = 0.1, quantile: float = 0.99,
                 backend: str = "auto", stats_dtype: str = "float32", backbone_dtype: str = "float32",
                 grid_stride: int | None = None, tile_size: int | None = None) -> None:  # fmt: skip
        self.backbone, self.layers, self.n_features, self.image_size = backbone, layers, n_features, image_size
        self.seed, self.eps, self.sigma, self.pretrained, self.weights = seed, eps, sigma, pretrained, weights
        self.device, self.holdout, self.quantile, self.backend = device, holdout, quantile, backend
        self.stats_dtype, self.backbone_dtype = stats_dtype, backbone_dtype
        self.grid_stride, self.tile_size = grid_stride, tile_size

    def fit(self, data: Any, *, validation: Any = None, batch_size: int | None = None, workers: int | None = None,
            quiet: bool = True, skip_bad: bool = False, keep_stats: bool = False) -> Padim:  # fmt: skip
        """Fit the per-patch Gaussians on good images, streaming; returns self.

        Args:
            data: good images in any form of :func:`padim.io.loading.as_batches`; a folder is an
                MVTec category (its ``train/good``) or a folder of good images.
            validation: good images for the threshold (same forms). If None and ``data`` names
                files, a ``holdout`` fraction of them is kept out of the Gaussians for it.
            batch_size, workers, quiet, skip_bad: decoding of image files (see
                :func:`padim.io.loading.iter_batches`; batch_size None: by working size, at most 32);
                unreadable files skipped are in ``skipped_``. Unless ``quiet``, the working size
                and the expected memory are printed first.
            keep_stats: keep the streamed statistics in ``stats_`` (mergeable with another stream's).

        Raises:
            OptionError: for a bad argument, or a model too large for this machine's memory.
            DataError: for a missing or empty folder, fewer than 2 images, or (unless ``skip_bad``)
            an unreadable image.
        """
        source, validation, options = self._start(data, validation, batch_size, workers, quiet, skip_bad)
        if self.backbone_dtype == "int8":  # the backbone is calibrated on the first images of the stream
            source = calibrate_model(self, source, **options)
        self._accumulate(source, desc="fit", **options)
        self._finish(keep_stats)
        if validation is not None:
            self.calibrate(validation, compact=True, **options)
        self.__dict__.get("_runners", {}).pop("embed", None)  # its onnxruntime arena is not needed any more
        memory.release_freed_memory()
        return self

    def _start(self, data: Any, validation: Any, batch_size: int | None, workers: int | None, quiet: bool,
               skip_bad: bool) -> tuple[Any, Any, dict]:  # fmt: skip
        """Fit's first steps: backbone, channels, working size, hold-out split; (images, validation, options)."""
        resolved = resolve_params(self)
        for name in ("stats_", "mean_", "precision_cholesky_packed_", "_runners"):
            self.__dict__.pop(name, None)
        self.layers_, self.skipped_, self.calibration_, self.quantization_ = resolved["layers"], {}, None, None
        self.extractor_ = FeatureExtractor(self.backbone, self.layers_, pretrained=self.pretrained,
                                           weights=self.weights, seed=self.seed).to(self.device)  # fmt: skip
        total = sum(info.channels for info in resolved["layer_info"])
        self.channel_idx_ = select_channels(total, resolved["n_features"], self.seed)
        samples = to_samples(data, folder="good")
        apply_plan(self, resolved, None if samples is None else [s.path for s in samples], batch_size, quiet)
        if math.prod(self.image_size_) > memory.SMALL_FIT_PIXELS:  # fragments matter; see memory.return_large_blocks
            memory.return_large_blocks()
        if samples is not None and validation is None:
            samples, held = split_holdout(samples, self.holdout, self.seed)
            validation = held or None
        named = None if validation is None else to_samples(validation, folder="good")
        self.holdout_paths_ = [] if named is None else [s.path for s in named]  # for updates (padim.model.incremental)
        batch_size = memory.default_batch_size(self.image_size_) if batch_size is None else batch_size
        options = dict(batch_size=batch_size, workers=workers, quiet=quiet, skip_bad=skip_bad)
        return (samples if samples is not None else data), validation, options

    def partial_fit(self, images: Any) -> Padim:
        """Add pre-processed good images (N, 3, H, W) to the statistics and refit; returns self.

        The first call starts a model as ``fit`` does (without a threshold); each call computes
        the precision again, so pass large batches (or use ``fit`` with an iterable of them).
        """
        if not hasattr(self, "stats_"):
            return self.fit(images, keep_stats=True)
        self._accumulate(images, desc="")
        self._finish(keep_stats=True)
        return self

    def _accumulate(self, data: Any, desc: str, **options: Any) -> None:
        """Stream images into the statistics, the backbone a few images at a time (bounded activations)."""
        dtype = torch.float32 if self.stats_dtype == "float32" else torch.float64
        skipped = self.__dict__.setdefault("skipped_", {})
        step = memory.images_per_run(self.image_size_, memory.FIT_PIXELS)
        batches = as_batches(data, self.image_size_, folder="good", desc=desc, skipped=skipped, **options)
        blocks = (self.embed(b[i : i + step]).to(self.device) for b in batches for i in range(0, len(b), step))
        group = memory.update_bytes(math.prod(self.feature_size_), len(self.channel_idx_))
        self.stats_ = stream(self.__dict__.get("stats_"), blocks, dtype, group)
        if self.stats_ is not None and self.stats_.mean.shape[0] != math.prod(self.feature_size_):
            raise RuntimeError(f"{self.stats_.mean.shape[0]} patches, expected the grid {self.feature_size_}")

    def _finish(self, keep_stats: bool) -> None:
        """Means and precisions from the streamed statistics (Sec. 3.2)."""
        stats = self.__dict__.get("stats_")
        if stats is None:
            raise DataError("fitting needs at least 2 good images, got none")
        self.n_images_, self.mean_ = stats.count, stats.mean.float()
        self.precision_cholesky_packed_ = precision_cholesky_from_stats(stats, self.eps, packed=True)
        self.__dict__.get("_runners", {}).pop("pipeline", None)  # the Gaussians changed
        if not keep_stats:
            del self.stats_

    def calibrate(self, good: Any, defective: Any = None, *, compact: bool = False, **options: Any) -> Padim:
        """Set the thresholds: a ``quantile`` of good images' scores, or F1-max with defective images too.

        ``good`` is read as fit's ``data`` (a folder: an MVTec category's ``train/good`` or its
        images); ``defective`` as images (a folder: the images inside). The pixel threshold of
        the regions comes from the good images' maps (:mod:`padim.runtime.calibrate`). ``compact``:
        predict with the least memory (see :meth:`predictor`), as ``fit`` does. Returns self.
        """
        from padim.runtime.calibrate import calibration_from_images

        self.calibration_, _, _ = calibration_from_images(
            self.predictor(compact=compact), good, defective, quantile=self.quantile, good_folder="good", **options
        )
        return self

    def embed(self, images: Any) -> torch.Tensor:
        """Patch-first embeddings (P, N, D) of a pre-processed batch (N, 3, H, W) (:mod:`padim.features.embedding`)."""
        if not hasattr(self, "channel_idx_"):
            raise NotFittedError("this Padim model is not fitted yet: call fit(images) or Padim.load(path) first")
        return torch.as_tensor(self._runner("embed")(images=images)["patches"])

    def precision(self) -> torch.Tensor:
        """The inverse covariances (P, D, D), computed from the packed factors (for anomalib's API)."""
        check_fitted(self)
        return precision_from_cholesky(unpack_triangular(self.precision_cholesky_packed_))

    def predict(self, images: Any, **options: Any) -> Prediction:
        """:class:`padim.runtime.predictor.Prediction` of images in any form of :func:`padim.io.loading.as_batches`."""
        return self.predictor().predict(images, **options)

    def predictor(self, *, compact: bool = False) -> Predictor:
        """This model behind the predictor interface of :mod:`padim.runtime.predictor` (as ``open_model`` gives).

        ``compact``: a one-off predictor with the least memory (as ``fit`` sets the threshold):
        slower, a few images at a time, on the packed factors (:func:`padim.graph.pipeline.model_runner`).
        """
        check_fitted(self)
        kind = "onnxruntime" if use_onnxruntime(self.backend, self.device, self.backbone_dtype) else "torch"
        run = model_runner(self, "compact") if compact else self._runner("pipeline")
        return Predictor(run, image_size=self.image_size_, calibration=self.calibration_, config=self.config(),
                         kind=kind, run_pixels=memory.FIT_PIXELS if compact else None)  # fmt: skip

    def pipeline(self) -> Pipeline:
        """The inference module of this fitted model (:mod:`padim.graph.pipeline`); its state is passed as inputs."""
        check_fitted(self)
        return Pipeline(self.embedder(), Scorer(self.feature_size_, self.image_size_, self.sigma))

    def embedder(self) -> Embedder:
        """The embedding module of this fitted model: backbone (tiled or not), channels, grid."""
        align = self.extractor_.layer_info[-1].stride
        tiles = TilePlan.make(self.image_size_, self.tile_size_, align) if self.tile_size_ else None
        return Embedder(self.extractor_, self.channel_idx_, grid=self.feature_size_, tiles=tiles)

    def _runner(self, kind: str) -> Any:
        """The executor of the embedding (while fitting) or of the whole pipeline; built once, then reused."""
        runners = self.__dict__.setdefault("_runners", {})
        if kind not in runners:
            runners[kind] = model_runner(self, kind)
        return runners[kind]

    def config(self) -> dict:
        """What defines this fitted model (JSON-serialisable; stored in its files)."""
        check_fitted(self)
        return dict(backbone=self.backbone, layers=list(self.layers_), n_features=len(self.channel_idx_),
                    image_size=list(self.image_size_), seed=int(self.seed), eps=float(self.eps), sigma=self.sigma,
                    holdout=float(self.holdout), quantile=float(self.quantile), pretrained=bool(self.pretrained),
                    backbone_dtype=self.backbone_dtype, grid_stride=int(self.grid_stride_),
                    tile_size=int(self.tile_size_))  # fmt: skip

    def save(self, path: PathLike) -> Any:
        """Write the model to one safetensors file (atomic); see :func:`padim.modelfile.padim_file.save`."""
        from padim.modelfile import padim_file as model_file

        return model_file.save(self, path)

    @classmethod
    def load(cls, path: PathLike, device: str | torch.device = "cpu", backend: str = "auto") -> Padim:
        """Read a model file; runs no code from it (see :func:`padim.modelfile.padim_file.load`)."""
        from padim.modelfile import padim_file as model_file

        return model_file.load(path, device=device, backend=backend)

    def __repr__(self) -> str:
        names = ("backbone", "layers", "n_features", "image_size", "seed", "eps", "sigma", "backbone_dtype",
                 "grid_stride", "tile_size")  # fmt: skip
        return f"Padim({', '.join(f'{k}={getattr(self, k)!r}' for k in names)})"
