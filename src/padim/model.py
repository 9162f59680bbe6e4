"""The PaDiM estimator: fit per-patch Gaussians on good images by streaming, then predict.

PaDiM (Defard et al. 2020, https://arxiv.org/abs/2011.08785): embed each patch with several
backbone layers (Sec. 3.1, :mod:`padim.embedding`), fit one Gaussian per patch position
(Sec. 3.2, :mod:`padim.gaussian`), and score by the Mahalanobis distance (Sec. 3.3,
:mod:`padim.anomaly_map`). Fitting streams sufficient statistics, so memory does not grow with
the number of images; ``fit`` and ``predict`` are separate methods, not modes of ``forward``.
Inference runs the one pipeline of :mod:`padim.pipeline`; files are :mod:`padim.model_file`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
import torch

from padim.anomaly_map import check_blur
from padim.backbones import FeatureExtractor, get_spec, resolve_layers
from padim.datasets import split_holdout
from padim.embedding import select_channels
from padim.errors import DataError, NotFittedError, OptionError
from padim.gaussian import accumulate, precision_cholesky_from_stats, precision_from_cholesky
from padim.images import as_size
from padim.loading import as_batches, to_samples
from padim.pipeline import OUTPUTS, Embedder, Pipeline, Scorer, make_runner, use_onnxruntime
from padim.quantize import calibrate_model, quantize
from padim.runtime import Prediction, Predictor

PathLike = str | os.PathLike
BACKENDS = ("auto", "torch", "onnxruntime")
BACKBONE_DTYPES = ("float32", "int8")


def check_fitted(model: Padim) -> None:
    """Raise :class:`NotFittedError` unless ``model`` has been fitted or loaded."""
    if not hasattr(model, "precision_cholesky_"):
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
    if model.backend == "onnxruntime" and torch.device(model.device).type != "cpu":
        raise OptionError(f"backend='onnxruntime' runs on the CPU; got device={str(model.device)!r}")
    use_onnxruntime(model.backend, model.device, model.backbone_dtype)  # int8: only onnxruntime on the CPU
    layers = tuple(info.name for info in layer_info)
    return dict(layer_info=layer_info, layers=layers, n_features=int(n_features), image_size=image_size)


class Padim:
    """PaDiM anomaly detector. The constructor only stores its arguments; ``fit`` checks them.

    Args (keyword only):
        backbone: ``"efficientnet_lite0"`` (default, offline ImageNet weights), ``"resnet18"`` or
            ``"wide_resnet50_2"``.
        layers: layer names (None: the backbone's defaults).
        n_features: d, channels kept (None: 100, or 550 for wide_resnet50_2, capped at the total).
        image_size: int or (height, width) the images are resized to.
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
            CPU), calibrated on a seeded subset of the good images given to ``fit`` (:mod:`padim.quantize`).

    Fitted attributes: ``layers_``, ``image_size_`` (H, W), ``extractor_`` (the cut backbone),
    ``channel_idx_`` (D,), ``feature_size_`` (H, W grid), ``mean_`` (P, D),
    ``precision_cholesky_`` (P, D, D; the precisions are C C^T, see :meth:`precision`),
    ``n_images_``, ``calibration_`` (or None), ``quantization_`` (int8 ranges, or None), ``skipped_``,
    ``stats_`` (streamed statistics, after ``partial_fit`` or ``fit(keep_stats=True)``).

    Example:
        >>> model = Padim(backbone="resnet18", pretrained=False, image_size=64, n_features=20, sigma=2)
        >>> model = model.fit(torch.randn(4, 3, 64, 64))
        >>> model.predict(torch.randn(2, 3, 64, 64)).anomaly_map.shape
        (2, 64, 64)
    """

    #: Images embedded at once while fitting: bounds the backbone's activations (about 80 MB at
    #: 256 px for efficientnet_lite0) at a few percent of speed.
    fit_chunk = 8

    def __init__(self, *, backbone: str = "efficientnet_lite0", layers: Sequence[str] | None = None,
                 n_features: int | None = None, image_size: int | Sequence[int] = 256, seed: int = 0,
                 eps: float = 0.01, sigma: float = 4, pretrained: bool = True, weights: PathLike | None = None,
                 device: str | torch.device = "cpu", holdout: float = 0.1, quantile: float = 0.99,
                 backend: str = "auto", stats_dtype: str = "float32", backbone_dtype: str = "float32") -> None:  # fmt: skip
        self.backbone, self.layers, self.n_features, self.image_size = backbone, layers, n_features, image_size
        self.seed, self.eps, self.sigma, self.pretrained, self.weights = seed, eps, sigma, pretrained, weights
        self.device, self.holdout, self.quantile, self.backend = device, holdout, quantile, backend
        self.stats_dtype, self.backbone_dtype = stats_dtype, backbone_dtype

    def fit(self, data: Any, *, validation: Any = None, batch_size: int = 32, workers: int | None = None,
            quiet: bool = True, skip_bad: bool = False, keep_stats: bool = False) -> Padim:  # fmt: skip
        """Fit the per-patch Gaussians on good images, streaming; returns self.

        Args:
            data: good images in any form of :func:`padim.loading.as_batches`; a folder is an
                MVTec category (its ``train/good``) or a folder of good images.
            validation: good images for the threshold (same forms). If None and ``data`` names
                files, a ``holdout`` fraction of them is kept out of the Gaussians for it.
            batch_size, workers, quiet, skip_bad: decoding of image files (see
                :func:`padim.loading.iter_batches`); unreadable files skipped are in ``skipped_``.
            keep_stats: keep the streamed statistics in ``stats_`` (mergeable with another
                stream's); otherwise the precision reuses their memory.

        Raises:
            OptionError: for a bad argument. DataError: for a missing or empty folder, fewer
            than 2 images, or (unless ``skip_bad``) an unreadable image.
        """
        resolved = resolve_params(self)
        for name in ("stats_", "mean_", "precision_cholesky_", "_runners"):
            self.__dict__.pop(name, None)
        layer_info, self.layers_, self.image_size_ = resolved["layer_info"], resolved["layers"], resolved["image_size"]
        self.skipped_, self.calibration_, self.quantization_ = {}, None, None
        self.extractor_ = FeatureExtractor(self.backbone, self.layers_, pretrained=self.pretrained,
                                           weights=self.weights, seed=self.seed).to(self.device)  # fmt: skip
        total = sum(info.channels for info in layer_info)
        self.channel_idx_ = select_channels(total, resolved["n_features"], self.seed)
        self.feature_size_ = get_spec(self.backbone).grid(self.image_size_, layer_info[0].stride)
        samples = to_samples(data, folder="good")
        if samples is not None and validation is None:
            samples, held = split_holdout(samples, self.holdout, self.seed)
            validation = held or None
        options = dict(batch_size=batch_size, workers=workers, quiet=quiet, skip_bad=skip_bad)
        source = samples if samples is not None else data
        if self.backbone_dtype == "int8":  # the backbone is calibrated on the first images of the stream
            source = calibrate_model(self, source, **options)
        self._accumulate(source, desc="fit", **options)
        self._finish(keep_stats)
        if validation is not None:
            self.calibrate(validation, **options)
        return self

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
        dtype = torch.float32 if self.stats_dtype == "float32" else torch.float64
        skipped = self.__dict__.setdefault("skipped_", {})
        for batch in as_batches(data, self.image_size_, folder="good", desc=desc, skipped=skipped, **options):
            for start in range(0, len(batch), self.fit_chunk):
                patches = self.embed(batch[start : start + self.fit_chunk]).to(self.device)
                if patches.shape[0] != math.prod(self.feature_size_):  # a backbone declared a wrong grid
                    raise RuntimeError(f"{patches.shape[0]} patches, expected the grid {self.feature_size_}")
                self.stats_ = accumulate(self.__dict__.get("stats_"), patches, dtype)

    def _finish(self, keep_stats: bool) -> None:
        """Means and precisions from the streamed statistics (Sec. 3.2)."""
        stats = self.__dict__.get("stats_")
        if stats is None:
            raise DataError("fitting needs at least 2 good images, got none")
        self.n_images_, self.mean_ = stats.count, stats.mean.float()
        in_place = not keep_stats and stats.m2.dtype == torch.float32
        self.precision_cholesky_ = precision_cholesky_from_stats(stats, self.eps, in_place=in_place)
        self.__dict__.get("_runners", {}).pop("pipeline", None)  # the Gaussians changed
        if not keep_stats:
            del self.stats_

    def calibrate(self, good: Any, defective: Any = None, **options: Any) -> Padim:
        """Set the thresholds: a ``quantile`` of good images' scores, or F1-max with defective images too.

        ``good`` is read as fit's ``data`` (a folder: an MVTec category's ``train/good`` or its
        images); ``defective`` as images (a folder: the images inside). The pixel threshold of
        the regions comes from the good images' maps (:mod:`padim.calibration`). Returns self.
        """
        from padim.calibration import calibration_from_images

        self.calibration_, _, _ = calibration_from_images(
            self.predictor(), good, defective, quantile=self.quantile, good_folder="good", **options
        )
        return self

    def embed(self, images: Any) -> torch.Tensor:
        """Patch-first embeddings (P, N, D) of a pre-processed batch (N, 3, H, W) (:mod:`padim.embedding`)."""
        if not hasattr(self, "channel_idx_"):
            raise NotFittedError("this Padim model is not fitted yet: call fit(images) or Padim.load(path) first")
        return torch.as_tensor(self._runner("embed")(images=images)["patches"])

    def precision(self) -> torch.Tensor:
        """The inverse covariances (P, D, D), computed from ``precision_cholesky_`` (for anomalib's API)."""
        check_fitted(self)
        return precision_from_cholesky(self.precision_cholesky_)

    def predict(self, images: Any, **options: Any) -> Prediction:
        """:class:`padim.runtime.Prediction` of images in any form of :func:`padim.loading.as_batches`."""
        return self.predictor().predict(images, **options)

    def predictor(self) -> Predictor:
        """This model behind the predictor interface of :mod:`padim.runtime` (as ``open_model`` gives)."""
        check_fitted(self)
        kind = "onnxruntime" if use_onnxruntime(self.backend, self.device, self.backbone_dtype) else "torch"
        return Predictor(self._runner("pipeline"), image_size=self.image_size_, calibration=self.calibration_,
                         config=self.config(), kind=kind)  # fmt: skip

    def pipeline(self) -> Pipeline:
        """The inference module of this fitted model (:mod:`padim.pipeline`); its state is passed as inputs."""
        check_fitted(self)
        scorer = Scorer(self.feature_size_, self.image_size_, self.sigma)
        return Pipeline(Embedder(self.extractor_, self.channel_idx_), scorer)

    def _runner(self, kind: str) -> Any:
        """The executor of the embedding (while fitting) or of the whole pipeline; built once, then reused."""
        runners = self.__dict__.setdefault("_runners", {})
        if kind not in runners:
            images = torch.zeros(2, 3, *self.image_size_)
            options = dict(
                device=self.device, onnxruntime=use_onnxruntime(self.backend, self.device, self.backbone_dtype)
            )
            if self.__dict__.get("quantization_") is not None:  # int8: the same ranges for every graph
                options["transform"] = partial(quantize, quantization=self.quantization_)
            if kind == "embed":
                module = Embedder(self.extractor_, self.channel_idx_)
                runners[kind] = make_runner(module, {"images": images}, ["patches"], {"images": 0, "patches": 1},
                                            **options)  # fmt: skip
            else:
                example = {"images": images, "mean": self.mean_, "precision_cholesky": self.precision_cholesky_,
                           "threshold": torch.tensor(1.0), "scale": torch.tensor(1.0)}  # fmt: skip
                axes = {"images": 0, **dict.fromkeys(OUTPUTS, 0)}
                runners[kind] = make_runner(self.pipeline(), example, OUTPUTS, axes, bound=("mean", "precision_cholesky"),
                                            **options)  # fmt: skip
        return runners[kind]

    def config(self) -> dict:
        """What defines this fitted model (JSON-serialisable; stored in its files)."""
        check_fitted(self)
        return dict(backbone=self.backbone, layers=list(self.layers_), n_features=len(self.channel_idx_),
                    image_size=list(self.image_size_), seed=int(self.seed), eps=float(self.eps), sigma=self.sigma,
                    holdout=float(self.holdout), quantile=float(self.quantile), pretrained=bool(self.pretrained),
                    backbone_dtype=self.backbone_dtype)  # fmt: skip

    def save(self, path: PathLike) -> Any:
        """Write the model to one safetensors file (atomic); see :func:`padim.model_file.save`."""
        from padim import model_file

        return model_file.save(self, path)

    @classmethod
    def load(cls, path: PathLike, device: str | torch.device = "cpu", backend: str = "auto") -> Padim:
        """Read a model file; runs no code from it (see :func:`padim.model_file.load`)."""
        from padim import model_file

        return model_file.load(path, device=device, backend=backend)

    def __repr__(self) -> str:
        names = ("backbone", "layers", "n_features", "image_size", "seed", "eps", "sigma", "backbone_dtype")
        return f"Padim({', '.join(f'{k}={getattr(self, k)!r}' for k in names)})"
