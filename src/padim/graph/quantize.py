"""int8 on the CPU: the backbone's layers quantised by onnxruntime, calibrated on the good images.

PaDiM's backbone (Defard et al. 2020, https://arxiv.org/abs/2011.08785, Sec. 3.1) is a plain
CNN, and EfficientNet-Lite0 was designed for 8-bit inference. Here the traced graph of
:mod:`padim.graph.modules` is quantised with onnxruntime's static QDQ quantisation: per-channel int8
weights and uint8 activations for the backbone's ``Conv``, ``Clip``/``Relu``, ``Add`` and
``MaxPool`` nodes; everything after the backbone (channel selection, Mahalanobis distance,
up-sampling, blur, score) stays float32. onnxruntime fuses the QDQ pairs into integer kernels.

Calibration (the range of each quantised activation) is measured on a few of the good images
that ``fit`` is given, before the Gaussians are fitted; the Gaussians are then fitted on the int8
backbone's features, so fitting and predicting see the same features. The ranges are the only
state: :class:`Quantization` records them (in the model file), and :func:`quantize` rebuilds the
same int8 graph from any traced graph that holds the backbone (the embedding while fitting, the
whole pipeline to predict and to export), on any machine, without the training images.

Weights are quantised to 7 bits (``reduce_range``): x86 CPUs without VNNI multiply uint8 by int8
in 16-bit pairs that saturate with 8-bit weights, so a model fitted on one CPU would see other
features on another. With 7 bits no CPU saturates and every machine computes the same integers.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from padim.errors import ModelFileError
from padim.machine import cpu_threads

#: Node types quantised inside the backbone (the others run in float32 between them).
OP_TYPES = ("Conv", "Clip", "Relu", "Add", "MaxPool")
#: Scope of the backbone's nodes in a traced graph (:class:`padim.features.backbones.FeatureExtractor`).
BACKBONE_SCOPE = "/extractor/"
#: Scope of the embedder's nodes in the whole pipeline's graph (:class:`padim.graph.modules.Pipeline`).
EMBEDDER_SCOPE = "/embedder/"
#: Calibration methods a record may name (padim calibrates with MinMax; the others are compared
#: in ``benchmarks/int8.py``).
METHODS = ("minmax", "entropy", "percentile")
#: Good images the backbone is calibrated on (``benchmarks/results/int8.md``).
DEFAULT_IMAGES = 32
#: Bits of the weights' range for new calibrations: 7 (see the module doc) or 8.
WEIGHT_BITS = 7


@dataclass(frozen=True)
class Quantization:
    """How a model's backbone is quantised: the calibrated range of each quantised activation.

    Attributes:
        ranges: tensor name (from the backbone's scope on, see :func:`canonical`) -> (low, high).
        method: the calibration method, one of :data:`METHODS`.
        n_images: how many good images the ranges were measured on.
        weight_bits: 7 (int8 weights in [-64, 63], see the module doc) or 8.
    """

    ranges: dict[str, tuple[float, float]] = field(repr=False)
    method: str = "minmax"
    n_images: int = 0
    weight_bits: int = 7

    def to_dict(self) -> dict:
        """JSON-serialisable form (float32 values written exactly)."""
        return dict(
            method=self.method,
            n_images=self.n_images,
            weight_bits=self.weight_bits,
            activations="uint8",
            weights="int8 per output channel",
            format="QDQ",
            ranges={name: [float(lo), float(hi)] for name, (lo, hi) in sorted(self.ranges.items())},
        )

    @classmethod
    def from_dict(cls, data: dict) -> Quantization:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: for a malformed record.
        """
        if not isinstance(data, dict) or not isinstance(data.get("ranges"), dict) or not data["ranges"]:
            raise ValueError("the int8 quantization record has no ranges")
        ranges = {}
        for name, value in data["ranges"].items():
            if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value)):
                raise ValueError(f"int8 range of {name!r} must be [low, high], got {value!r}")
            low, high = (float(np.float32(v)) for v in value)
            if not (np.isfinite(low) and np.isfinite(high) and low <= high):
                raise ValueError(f"int8 range of {name!r} must be finite with low <= high, got {value!r}")
            ranges[str(name)] = (low, high)
        if data.get("method") not in METHODS:
            raise ValueError(f"int8 calibration method must be one of {METHODS}, got {data.get('method')!r}")
        if data.get("weight_bits", 7) not in (7, 8):
            raise ValueError(f"int8 weight_bits must be 7 or 8, got {data.get('weight_bits')!r}")
        return cls(ranges, data["method"], int(data.get("n_images", 0)), int(data.get("weight_bits", 7)))


def canonical(name: str) -> str:
    """A tensor's name from the backbone's (or the embedder's) scope on: the same in every graph that holds it.

    The embedding graph names the embedder's own nodes (a tile's ``Slice``) from the root, the whole
    pipeline from ``/embedder/``: both give the same name here.

    >>> canonical("/embedder/extractor/_blocks.2/Add_output_0"), canonical("images")
    ('/extractor/_blocks.2/Add_output_0', 'images')
    >>> canonical("/embedder/Slice_9_output_0"), canonical("/Slice_9_output_0")
    ('/Slice_9_output_0', '/Slice_9_output_0')
    """
    at = name.find(BACKBONE_SCOPE)
    if at >= 0:
        return name[at:]
    return name[len(EMBEDDER_SCOPE) - 1 :] if name.startswith(EMBEDDER_SCOPE) else name


