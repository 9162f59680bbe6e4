"""A fitted model in a ``.padim`` file and back: the tensors and metadata of :mod:`padim.modelfile.padim_file`.

:func:`save` writes a model's :class:`padim.model.fitting.Fitted` state and configuration;
:func:`read` checks a file against the backbone it names (feature grid, channel indices,
finite statistics) and gives back the constructor arguments and the state, from which
:meth:`padim.model.padim.Padim.load` makes a model. Nothing in a file can run code.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from padim.align.reference import Reference
from padim.errors import ModelFileError, OptionError, PadimError
from padim.features.backbones import FeatureExtractor, get_spec
from padim.features.tiling import resolve_tile
from padim.graph.build import pipeline_graph, runtime_factors
from padim.graph.quantize import Quantization
from padim.graph.runners import check_device, use_onnxruntime
from padim.graph.trace import OPSET
from padim.model.fitting import Fitted
from padim.model.settings import PARAMS as MODEL_PARAMS
from padim.model.settings import resolve
from padim.modelfile.mapped import GRAPH_TENSOR
from padim.modelfile.padim_file import NEW_PARAMS, PARAMS, read_model_file, write_model_file
from padim.scoring.calibration import Calibration
from padim.stats.gaussian import GaussianStats, pack_triangular
from padim.version import __version__


def _numpy(tensor: torch.Tensor) -> Any:
    return tensor.detach().cpu().contiguous().numpy()


def inference_graph(model: Any) -> tuple[bytes, str]:
    """The model's whole inference graph as ONNX bytes, and the dtype of the factors it takes.

    The graph a ``.padim`` file stores (:data:`padim.modelfile.mapped.GRAPH_TENSOR`): the one
    onnxruntime would otherwise trace at every opening (:func:`padim.graph.build.pipeline_graph`,
    int8 included), with ``mean`` and ``precision_cholesky`` as inputs, so that the runtime opens the
    file with NumPy and an executor alone (:mod:`padim.runtime.stored`).
    """
    state = model.fitted()
    factors = runtime_factors(state.precision_cholesky_packed)
    example = {"mean": state.mean, "precision_cholesky": factors, "threshold": torch.tensor(1.0),
               "scale": torch.tensor(1.0)}  # fmt: skip
    return pipeline_graph(model.graph_spec(), example), str(factors.dtype).removeprefix("torch.")


def save(model: Any, path: str | os.PathLike, *, graph: bool = True) -> Path:
    """Write a fitted :class:`padim.model.padim.Padim` to ``path`` (atomic); returns the path.

    ``graph``: also store the traced inference graph (:func:`inference_graph`; 3 MB for
    EfficientNet-Lite0), so that predicting opens the file without torch and without tracing.
    """
    state = model.fitted()
    tensors = {"mean": state.mean, "precision_cholesky_packed": state.precision_cholesky_packed.half(),
               "channel_idx": state.channel_idx}  # fmt: skip
    tensors.update({f"backbone.{k}": v for k, v in state.extractor.body.state_dict().items()})
    meta = {
        **model.config(),
        "feature_size": list(state.feature_size),
        "n_images": state.n_images,
        "calibration": None if state.calibration is None else state.calibration.to_dict(),
        "padim_toolkit_version": __version__,
    }
    if state.quantization is not None:
        meta["quantization"] = state.quantization.to_dict()
    if state.alignment is not None:
        meta["alignment"] = state.alignment.to_dict()
    if state.precision_check is not None:
        meta["precision_check"] = state.precision_check
    if state.stats is not None:  # fit --keep-stats: what an update (padim.model.incremental) adds images to
        tensors.update(stats_mean=state.stats.mean, stats_m2=state.stats.m2)
        meta["stats_count"] = state.stats.count
        meta["holdout_paths"] = [os.path.abspath(p) for p in state.holdout_paths]
    arrays = {name: _numpy(t) for name, t in tensors.items()}
    if graph:
        onnx_graph, factors = inference_graph(model)
        arrays[GRAPH_TENSOR] = np.frombuffer(onnx_graph, np.uint8)
        channels = sum(info.channels for info in state.extractor.layer_info)  # what channel_idx indexes
        meta["graph"] = {"tensor": GRAPH_TENSOR, "opset": OPSET, "factors": factors, "channels": channels,
                         "torch": torch.__version__}  # fmt: skip
    write_model_file(path, arrays, meta)
    return Path(path)


def read(path: str | os.PathLike, device: str = "cpu", backend: str = "auto") -> tuple[dict[str, Any], Fitted]:
    """Read a model written by :func:`save`: (constructor arguments, fitted state). Runs no code from the file.

    Raises:
        ModelFileError: for a missing, corrupt, truncated, foreign, newer or inconsistent file.
    """
    arrays, meta = read_model_file(path)
    tensors = {name: torch.from_numpy(array) for name, array in arrays.items()}
    dtype = meta["backbone_dtype"]
    if dtype != "float32":  # checked first: a matter of the options, not of the file
        try:
            use_onnxruntime(backend, device, dtype)
        except OptionError as error:
            raise OptionError(f"{path} is an {dtype} model: {error}") from None
    check_device(device)  # a matter of the options too: never blamed on the file
    try:
        params = {key: meta[key] for key in (*PARAMS, *NEW_PARAMS)}
        params["image_size"] = tuple(params["image_size"])
        params = {**{name: None for name in MODEL_PARAMS}, **params, "device": device, "backend": backend,
                  "backbone_dtype": dtype, "pretrained": params["pretrained"], "weights": None,
                  "stats_dtype": "float32"}  # fmt: skip
        model = SimpleNamespace(**params)
        resolved = resolve(model)
        feature_size = _pair(meta["feature_size"])
        if feature_size != get_spec(model.backbone).grid(resolved.image_size, resolved.grid_stride):
            raise ValueError(f"feature_size {list(feature_size)} does not match the working size and grid stride")
        d = resolved.n_features
        if d != meta["n_features"]:
            raise ValueError(f"n_features {meta['n_features']} is not what the layers allow ({d})")
        if meta["format_version"] == 1:  # the precision: its upper factor, C = J chol(J precision J) J
            flipped = torch.linalg.cholesky(tensors.pop("precision").double().flip(1, 2))
            tensors["precision_cholesky"] = flipped.flip(1, 2).float()
        if meta["format_version"] < 3:
            tensors["precision_cholesky_packed"] = pack_triangular(tensors.pop("precision_cholesky"))
        channel_idx = tensors["channel_idx"].long()
        total = sum(info.channels for info in resolved.layer_info)
        if channel_idx.min() < 0 or channel_idx.max() >= total or channel_idx.unique().numel() != d:
            raise ValueError(f"channel_idx must be {d} distinct indices in 0..{total - 1}")
        for name in ("mean", "precision_cholesky_packed"):
            if not bool(torch.isfinite(tensors[name]).all()):
                raise ValueError("the Gaussians hold NaN or infinite values")
        body = {k[len("backbone.") :]: v for k, v in tensors.items() if k.startswith("backbone.")}
        extractor = FeatureExtractor(model.backbone, resolved.layers, state_dict=body)
        calibration = meta["calibration"]
        align = resolved.layer_info[-1].stride
        fitted = Fitted(
            layers=resolved.layers,
            image_size=resolved.image_size,
            grid_stride=resolved.grid_stride,
            tile_size=resolve_tile(params["tile_size"], resolved.image_size, align),
            feature_size=feature_size,
            extractor=extractor.to(device),
            channel_idx=channel_idx,
            mean=tensors["mean"].float().to(device),
            precision_cholesky_packed=tensors["precision_cholesky_packed"].to(device),
            n_images=int(meta["n_images"]),
            calibration=None if calibration is None else Calibration(**calibration),
            quantization=Quantization.from_dict(meta["quantization"]) if dtype == "int8" else None,
            alignment=alignment_of(meta),
            precision_check=meta.get("precision_check") if isinstance(meta.get("precision_check"), dict) else None,
        )
        if "stats_mean" in tensors:  # optional: the mergeable statistics (fit --keep-stats); shapes checked
            m2 = tensors["stats_m2"]
            fitted.stats = GaussianStats(meta["stats_count"], tensors["stats_mean"].double().to(device), m2.to(device))
            fitted.holdout_paths = [Path(q) for q in meta.get("holdout_paths", [])]
            params["stats_dtype"] = "float64" if m2.dtype == torch.float64 else "float32"
    except (KeyError, TypeError, RuntimeError, ValueError) as error:
        if isinstance(error, PadimError) and not isinstance(error, ModelFileError):
            reason = str(error)
        else:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ModelFileError(f"{path}: inconsistent padim model file ({reason})") from None
    return {name: params[name] for name in MODEL_PARAMS}, fitted


def _pair(value: Any) -> tuple[int, int]:
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value)):
        raise ValueError(f"expected [height, width], got {value!r}")
    return int(value[0]), int(value[1])


def alignment_of(meta: dict) -> Reference | None:
    """The alignment reference a model file's metadata holds, or None; one that contradicts ``align`` is refused.

    Raises:
        ValueError: for a malformed record, or ``align`` and the record disagreeing.
    """
    record = meta.get("alignment")
    if (record is None) != (meta.get("align", "none") == "none"):
        raise ValueError(f"align {meta.get('align')!r} with{'out' * (record is None)} an alignment record")
    return None if record is None else Reference.from_dict(record)
