"""The PaDiM model: embed, fit per-patch Gaussians by streaming, predict anomaly maps.

PaDiM (Defard et al. 2020, https://arxiv.org/abs/2011.08785):
1. Embedding (Sec. 3.1): activations of several backbone layers, later layers resized
   (nearest) onto the first layer's grid and concatenated; ``n_features`` channels kept,
   drawn at random from ``seed`` (Sec. 4.2 shows random selection works as well as PCA).
2. Learning (Sec. 3.2): one Gaussian per patch position, covariance + ``eps`` * I.
3. Inference (Sec. 3.3): Mahalanobis distance per patch (Eq. 2), up-sampled, Gaussian-blurred;
   the image score is the maximum of the map.

Fitting streams sufficient statistics (:mod:`padim.gaussian`), so memory does not grow with
the number of images. ``fit`` and ``predict`` are separate methods, not modes of ``forward``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from padim import __version__
from padim.anomaly_map import AnomalyMapGenerator, gaussian_kernel1d
from padim.backbones import FeatureExtractor, get_spec, resolve_layers
from padim.calibration import Calibration, from_labelled_scores, from_normal_scores
from padim.gaussian import GaussianStats, precision_from_stats
from padim.model_file import ModelFileError, read_model_file, write_model_file
from padim.prediction import Prediction, make_prediction
from padim.transforms import as_size, list_images, preprocess

PathLike = str | os.PathLike


class NotFittedError(ValueError, AttributeError):
    """The model was used before ``fit`` (or ``load``)."""


def select_channels(n_total: int, n_features: int, seed: int) -> Tensor:
    """``n_features`` distinct channel indices out of ``n_total``, drawn from ``seed``, sorted.

    Drawn with torch's CPU generator, which gives the same numbers on every machine.

    >>> select_channels(10, 4, seed=0).tolist() == select_channels(10, 4, seed=0).tolist()
    True
    """
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n_total, generator=generator)[:n_features].sort().values


def embed(features: Sequence[Tensor], channel_idx: Tensor, channels: Sequence[int]) -> Tensor:
    """PaDiM embedding from layer activations (Sec. 3.1).

    Equal to concatenating every layer (later ones nearest-resized to the first grid) and then
    taking ``channel_idx``; choosing channels first saves resizing channels that are dropped.

    Args:
        features: per layer (N, C_l, H_l, W_l), the first one on the finest grid (H, W).
        channel_idx: (D,) sorted indices into the concatenation of all C_l.
        channels: C_l per layer.

    Returns:
        (N, D, H, W).
    """
    size = features[0].shape[-2:]
    parts, start = [], 0
    for feature, n_channels in zip(features, channels):
        local = channel_idx[(channel_idx >= start) & (channel_idx < start + n_channels)] - start
        start += n_channels
        if local.numel() == 0:
            continue
        part = feature.index_select(1, local.to(feature.device))
        if part.shape[-2:] != size:
            part = F.interpolate(part, size=size, mode="nearest")
        parts.append(part)
    return torch.cat(parts, dim=1)


class Padim:
    """PaDiM anomaly detector.

    Args (keyword only):
        backbone: ``"efficientnet_lite0"`` (default, offline ImageNet weights), ``"resnet18"`` or
            ``"wide_resnet50_2"``.
        layers: layer names (None: the backbone's defaults).
        n_features: d, channels kept (None: 100, or 550 for wide_resnet50_2, capped at the total).
        image_size: int or (height, width) the images are resized to.
        seed: seeds the channel selection (and random weights when ``pretrained`` is False).
        eps: added to each covariance's diagonal.
        sigma: standard deviation of the map's Gaussian blur, in pixels.
        pretrained: load ImageNet weights; False asks for random weights (tests).
        weights: a weights file for the backbone instead of the default location.
        device: ``"cpu"``, ``"cuda"``, ...
        holdout: fraction of good images (given as files) kept out of the Gaussian to set the threshold.
        quantile: the threshold is this quantile of the held-out good images' scores.
        backend: runs the backbone: ``"torch"``, ``"onnxruntime"`` (CPU only; the backbone exported
            to ONNX in memory, several times faster on CPU) or ``"auto"`` (onnxruntime on the CPU
            when it is installed, torch otherwise). Both give the same maps (tested to 1e-4).
        stats_dtype: ``"float32"`` (default) or ``"float64"``: the dtype of the streamed scatter
            matrices. Updates are centred per batch, so float32 is numerically safe and halves
            fitting memory; float64 makes merges of statistics exact to 1e-12.

    Fitted attributes: ``channel_idx_`` (D,), ``mean_`` (P, D), ``precision_`` (P, D, D),
    ``feature_size_`` (H, W), ``n_images_``, ``calibration_`` (or None), ``stats_`` (streaming
    statistics, after ``partial_fit`` or ``fit(keep_stats=True)``; not saved).

    Example:
        >>> model = Padim(backbone="resnet18", pretrained=False, image_size=64, n_features=20, sigma=2)
        >>> model = model.fit(torch.randn(4, 3, 64, 64))
        >>> model.predict(torch.randn(2, 3, 64, 64)).anomaly_map.shape
        (2, 64, 64)
    """

    def __init__(
        self,
        *,
        backbone: str = "efficientnet_lite0",
        layers: Sequence[str] | None = None,
        n_features: int | None = None,
        image_size: int | Sequence[int] = 256,
        seed: int = 0,
        eps: float = 0.01,
        sigma: float = 4,
        pretrained: bool = True,
        weights: PathLike | None = None,
        device: str | torch.device = "cpu",
        holdout: float = 0.1,
        quantile: float = 0.99,
        backend: str = "auto",
        stats_dtype: str = "float32",
    ) -> None:
        spec = get_spec(backbone)
        layer_info = resolve_layers(backbone, layers)
        total = sum(info.channels for info in layer_info)
        if n_features is None:
            n_features = min(spec.default_n_features, total)
        if isinstance(n_features, bool) or not isinstance(n_features, (int, np.integer)) or not 1 <= n_features <= total:
            raise ValueError(
                f"n_features must be an int from 1 to {total} (the channels of layers "
                f"{[info.name for info in layer_info]}), got {n_features!r}"
            )
        image_size = as_size(image_size)
        if not (isinstance(sigma, (int, float)) and sigma > 0):
            raise ValueError(f"sigma must be a number > 0, got {sigma!r}")
        radius = gaussian_kernel1d(sigma).shape[0] // 2
        if min(image_size) <= max(radius, layer_info[-1].stride):
            raise ValueError(
                f"image_size must exceed {max(radius, layer_info[-1].stride)} pixels per side for "
                f"sigma={sigma} and layer {layer_info[-1].name}, got {image_size}"
            )
        if not (isinstance(eps, (int, float)) and eps >= 0):
            raise ValueError(f"eps must be a number >= 0, got {eps!r}")
        if not 0.0 <= holdout < 1.0:
            raise ValueError(f"holdout must be in [0, 1), got {holdout!r}")
        if not 0.0 < quantile <= 1.0:
            raise ValueError(f"quantile must be in (0, 1], got {quantile!r}")
        if backend not in ("auto", "torch", "onnxruntime"):
            raise ValueError(f"backend must be 'auto', 'torch' or 'onnxruntime', got {backend!r}")
        if backend == "onnxruntime" and torch.device(device).type != "cpu":
            raise ValueError(f"backend='onnxruntime' runs on the CPU; got device={str(device)!r} (use backend='torch')")
        if stats_dtype not in ("float32", "float64"):
            raise ValueError(f"stats_dtype must be 'float32' or 'float64', got {stats_dtype!r}")
        self.stats_dtype = stats_dtype
        self.backbone = backbone
        self.layers = tuple(info.name for info in layer_info)
        self.n_features = int(n_features)
        self.image_size = image_size
        self.seed = int(seed)
        self.eps = float(eps)
        self.sigma = sigma
        self.pretrained = bool(pretrained)
        self.weights = weights
        self.device = torch.device(device)
        self.holdout = float(holdout)
        self.quantile = float(quantile)
        self.backend = backend
        self._extractor: FeatureExtractor | None = None
        self._onnx_embedder = None
        self.generator = AnomalyMapGenerator(image_size, sigma=sigma)
        self.calibration_: Calibration | None = None
        self.skipped_: list[str] = []

    # --- building blocks ------------------------------------------------------------------

    @property
    def layer_info(self):
        return resolve_layers(self.backbone, self.layers)

    @property
    def extractor(self) -> FeatureExtractor:
        """The backbone, cut after the last layer used (built on first use)."""
        if self._extractor is None:
            self._extractor = FeatureExtractor(
                self.backbone, self.layers, pretrained=self.pretrained, weights=self.weights, seed=self.seed
            ).to(self.device)
        return self._extractor

    def _check_fitted(self) -> None:
        if not hasattr(self, "precision_") and hasattr(self, "stats_"):
            self._finish_fit(keep_stats=True)  # after partial_fit: usable, and still mergeable
        if not hasattr(self, "precision_"):
            raise NotFittedError("this Padim model is not fitted yet: call fit(images) or Padim.load(path) first")

    @property
    def runs_on_onnxruntime(self) -> bool:
        """Whether the backbone runs in onnxruntime (see ``backend``)."""
        if self.backend == "torch" or self.device.type != "cpu":
            return False
        if self.backend == "onnxruntime":
            return True
        from padim.onnx_backbone import available

        return available()

    def embed(self, images: Tensor) -> Tensor:
        """Patch embeddings of pre-processed images.

        Args:
            images: (N, 3, H_img, W_img) normalised float images.

        Returns:
            (N, D, H, W) embeddings on the model's device (possibly a channels-last view).
        """
        channels = [info.channels for info in self.layer_info]
        if not hasattr(self, "channel_idx_"):
            self.channel_idx_ = select_channels(sum(channels), self.n_features, self.seed)
            self._onnx_embedder = None
        if self.runs_on_onnxruntime:
            if self._onnx_embedder is None:
                from padim.onnx_backbone import OnnxEmbedder

                self._onnx_embedder = OnnxEmbedder(self.extractor, self.channel_idx_, channels)
            return self._onnx_embedder(images)
        with torch.inference_mode():
            features = self.extractor(images.to(self.device, torch.float32))
            return embed(features, self.channel_idx_, channels)

    # --- fitting ----------------------------------------------------------------------------

    #: Images embedded at once while fitting: bounds the backbone's activations (about 80 MB at
    #: 256 px for efficientnet_lite0) at a few percent of speed (benchmarks/results/speed.md).
    fit_chunk = 8

    def partial_fit(self, images: Tensor | np.ndarray) -> "Padim":
        """Add one batch of pre-processed good images (N, 3, H, W) to the statistics; returns self."""
        batch = _as_batch(images)
        for start in range(0, len(batch), self.fit_chunk):
            embedding = self.embed(batch[start : start + self.fit_chunk])
            n, d, h, w = embedding.shape
            if not hasattr(self, "stats_"):
                dtype = torch.float32 if self.stats_dtype == "float32" else torch.float64
                self.stats_ = GaussianStats.empty(h * w, d, device=self.device, dtype=dtype)
                self.feature_size_ = (h, w)
            # (N, P, D): free for the channels-last embedding of the onnxruntime backend.
            self.stats_.update(embedding.permute(0, 2, 3, 1).reshape(n, h * w, d))
        for name in ("mean_", "precision_"):
            self.__dict__.pop(name, None)
        return self

    def _finish_fit(self, keep_stats: bool = True) -> None:
        if not hasattr(self, "stats_") or self.stats_.count < 2:
            count = getattr(getattr(self, "stats_", None), "count", 0)
            raise ValueError(f"fitting needs at least 2 good images, got {count}")
        self.n_images_ = self.stats_.count
        self.mean_ = self.stats_.mean.float()
        in_place = not keep_stats and self.stats_.m2.dtype == torch.float32
        self.precision_ = precision_from_stats(self.stats_, self.eps, in_place=in_place)
        if not keep_stats:
            del self.stats_

    def fit(
        self,
        data: Any,
        *,
        validation: Any = None,
        batch_size: int = 32,
        workers: int | None = None,
        quiet: bool = True,
        skip_bad: bool = False,
        keep_stats: bool = False,
    ) -> "Padim":
        """Fit the per-patch Gaussians on good images, streaming; returns self.

        Args:
            data: a folder of good images (or an MVTec category: its ``train/good``), a list of
                image paths, a pre-processed batch (N, 3, H, W), or any iterable of such batches
                (a DataLoader, a generator).
            validation: good images for the threshold (same forms). If None and ``data`` is given
                as files, a ``holdout`` fraction of them is kept out of the Gaussian for it.
            batch_size, workers: decoding of image files (DataLoader workers; None = automatic).
            quiet: no progress bar.
            skip_bad: skip unreadable image files (listed in ``skipped_``) instead of failing.
            keep_stats: keep the streamed statistics in ``stats_`` (to merge with another stream's
                through :meth:`padim.gaussian.GaussianStats.merge`); otherwise the precision
                reuses their memory (P * D^2 * 4 bytes less at the peak).

        Raises:
            ValueError: for an empty or missing folder, fewer than 2 images, or bad arguments;
                ``padim.transforms.ImageError`` for an unreadable image (unless ``skip_bad``).
        """
        for name in ("stats_", "mean_", "precision_", "channel_idx_"):
            self.__dict__.pop(name, None)
        self.calibration_ = None
        self.skipped_ = []
        options = dict(batch_size=batch_size, workers=workers, quiet=quiet, skip_bad=skip_bad)
        paths = _as_paths(data, train=True)
        if paths is not None and validation is None and self.holdout > 0 and len(paths) >= 3:
            n_hold = min(max(1, round(self.holdout * len(paths))), len(paths) - 2)
            order = np.random.default_rng(self.seed).permutation(len(paths))
            held = set(order[:n_hold].tolist())
            validation = [p for i, p in enumerate(paths) if i in held]
            paths = [p for i, p in enumerate(paths) if i not in held]
        for batch in self._batches(paths if paths is not None else data, desc="fit", train=True, **options):
            self.partial_fit(batch)
        self._finish_fit(keep_stats)
        if validation is not None:
            self.calibrate(validation, **options)
        return self

    def calibrate(self, good: Any, defective: Any = None, **options: Any) -> "Padim":
        """Set the threshold and score normalisation.

        With good images only: the ``quantile`` of their scores. With defective images too:
        the F1-maximising threshold over both sets.
        """
        good_scores = self._scores(good, desc="calibrate", **options)
        if defective is None:
            self.calibration_ = from_normal_scores(good_scores, self.quantile)
            return self
        from padim.metrics import f1_max

        bad_scores = self._scores(defective, desc="calibrate", **options)
        labels = np.r_[np.zeros(len(good_scores)), np.ones(len(bad_scores))]
        scores = np.r_[good_scores, bad_scores]
        _, threshold = f1_max(labels, scores)
        self.calibration_ = from_labelled_scores(labels, scores, threshold)
        return self

    # --- prediction ------------------------------------------------------------------------

    def anomaly_maps(self, images: Tensor | np.ndarray) -> Tensor:
        """Raw anomaly maps (N, H_img, W_img) of a pre-processed batch, through AnomalyMapGenerator."""
        self._check_fitted()
        embedding = self.embed(_as_batch(images))
        with torch.inference_mode():
            maps = self.generator(embedding=embedding, mean=self.mean_.T, inv_covariance=self.precision_)
        return maps[:, 0]

    def predict(self, images: Any, *, batch_size: int = 32, workers: int | None = 0, quiet: bool = True) -> Prediction:
        """Anomaly maps, scores and (when calibrated) normalised scores, labels and regions.

        Args:
            images: an image path, a list of paths, a PIL image or list of them, or a pre-processed
                batch (N, 3, H, W) as a tensor or array.

        Returns:
            :class:`padim.prediction.Prediction` with ``anomaly_map`` (N, H_img, W_img) and ``score`` (N,).
        """
        self._check_fitted()
        maps = [
            self.anomaly_maps(batch).cpu().numpy()
            for batch in self._batches(images, desc="predict", batch_size=batch_size, workers=workers, quiet=quiet)
        ]
        if not maps:
            raise ValueError("predict needs at least one image, got none")
        return make_prediction(np.concatenate(maps), self.calibration_)

    def _scores(self, images: Any, **options: Any) -> np.ndarray:
        self._check_fitted()
        return np.concatenate(
            [self.anomaly_maps(b).flatten(1).amax(1).cpu().numpy() for b in self._batches(images, **options)]
        )

    def _batches(
        self,
        data: Any,
        *,
        desc: str = "",
        batch_size: int = 32,
        workers: int | None = None,
        quiet: bool = True,
        skip_bad: bool = False,
        train: bool = False,
    ) -> Iterator[Tensor]:
        """Pre-processed (N, 3, H, W) batches from any accepted input form.

        A folder means its good training images when ``train`` (an MVTec category's
        ``train/good``), else every image directly inside it.
        """
        if isinstance(data, Image.Image) or (
            isinstance(data, (list, tuple)) and data and all(isinstance(x, Image.Image) for x in data)
        ):
            images = [data] if isinstance(data, Image.Image) else list(data)
            for start in range(0, len(images), batch_size):
                yield torch.from_numpy(preprocess(images[start : start + batch_size], self.image_size))
            return
        paths = _as_paths(data, train=train)
        if paths is not None:
            from padim.data import BatchStream, Sample

            if workers is None and len(paths) <= 2 * batch_size:
                workers = 0  # starting decoder processes costs more than a few images take
            stream = BatchStream(
                [Sample(Path(p), 0, "good", None) for p in paths],
                self.image_size,
                batch_size=batch_size,
                workers=workers,
                skip_bad=skip_bad,
                quiet=quiet,
                desc=desc,
            )
            for images, _, _ in stream:
                yield images
            self.skipped_.extend(str(p) for p in stream.skipped)
            return
        if isinstance(data, (Tensor, np.ndarray)):
            yield _as_batch(data)
            return
        for item in data:
            if isinstance(item, dict):
                item = item["image"]
            elif isinstance(item, (list, tuple)):
                item = item[0]
            yield _as_batch(item)

    # --- persistence -------------------------------------------------------------------------

    def config(self) -> dict:
        """The constructor arguments that define this model (JSON-serialisable)."""
        return {
            "backbone": self.backbone,
            "layers": list(self.layers),
            "n_features": self.n_features,
            "image_size": list(self.image_size),
            "seed": self.seed,
            "eps": self.eps,
            "sigma": self.sigma,
            "holdout": self.holdout,
            "quantile": self.quantile,
        }

    def save(self, path: PathLike) -> Path:
        """Write the model to one safetensors file (atomic); returns the path.

        The file holds the Gaussians, the channel indices, the backbone weights it uses (so it
        loads on a machine without torchvision's cache) and the configuration as JSON.
        """
        self._check_fitted()
        tensors = {"mean": self.mean_, "precision": self.precision_, "channel_idx": self.channel_idx_}
        tensors.update({f"backbone.{k}": v for k, v in self.extractor.body.state_dict().items()})
        meta = {
            **self.config(),
            "pretrained": self.pretrained,
            "feature_size": list(self.feature_size_),
            "n_images": self.n_images_,
            "calibration": None if self.calibration_ is None else self.calibration_.to_dict(),
            "padim_toolkit_version": __version__,
        }
        write_model_file(path, tensors, meta)
        return Path(path)

    @classmethod
    def load(cls, path: PathLike, device: str | torch.device = "cpu", backend: str = "auto") -> "Padim":
        """Read a model written by :meth:`save`. Runs no code from the file.

        Raises:
            padim.model_file.ModelFileError: for a missing, corrupt, truncated, foreign or newer file.
        """
        tensors, meta = read_model_file(path)
        try:
            model = cls(
                **{k: meta[k] for k in ("backbone", "layers", "n_features", "seed", "eps", "sigma", "holdout", "quantile")},
                image_size=tuple(meta["image_size"]),
                pretrained=False,
                device=device,
                backend=backend,
            )
            model.pretrained = bool(meta.get("pretrained", True))
            body = {k[len("backbone.") :]: v for k, v in tensors.items() if k.startswith("backbone.")}
            model.extractor.body.load_state_dict(body, strict=True)
            model.channel_idx_ = tensors["channel_idx"].long()
            model.mean_ = tensors["mean"].float().to(model.device)
            model.precision_ = tensors["precision"].float().to(model.device)
            model.feature_size_ = tuple(meta["feature_size"])
            model.n_images_ = int(meta["n_images"])
            if meta.get("calibration"):
                model.calibration_ = Calibration(**meta["calibration"])
        except (KeyError, TypeError, RuntimeError, ValueError) as error:
            raise ModelFileError(f"{path}: inconsistent padim model file ({str(error).splitlines()[0]})") from None
        p = math.prod(model.feature_size_)
        if model.mean_.shape != (p, model.n_features) or model.precision_.shape != (p, model.n_features, model.n_features):
            raise ModelFileError(f"{path}: inconsistent padim model file (tensor shapes do not match the metadata)")
        return model

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"Padim({args})"


def _as_batch(images: Tensor | np.ndarray) -> Tensor:
    batch = torch.as_tensor(images)
    if batch.ndim == 3:
        batch = batch[None]
    if batch.ndim != 4 or batch.shape[1] != 3 or not batch.is_floating_point():
        raise ValueError(
            f"expected a pre-processed float batch of shape (N, 3, H, W), got {tuple(batch.shape)} {batch.dtype}"
        )
    return batch


def _as_paths(data: Any, train: bool) -> list[Path] | None:
    """Image paths if ``data`` names files or a folder; None for tensors and iterables of batches."""
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if path.is_dir():
            if not train:
                return list_images(path)
            from padim.data import train_samples

            return [s.path for s in train_samples(path)]
        if not path.exists():
            raise ValueError(f"{path}: no such file or folder")
        return [path]
    if isinstance(data, (list, tuple)) and data and all(isinstance(x, (str, os.PathLike)) for x in data):
        return [Path(x) for x in data]
    if isinstance(data, (list, tuple)) and not data:
        raise ValueError("expected images, got an empty list")
    return None