def optimized(graph: bytes):
    """``graph`` after onnxruntime's basic (standard-operator) optimisations, as an ``onnx.ModelProto``.

    Folding constants and each padding into its convolution leaves the quantised nodes next to
    each other, so onnxruntime fuses them into integer kernels (as its ``quant_pre_process``).
    """
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="padim-int8-") as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        return onnx.shape_inference.infer_shapes(onnx.load(options.optimized_model_filepath))


def _prepared(graph: Any):
    """A copy of ``graph`` to change: optimised from ONNX bytes, or copied from an optimised ``ModelProto``."""
    if isinstance(graph, bytes):
        return optimized(graph)
    model = type(graph)()
    model.CopyFrom(graph)
    return model


def backbone_activations(model) -> tuple[list, dict[str, str]]:
    """The nodes to quantise (:data:`OP_TYPES` in the backbone's scope) and their float tensors.

    Returns:
        (nodes, tensor name -> the tensor whose range it takes). A convolution's output read
        only by a quantised ``Clip`` or ``Relu`` takes that activation's output range, as
        onnxruntime's own range adjustment does: the quantiser then drops the activation (uint8
        clips by itself), so only its output is measured and the convolution stays fused with
        it while calibrating.
    """
    nodes = [node for node in model.graph.node if node.op_type in OP_TYPES and BACKBONE_SCOPE in node.name]
    constants, quantised = {init.name for init in model.graph.initializer}, {node.name for node in nodes}
    readers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    sources: dict[str, str] = {}
    for name in (name for node in nodes for name in [*node.input, *node.output]):
        if name and name not in constants and name not in sources:
            after = readers.get(name, [])
            clipped = len(after) == 1 and after[0].op_type in ("Clip", "Relu") and after[0].name in quantised
            sources[name] = after[0].output[0] if clipped else name
    return nodes, sources


def calibrate(graph: Any, images: np.ndarray, batch_size: int = 8) -> Quantization:
    """Measure the backbone's activation ranges on good images (MinMax: the observed ranges).

    MinMax was as accurate as onnxruntime's Entropy and Percentile calibrators on bottle and
    hazelnut, and several times cheaper (``benchmarks/results/int8.md``).

    Args:
        graph: the float32 graph of the embedding (:class:`padim.graph.modules.Embedder`, input
            ``images``): ONNX bytes, or the ``ModelProto`` :func:`optimized` made of them.
        images: (N, 3, H, W) float32 pre-processed good images.
        batch_size: images per calibration run.

    Returns:
        The :class:`Quantization` with one range per quantised activation.
    """
    images = np.ascontiguousarray(images, dtype=np.float32)
    model = _prepared(graph)
    wanted = sorted(set(backbone_activations(model)[1].values()))
    found = _minmax(model, wanted, [images[i : i + batch_size] for i in range(0, len(images), batch_size)])
    return Quantization({canonical(name): found[name] for name in wanted}, "minmax", len(images), WEIGHT_BITS)


def _minmax(model, tensors: Sequence[str], batches: Sequence[np.ndarray]) -> dict[str, tuple[float, float]]:
    """Smallest and largest value of each tensor over the batches.

    A ReduceMin and a ReduceMax per tensor, run with onnxruntime's optimisations (its own
    calibrator disables them: it took 6 times as long as embedding the same images).
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper

    outputs = []
    for i, name in enumerate(tensors):
        for op in ("ReduceMin", "ReduceMax"):
            outputs.append(f"padim_calibration_{i}_{op}")
            model.graph.node.append(helper.make_node(op, [name], [outputs[-1]], keepdims=0))
            model.graph.output.append(helper.make_tensor_value_info(outputs[-1], TensorProto.FLOAT, []))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = cpu_threads()
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    found = np.stack([session.run(outputs, {"images": batch}) for batch in batches]).reshape(len(batches), -1, 2)
    low, high = found[..., 0].min(0), found[..., 1].max(0)
    return {name: (float(lo), float(hi)) for name, lo, hi in zip(tensors, low, high)}


def quantize(graph: Any, quantization: Quantization) -> bytes:
    """The int8 version of a float32 graph that holds the backbone, from recorded ranges.

    Args:
        graph: ONNX bytes traced from :mod:`padim.graph.modules` (the embedding or the whole
            pipeline), or the ``ModelProto`` :func:`optimized` made of them.
        quantization: the backbone's calibrated ranges.

    Returns:
        ONNX bytes: the backbone's nodes quantised (QDQ), the rest unchanged in float32.

    Raises:
        ModelFileError: if the ranges do not cover this graph's backbone (a model from another
            version of the backbone graph: fit it again).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantType
    from onnxruntime.quantization.calibrate import TensorData, TensorsData
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    model = _prepared(graph)
    nodes, sources = backbone_activations(model)
    missing = [name for name in sources.values() if canonical(name) not in quantization.ranges]
    if missing or not nodes:
        raise ModelFileError(
            f"the int8 calibration does not match this padim-toolkit's backbone graph (no range for "
            f"{(missing or ['any node'])[0]!r}): fit the model again"
        )
    ranges = {}
    for name, source in sources.items():
        low, high = quantization.ranges[canonical(source)]
        ranges[name] = TensorData(lowest=np.float32(low), highest=np.float32(high))
    quantizer = QDQQuantizer(
        model,
        True,  # per-channel weights
        quantization.weight_bits == 7,  # reduce_range: the same integers on every x86 CPU (module doc)
        QuantType.QInt8,
        QuantType.QUInt8,
        TensorsData(CalibrationMethod.MinMax, ranges),
        [node.name for node in nodes],
        [],
        list(OP_TYPES),
        {},
    )
    quantizer.quantize_model()
    quantizer.model.topological_sort()  # as onnxruntime does before saving: the checker wants it
    return quantizer.model.model.SerializeToString()
