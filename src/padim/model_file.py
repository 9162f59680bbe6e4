"""The model file: safetensors tensors plus JSON metadata, in one file that cannot run code.

Loading a pickle can execute arbitrary code (anomalib and PatchCore load models that way);
safetensors holds only a JSON header and raw tensor bytes. The metadata entry ``padim``
carries the format version and the configuration needed to rebuild the model; the file also
holds the backbone weights the model uses, so it loads on a machine without torchvision's
cache. Writes are atomic: a temporary file in the same folder, renamed into place.

Tensors: ``mean`` (P, D) float32, ``precision_cholesky_packed`` (P, D(D+1)/2) float16, the
upper triangles of the precisions' factors C (precision = C C^T), row by row
(:func:`padim.gaussian.pack_triangular`): a quarter of the float32 factors' bytes, and maps
within about 1e-4 of the map maximum of theirs (``benchmarks/native_resolution.py``);
``channel_idx`` (D,) int64; ``backbone.<name>`` for each weight of the cut backbone. The
metadata holds the working size, the Gaussian grid's stride, the tile size, the
``backbone_dtype`` and, for an int8 backbone, the ``quantization`` record
(:class:`padim.quantize.Quantization`: the calibrated activation ranges), from which the same
int8 graph is rebuilt without the training images; an older reader refuses the file rather
than run Gaussians fitted on int8 features with a float32 backbone.

A model fitted with ``keep_stats`` (``padim fit --keep-stats``) also holds its mergeable
statistics, so that :mod:`padim.incremental` can add good images to it: ``stats_mean`` (P, D)
float64, ``stats_m2`` (P, D(D+1)/2) in the fit's ``stats_dtype`` (float32 by default: twice
the bytes of the float16 factors), and in the metadata ``stats_count`` and ``holdout_paths``
(the absolute paths of the images that set the threshold). Readers that predate them ignore them.

Older formats are read, with a float32 backbone: format 2 stored ``precision_cholesky``
(P, D, D) float32, format 1 (padim-toolkit 0.1) the ``precision`` itself; their factors are
kept in float32 when loaded.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from padim import __version__
from padim.errors import ModelFileError, OptionError
from padim.files import atomic_path

if TYPE_CHECKING:
    from padim.model import Padim

FORMAT_VERSION = 3
_KEY = "padim"
#: Constructor arguments of :class:`padim.model.Padim` stored in the metadata.
PARAMS = ("backbone", "layers", "n_features", "image_size", "seed", "eps", "sigma", "holdout", "quantile", "pretrained")
#: Parameters added in format 3, with the values that describe models of older formats.
NEW_PARAMS = {"grid_stride": None, "tile_size": 0}


def write_model_file(path: str | os.PathLike, tensors: dict, meta: dict) -> None:
    """Write tensors (name -> torch.Tensor) and metadata (JSON-serialisable dict) atomically."""
    from safetensors.torch import save_file

    header = json.dumps({"format_version": FORMAT_VERSION, **meta})
    tensors = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={_KEY: header})


def read_model_file(path: str | os.PathLike, device: str = "cpu") -> tuple[dict, dict]:
    """Read a model file written by :func:`write_model_file`.

    Returns:
        (tensors, meta): name -> torch.Tensor on ``device``, and the metadata dict.

    Raises:
        ModelFileError: for a missing, truncated, corrupt, foreign or newer-format file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = (handle.metadata() or {}).get(_KEY)
        if header is None:
            raise ModelFileError(f"{path}: a safetensors file, but not a padim model (no '{_KEY}' metadata)")
        meta = json.loads(header)
        if not isinstance(meta, dict):
            raise ModelFileError(f"{path}: malformed padim metadata (a {type(meta).__name__}, not an object)")
        version = meta.get("format_version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ModelFileError(f"{path}: unknown model format version {version!r}")
        if version > FORMAT_VERSION:
            raise ModelFileError(
                f"{path}: written in model format {version} by a newer padim-toolkit; this one reads "
                f"format {FORMAT_VERSION} and older: upgrade padim-toolkit"
            )
        tensors = load_file(str(path), device=device)
    except ModelFileError:
        raise
    except (SafetensorError, OSError, ValueError, RecursionError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ModelFileError(f"{path}: not a padim model, or truncated or corrupt ({reason})") from None
    return tensors, meta


def save(model: Padim, path: str | os.PathLike) -> Path:
    """Write a fitted model to ``path`` (atomic); returns the path."""
    from padim.model import check_fitted

    check_fitted(model)
    packed = model.precision_cholesky_packed_.half()
    tensors = {"mean": model.mean_, "precision_cholesky_packed": packed, "channel_idx": model.channel_idx_}
    tensors.update({f"backbone.{k}": v for k, v in model.extractor_.body.state_dict().items()})
    meta = {
        **model.config(),
        "feature_size": list(model.feature_size_),
        "n_images": model.n_images_,
        "calibration": None if model.calibration_ is None else model.calibration_.to_dict(),
        "padim_toolkit_version": __version__,
    }
    if getattr(model, "quantization_", None) is not None:
        meta["quantization"] = model.quantization_.to_dict()
    stats = model.__dict__.get("stats_")
    if stats is not None:  # fit --keep-stats: what an update (padim.incremental) adds images to
        tensors.update(stats_mean=stats.mean, stats_m2=stats.m2)
        meta["stats_count"] = stats.count
        meta["holdout_paths"] = [os.path.abspath(p) for p in getattr(model, "holdout_paths_", [])]
    write_model_file(path, tensors, meta)
    return Path(path)


def load(path: str | os.PathLike, device: str = "cpu", backend: str = "auto") -> Padim:
    """Read a model written by :func:`save`. Runs no code from the file.

    Raises:
        ModelFileError: for a missing, corrupt, truncated, foreign, newer or inconsistent file.
    """
    import torch

    from padim.backbones import FeatureExtractor, get_spec
    from padim.errors import PadimError
    from padim.gaussian import GaussianStats, pack_triangular
    from padim.model import Padim, resolve_params
    from padim.pipeline import use_onnxruntime
    from padim.quantize import Quantization
    from padim.scoring import Calibration
    from padim.tiling import resolve_tile

    tensors, meta = read_model_file(path)
    dtype = meta.get("backbone_dtype", "float32")
    if dtype == "int8":  # checked first: a matter of the options, not of the file
        try:
            use_onnxruntime(backend, device, dtype)
        except OptionError as error:
            raise OptionError(f"{path} is an int8 model: {error}") from None
    try:
        params = {key: meta[key] for key in PARAMS}
        params.update({key: meta.get(key, default) for key, default in NEW_PARAMS.items()})
        params["image_size"] = tuple(params["image_size"])
        if dtype not in ("float32", "int8") or (dtype == "int8") != ("quantization" in meta):
            raise ValueError(f"backbone_dtype {dtype!r} with{'out' * ('quantization' not in meta)} int8 ranges")
        model = Padim(**params, device=device, backend=backend, backbone_dtype=dtype)
        resolved = resolve_params(model)
        p = math.prod(_pair(meta["feature_size"]))
        d = resolved["n_features"]
        _expect(tensors, "mean", (p, d))
        if meta["format_version"] == 1:  # the precision: its upper factor, C = J chol(J precision J) J
            _expect(tensors, "precision", (p, d, d))
            flipped = torch.linalg.cholesky(tensors.pop("precision").double().flip(1, 2))
            tensors["precision_cholesky"] = flipped.flip(1, 2).float()
        if meta["format_version"] < 3:
            _expect(tensors, "precision_cholesky", (p, d, d))
            tensors["precision_cholesky_packed"] = pack_triangular(tensors.pop("precision_cholesky"))
        _expect(tensors, "precision_cholesky_packed", (p, d * (d + 1) // 2))
        _expect(tensors, "channel_idx", (d,))
        channel_idx = tensors["channel_idx"].long()
        total = sum(info.channels for info in resolved["layer_info"])
        if channel_idx.min() < 0 or channel_idx.max() >= total or channel_idx.unique().numel() != d:
            raise ValueError(f"channel_idx must be {d} distinct indices in 0..{total - 1}")
        body = {k[len("backbone.") :]: v for k, v in tensors.items() if k.startswith("backbone.")}
        extractor = FeatureExtractor(model.backbone, resolved["layers"], state_dict=body)
        calibration = meta.get("calibration")
        align = resolved["layer_info"][-1].stride
        fitted = dict(
            layers_=resolved["layers"],
            image_size_=resolved["image_size"],
            grid_stride_=resolved["grid_stride"],
            tile_size_=resolve_tile(params["tile_size"], resolved["image_size"], align),
            extractor_=extractor,
            channel_idx_=channel_idx,
            feature_size_=_pair(meta["feature_size"]),
            mean_=tensors["mean"].float().to(model.device),
            precision_cholesky_packed_=tensors["precision_cholesky_packed"].to(model.device),
            n_images_=int(meta["n_images"]),
            calibration_=None if calibration is None else Calibration(**calibration),
            quantization_=Quantization.from_dict(meta["quantization"]) if dtype == "int8" else None,
        )
        if "stats_mean" in tensors:  # optional: the mergeable statistics (fit --keep-stats)
            _expect(tensors, "stats_mean", (p, d))
            _expect(tensors, "stats_m2", (p, d * (d + 1) // 2))
            count, m2 = meta["stats_count"], tensors["stats_m2"]
            if isinstance(count, bool) or not isinstance(count, int) or count < 2:
                raise ValueError(f"stats_count must be an int >= 2, got {count!r}")
            fitted["stats_"] = GaussianStats(
                count, tensors["stats_mean"].double().to(model.device), m2.to(model.device)
            )
            fitted["holdout_paths_"] = [Path(str(q)) for q in meta.get("holdout_paths", [])]
            model.stats_dtype = "float64" if m2.dtype == torch.float64 else "float32"
        if fitted["feature_size_"] != get_spec(model.backbone).grid(fitted["image_size_"], fitted["grid_stride_"]):
            raise ValueError(f"feature_size {fitted['feature_size_']} does not match the working size and grid stride")
        for value in (fitted["mean_"], fitted["precision_cholesky_packed_"]):
            if not bool(torch.isfinite(value).all()):
                raise ValueError("the Gaussians hold NaN or infinite values")
    except (KeyError, TypeError, RuntimeError, ValueError) as error:
        if isinstance(error, PadimError) and not isinstance(error, ModelFileError):
            reason = str(error)
        else:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ModelFileError(f"{path}: inconsistent padim model file ({reason})") from None
    model.__dict__.update(fitted)
    return model


def _pair(value: Any) -> tuple[int, int]:
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value)):
        raise ValueError(f"expected [height, width], got {value!r}")
    return int(value[0]), int(value[1])


def _expect(tensors: dict, name: str, shape: tuple) -> None:
    if name not in tensors:
        raise ValueError(f"tensor {name!r} is missing")
    if tuple(tensors[name].shape) != shape:
        raise ValueError(f"tensor {name!r} has shape {tuple(tensors[name].shape)}, expected {shape}")
