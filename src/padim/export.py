"""ONNX export of the whole PaDiM pipeline: a pre-processed image batch in; map, scores and labels out.

The exported graph runs PaDiM's inference (Defard et al. 2020, https://arxiv.org/abs/2011.08785,
Sec. 3.3) exactly as :meth:`padim.model.Padim.predict` does, built from the same functions: the
backbone (:class:`padim.backbones.FeatureExtractor`), the channel selection
(:func:`padim.model.embed`), the Mahalanobis distance as one batched matmul with the stored
precision matrices (:func:`padim.anomaly_map.mahalanobis`), bilinear up-sampling and the separable
Gaussian blur with reflect padding (:class:`padim.anomaly_map.AnomalyMapGenerator`), then the
image score (the map's maximum) and the stored calibration.

Graph interface (batch size N is dynamic, H x W is the model's ``image_size``):

- input ``images``: (N, 3, H, W) float32, resized and normalised by
  :func:`padim.transforms.preprocess` (pre-processing stays outside the graph and has one
  definition, shared by the PyTorch, ONNX and web paths; its constants are in the metadata);
- outputs ``anomaly_map`` (N, H, W) float32, ``score`` (N,) float32, ``normalized_score`` (N,)
  float32 and ``label`` (N,) bool (True = anomalous). An uncalibrated model has no threshold:
  its ``normalized_score`` is NaN and its ``label`` is False for every image.

The model's ``metadata_props`` hold everything :mod:`padim.runtime` needs besides the graph:
``padim.format_version``, ``padim.image_size`` ([H, W]), ``padim.calibration`` (JSON or
``null``), ``padim.config`` (the model's constructor arguments), ``padim.preprocess`` and
``padim.toolkit_version``. Models whose tensors pass 2 GB (protobuf's limit) keep them in one
external data file, ``<name>.data`` beside ``<name>``; onnxruntime finds it by that name.

The exporter is torch's TorchScript-based one (``dynamo=False``): it needs nothing beyond torch
and onnx and works offline, where the dynamo exporter needs onnxscript.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from padim import __version__
from padim.model import Padim, embed
from padim.transforms import IMAGENET_MEAN, IMAGENET_STD

PathLike = str | os.PathLike

#: Version of the metadata layout; :mod:`padim.runtime` refuses files newer than it knows.
FORMAT_VERSION = 1
INPUT_NAME = "images"
OUTPUT_NAMES = ("anomaly_map", "score", "normalized_score", "label")
#: protobuf cannot serialise a message of 2 GiB or more; stay clear of it (the graph adds a little).
PROTOBUF_LIMIT = 2**31 - 2**24


class PadimPipeline(nn.Module):
    """A fitted :class:`~padim.model.Padim` as one module: normalised images -> map, scores, labels.

    Args:
        model: a fitted (or loaded) Padim. Its backbone is used as is on CPU, copied otherwise;
            the Gaussians are shared with it (not copied: they can pass 2 GB).

    Shape:
        input (N, 3, H, W) float32 -> ``(anomaly_map (N, H, W), score (N,), normalized_score (N,),
        label (N,) bool)``.

    Raises:
        padim.model.NotFittedError: if ``model`` is not fitted.
    """

    def __init__(self, model: Padim) -> None:
        super().__init__()
        model._check_fitted()
        extractor = model.extractor
        self.extractor = extractor if model.device.type == "cpu" else copy.deepcopy(extractor).cpu()
        self.generator = model.generator
        self.channels = [info.channels for info in model.layer_info]
        # A plain attribute, not a buffer: the tracer records it as a constant, and the
        # index arithmetic in embed() then folds away at export time.
        self.channel_idx = model.channel_idx_.detach().cpu().long()
        # AnomalyMapGenerator takes the mean in anomalib's (D, P) layout.
        self.register_buffer("mean", _traceable(model.mean_.T))
        self.register_buffer("precision", _traceable(model.precision_))
        calibration = model.calibration_
        self.threshold = None if calibration is None else float(calibration.threshold)
        self.scale = None if calibration is None else float(calibration.scale)
        self.eval()

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        features = self.extractor(images)
        embedding = embed(features, self.channel_idx, self.channels)
        maps = self.generator(embedding=embedding, mean=self.mean, inv_covariance=self.precision)[:, 0]
        score = maps.flatten(1).amax(dim=1)
        if self.threshold is None:
            return maps, score, torch.full_like(score, math.nan), torch.zeros_like(score, dtype=torch.bool)
        # padim.calibration.Calibration.normalize and .label, in float32.
        normalized = (0.5 + (score - self.threshold) / (2.0 * self.scale)).clamp(0.0, 1.0)
        return maps, score, normalized, score >= self.threshold


def _traceable(tensor: Tensor) -> Tensor:
    """A contiguous float32 CPU tensor the tracer accepts, without a copy where none is needed.

    The precision matrices can pass 2 GB, so they are shared with the model when possible;
    inference tensors (made under ``torch.inference_mode``) are copied to plain ones for the tracer.
    """
    tensor = tensor.detach().to("cpu", torch.float32).contiguous()
    return tensor.clone() if tensor.is_inference() else tensor


def model_metadata(model: Padim) -> dict[str, str]:
    """The ``metadata_props`` an exported model carries (string keys and values).

    >>> from padim.model import Padim
    >>> sorted(model_metadata(Padim(backbone="resnet18", pretrained=False, image_size=64)))[:3]
    ['padim.calibration', 'padim.config', 'padim.format_version']
    """
    calibration = model.calibration_
    preprocess = {
        "input": INPUT_NAME,
        "layout": "NCHW",
        "color": "RGB",
        "resize": "bilinear",
        "scale": 1.0 / 255.0,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
    }
    return {
        "padim.format_version": str(FORMAT_VERSION),
        "padim.image_size": json.dumps(list(model.image_size)),
        "padim.calibration": json.dumps(None if calibration is None else calibration.to_dict()),
        "padim.config": json.dumps({**model.config(), "pretrained": model.pretrained}),
        "padim.preprocess": json.dumps(preprocess),
        "padim.toolkit_version": __version__,
    }


def export_onnx(
    model: Padim | PathLike,
    path: PathLike,
    *,
    opset: int = 17,
    external_data: bool | None = None,
) -> Path:
    """Export a fitted model's whole inference pipeline to an ONNX file, atomically.

    Args:
        model: a fitted :class:`~padim.model.Padim`, or the path of a ``.padim`` model file.
        path: the ``.onnx`` file to write (its folder is created if missing).
        opset: ONNX opset version, 13 or newer (17 by default; onnxruntime >= 1.14 runs it).
        external_data: keep the tensors in ``<path>.data`` beside the model. None (default):
            only when they pass protobuf's 2 GB limit. True forces it (small models too).

    Returns:
        ``Path(path)``. With external data, ``<path>.data`` is written first and the model file
        last, each by a rename from a temporary name in the same folder; a failed export
        leaves any earlier files at those names untouched.

    Raises:
        padim.model.NotFittedError: for an unfitted model.
        padim.model_file.ModelFileError: if ``model`` names an unreadable model file.
        ValueError: for an opset below 13.
    """
    import onnx

    if isinstance(opset, bool) or not isinstance(opset, int) or opset < 13:
        raise ValueError(f"opset must be an int >= 13 (dynamic reductions need it), got {opset!r}")
    if not isinstance(model, Padim):
        model = Padim.load(model)
    pipeline = PadimPipeline(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = model.image_size
    example = torch.zeros(2, 3, height, width)
    dynamic = {INPUT_NAME: {0: "N"}, **{name: {0: "N"} for name in OUTPUT_NAMES}}

    workdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        # Export under the final name inside the temporary folder: a model over 2 GB is then
        # written with external data whose relative locations stay valid after the move.
        staged = workdir / path.name
        with warnings.catch_warnings():
            # The legacy exporter warns that it is deprecated, and the tracer that shape
            # checks in mahalanobis() and embed() become constants: both are expected here.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
            with torch.inference_mode(False), torch.no_grad():
                torch.onnx.export(
                    pipeline,
                    (example,),
                    str(staged),
                    dynamo=False,
                    opset_version=opset,
                    input_names=[INPUT_NAME],
                    output_names=list(OUTPUT_NAMES),
                    dynamic_axes=dynamic,
                    do_constant_folding=True,
                )
        proto = onnx.load(str(staged), load_external_data=True)
        for key, value in model_metadata(model).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.producer_name, proto.producer_version = "padim-toolkit", __version__
        proto.doc_string = (
            f"PaDiM anomaly detector ({model.backbone}, image size {height}x{width}): input 'images' "
            "(N, 3, H, W) normalised RGB; outputs anomaly_map, score, normalized_score, label."
        )
        if external_data is None:
            external_data = _tensor_bytes(proto) >= PROTOBUF_LIMIT
        for leftover in list(workdir.iterdir()):  # torch's per-tensor files, now inside `proto`
            leftover.unlink()
        data_name = f"{path.name}.data"
        if external_data:
            onnx.save_model(
                proto,
                str(staged),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data_name,
                size_threshold=1024,
            )
        else:
            onnx.save_model(proto, str(staged))
        del proto
        onnx.checker.check_model(str(staged))  # by path: works past 2 GB and checks the data file
        if external_data:
            os.replace(workdir / data_name, path.parent / data_name)
        os.replace(staged, path)
        if not external_data:
            # A sidecar from an earlier export to this name is no longer referenced by anything.
            (path.parent / data_name).unlink(missing_ok=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return path


def _tensor_bytes(proto) -> int:
    """Bytes held by an ONNX model's initializers and constant-node tensors."""
    tensors = list(proto.graph.initializer)
    tensors += [attribute.t for node in proto.graph.node for attribute in node.attribute if attribute.HasField("t")]
    return sum(len(t.raw_data) + 4 * len(t.float_data) + 8 * len(t.int64_data) for t in tensors)
