"""The PaDiM estimator: fit per-patch Gaussians on good images by streaming, then predict.

PaDiM (Defard et al. 2020, https://arxiv.org/abs/2011.08785). ``__init__`` stores the
arguments; ``fit`` checks them (:mod:`padim.model.settings`) and runs the steps of
:mod:`padim.model.fitting`; ``fit`` and ``predict`` are separate methods, not modes of
``forward``. The fitted state is one :class:`padim.model.fitting.Fitted` record, adopted whole
and written only by this class. Inference runs the graph of :mod:`padim.graph.build`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import fields, replace
from typing import Any

import torch

from padim.align.reference import threshold_from
from padim.graph.build import GraphSpec, compact_runner, embedding_runner, pipeline_runner
from padim.graph.runners import use_onnxruntime
from padim.io.loading import FIT_PIXELS
from padim.machine import ENV_THREADS, cpu_threads, release_freed_memory
from padim.model import files, fitting, quality
from padim.model.fitting import Fitted
from padim.model.settings import check_fitted, config_of, params_of
from padim.runtime.calibrate import calibration_from_images
from padim.runtime.predictor import Prediction, Predictor
from padim.stats.gaussian import GaussianStats, precision_from_cholesky, unpack_triangular

PathLike = str | os.PathLike
#: ``gather(model, images, options) -> (statistics, skipped files)``: how a fit collects its statistics.
Gather = Callable[["Padim", Any, dict], tuple[GaussianStats | None, dict]]


class Padim:
    """PaDiM anomaly detector. The constructor only stores its arguments; ``fit`` checks them.

    All arguments are keyword-only; their ranges are in :data:`padim.options.OPTIONS`.

    Args:
        backbone: ``"efficientnet_lite0"`` (default, offline ImageNet weights), ``"resnet18"`` or ``"wide_resnet50_2"``.
        layers: layer names (None: the backbone's defaults). n_features: d (None: 100, 550 for wide_resnet50_2).
        image_size: (height, width), or an int: the short side, the long side from the training files'
            median aspect ratio (:mod:`padim.model.working_size`).
        seed: the channel selection, the hold-out split and random weights. eps: added to each
            covariance's diagonal (Sec. 3.2). sigma: the map's blur, in pixels.
        pretrained: load ImageNet weights (False: random, for tests). weights: a weights file instead.
        device: ``"cpu"``, ``"cuda"``... backend: ``"auto"`` (onnxruntime on the CPU, torch elsewhere),
            ``"torch"`` or ``"onnxruntime"``.
        holdout: share of the good files kept out of the Gaussians to set the threshold.
        quantile: the threshold is this quantile of the held-out images' scores.
        stats_dtype: the scatter matrices while fitting. backbone_dtype: ``"int8"`` or ``"bfloat16"``
            (:mod:`padim.graph.quantize`). grid_stride: pixels per Gaussian. tile_size: backbone tiles
            (:mod:`padim.features.tiling`). align: ``"translate"`` (default), ``"rigid"`` or ``"none"``:
            register each image to a reference of the good ones first (:mod:`padim.align`).

    Fitted attributes: those of :class:`padim.model.fitting.Fitted`, each name with ``_`` (``mean_`` (P, D),
    ``precision_cholesky_packed_`` (P, D(D+1)/2) float16, ``calibration_``, ``alignment_``, ...).

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
                 grid_stride: int | None = None, tile_size: int | None = None, align: str = "translate") -> None:  # fmt: skip
        self.backbone, self.layers, self.n_features, self.image_size = backbone, layers, n_features, image_size
        self.seed, self.eps, self.sigma, self.pretrained, self.weights = seed, eps, sigma, pretrained, weights
        self.device, self.holdout, self.quantile, self.backend = device, holdout, quantile, backend
        self.stats_dtype, self.backbone_dtype = stats_dtype, backbone_dtype
        self.grid_stride, self.tile_size, self.align = grid_stride, tile_size, align

    @classmethod
    def from_fitted(cls, fitted: Fitted, **params: Any) -> Padim:
        """A model with these constructor arguments that has adopted ``fitted`` (a loaded or merged model)."""
        model = cls(**params)
        model._adopt(fitted)
        return model

    def fit(self, data: Any, *, validation: Any = None, batch_size: int | None = None, workers: int | None = None,
            quiet: bool = True, skip_bad: bool = False, keep_stats: bool = False, gather: Gather | None = None) -> Padim:  # fmt: skip
        """Fit the per-patch Gaussians on good images, streaming; returns self.

        Args:
            data: good images in any form of :func:`padim.io.loading.as_batches`; a folder is an
                MVTec category (its ``train/good``) or a folder of good images.
            validation: good images for the threshold; None: a ``holdout`` share of ``data``'s files.
            batch_size, workers, quiet, skip_bad: decoding (:func:`padim.io.loading.iter_batches`);
                unless ``quiet``, the working size and the expected memory are printed first.
            keep_stats: keep the statistics in ``stats_`` (mergeable with another stream's).
            gather: collects the statistics (None: streamed here; :mod:`padim.model.distributed`: on Ray).

        Raises:
            OptionError: for a bad argument or a fit too large for this machine's memory.
            DataError: for a missing or empty folder, fewer than 2 images, or (unless ``skip_bad``) a bad image.
        """
        setup = fitting.prepare(self, data, validation, batch_size=batch_size, workers=workers, quiet=quiet,
                                skip_bad=skip_bad)  # fmt: skip
        self._adopt(setup.fitted)
        if self.align != "none":  # the reference first: every image the backbone sees is registered to it
            self.alignment_, setup.source = fitting.alignment(self.align, self.image_size_, setup.source,
                                                              self.skipped_, **setup.options)  # fmt: skip
        if gather is not None:
            stats, skipped = gather(self, setup.source, {**setup.options, "keep_stats": keep_stats})
            self.skipped_.update(skipped)
        else:
            source = setup.source
            if self.backbone_dtype == "int8":  # calibrated on the first images of the stream
                self.quantization_, self._runners["embed"], source = fitting.int8_calibration(
                    self.graph_spec(), source, self.seed, self.skipped_, reference=self.alignment_, **setup.options
                )
            stats = self._statistics(source, None, setup.options)
        self._set_gaussians(stats, keep_stats)
        if setup.validation is not None:  # bfloat16: calibrated by the whole graph it predicts with; checked
            self.calibrate(setup.validation, compact=self.backbone_dtype != "bfloat16", **setup.options)
            self.precision_check_ = quality.checked(self, setup, gather is None)
        self._runners.pop("embed", None)  # its onnxruntime arena is not needed any more
        release_freed_memory()
        return self

    def partial_fit(self, images: Any) -> Padim:
        """Add pre-processed good images (N, 3, H, W) to the statistics and factor again (pass large batches)."""
        if getattr(self, "stats_", None) is None:
            return self.fit(images, keep_stats=True)
        self._set_gaussians(self._statistics(images, self.stats_, {"desc": ""}), keep_stats=True)
        return self

    def _statistics(self, data: Any, stats: GaussianStats | None, options: dict) -> GaussianStats | None:
        dtype = torch.float32 if self.stats_dtype == "float32" else torch.float64
        return fitting.statistics(self._runner("embed"), data, self.graph_spec(), stats=stats, dtype=dtype,
                                  device=self.device, skipped=self.skipped_, reference=self.alignment_, **options)  # fmt: skip

    def _set_gaussians(self, stats: GaussianStats | None, keep_stats: bool) -> None:
        """Means and precisions from the statistics (Sec. 3.2)."""
        self.n_images_, self.mean_, self.precision_cholesky_packed_ = fitting.gaussians(stats, self.eps)
        self.stats_ = fitting.kept(stats) if keep_stats else None
        self._runners.pop("pipeline", None)  # the Gaussians changed

    def _adopt(self, fitted: Fitted) -> None:
        """Take ``fitted`` as this model's whole state (executors built for an earlier state are dropped)."""
        for item in fields(Fitted):
            setattr(self, f"{item.name}_", getattr(fitted, item.name))
        self._runners: dict[str, Any] = {}

    def fitted(self) -> Fitted:
        """This model's state as one record (the file's content; a copy of the references, not of the tensors)."""
        check_fitted(self)
        return Fitted(**{item.name: getattr(self, f"{item.name}_") for item in fields(Fitted)})

    def calibrate(self, good: Any, defective: Any = None, *, compact: bool = False, **options: Any) -> Padim:
        """Set the thresholds: a ``quantile`` of good images' scores, or F1-max with defective images too.

        ``good`` is read as fit's ``data``, ``defective`` as images; the regions' pixel threshold
        comes from the good maps (:mod:`padim.runtime.calibrate`). ``compact``: the least memory. Returns self.
        """
        self.calibration_, _, _, confidence = calibration_from_images(
            self.predictor(compact=compact), good, defective, quantile=self.quantile, good_folder="good", **options
        )
        if confidence is not None:  # whose registration is trusted: as far from the reference as these good ones
            self.alignment_ = replace(self.alignment_, threshold=threshold_from(confidence))
        return self

    def graph_spec(self) -> GraphSpec:
        """What defines this model's inference graph: :func:`padim.graph.build.pipeline` builds it from this."""
        return GraphSpec(self.extractor_, self.channel_idx_, self.feature_size_, self.image_size_, self.tile_size_,
                         self.sigma, self.quantization_, self.backbone_dtype)  # fmt: skip

    def embed(self, images: Any) -> torch.Tensor:
        """Patch-first embeddings (P, N, D) of a pre-processed batch (N, 3, H, W) (:mod:`padim.features.embedding`)."""
        check_fitted(self)
        return torch.as_tensor(self._runner("embed")(images=images)["patches"])

    def precision(self) -> torch.Tensor:
        """The inverse covariances (P, D, D), computed from the packed factors (for anomalib's API)."""
        check_fitted(self)
        return precision_from_cholesky(unpack_triangular(self.precision_cholesky_packed_))

    def predict(self, images: Any, **options: Any) -> Prediction:
        """:class:`padim.runtime.predictor.Prediction` of images in any form of :func:`padim.io.loading.as_batches`."""
        return self.predictor().predict(images, **options)

    def predictor(self, *, compact: bool = False) -> Predictor:
        """This model behind the predictor interface of :mod:`padim.runtime` (as ``open_model`` gives).

        ``compact``: a one-off predictor with the least memory, as ``fit`` sets the threshold:
        slower, a few images at a time, on the packed factors (:func:`padim.graph.build.compact_runner`).
        """
        check_fitted(self)
        kind = "openvino" if self.backbone_dtype == "bfloat16" else "onnxruntime" if self._onnxruntime() else "torch"
        run = (compact_runner(self.graph_spec(), self._runner("embed"), self.mean_, self.precision_cholesky_packed_,
                              self.device) if compact else self._runner("pipeline"))  # fmt: skip
        return Predictor(run, image_size=self.image_size_, calibration=self.calibration_, config=self.config(),
                         kind=kind, run_pixels=FIT_PIXELS if compact else None, alignment=self.alignment_)  # fmt: skip

    def _onnxruntime(self) -> bool:
        return use_onnxruntime(self.backend, self.device, self.backbone_dtype)

    def _runner(self, kind: str) -> Any:
        """The executor of the embedding (``"embed"``) or of the whole pipeline; built once, then reused."""
        if kind not in self._runners:
            spec, device, ort = self.graph_spec(), self.device, self._onnxruntime()
            self._runners[kind] = (embedding_runner(spec, device, ort) if kind == "embed" else
                                   pipeline_runner(spec, self.mean_, self.precision_cholesky_packed_, device, ort))  # fmt: skip
        return self._runners[kind]

    def get_params(self) -> dict[str, Any]:
        """The constructor arguments, as given (scikit-learn's ``get_params``)."""
        return params_of(self)

    def config(self) -> dict:
        """What defines this fitted model (JSON-serialisable; stored in its files): :func:`padim.model.settings.config_of`."""
        check_fitted(self)
        return config_of(self)

    def save(self, path: PathLike) -> Any:
        """Write the model to one safetensors file (atomic); see :func:`padim.model.files.save`."""
        return files.save(self, path)

    @classmethod
    def load(cls, path: PathLike, device: str | torch.device = "cpu", backend: str = "auto") -> Padim:
        """Read a model file; runs no code from it (see :func:`padim.model.files.read`)."""
        params, fitted = files.read(path, device=device, backend=backend)
        return cls.from_fitted(fitted, **params)

    def __repr__(self) -> str:
        names = ("backbone", "layers", "n_features", "image_size", "seed", "eps", "sigma", "backbone_dtype",
                 "grid_stride", "tile_size")  # fmt: skip
        return f"Padim({', '.join(f'{k}={getattr(self, k)!r}' for k in names)})"


def open_padim(path: PathLike, device: str = "cpu", backend: str = "auto") -> Predictor:
    """A ``.padim`` file ready to predict (what :func:`padim.runtime.opening.open_model` opens it with)."""
    if os.environ.get(ENV_THREADS):  # a worker given a share of the CPUs (a Ray actor): torch keeps to it too
        torch.set_num_threads(cpu_threads())
    return Padim.load(path, device=device, backend=backend).predictor()
