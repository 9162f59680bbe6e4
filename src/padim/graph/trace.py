"""Tracing a module to ONNX in memory: the graph onnxruntime runs for a ``.padim`` model and ``padim export`` writes."""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from padim.graph.modules import OUTPUTS, STATE_INPUTS, Pipeline

OPSET = 17


def onnx_bytes(
    module: nn.Module,
    example: dict[str, Tensor],
    output_names: Sequence[str],
    batch_axes: dict[str, int],
    *,
    opset: int = OPSET,
) -> bytes:
    """Trace ``module`` to a serialised ONNX model in memory; nothing is written to disk.

    Args:
        module: called with the tensors of ``example`` as positional arguments, in order.
        example: input name -> example tensor (the batch size may differ at run time).
        output_names: names for the module's outputs.
        batch_axes: input or output name -> its batch axis (dynamic in the graph).
        opset: ONNX opset version.

    Returns:
        ONNX ``ModelProto`` bytes.
    """
    buffer = io.BytesIO()
    tensors = [*module.parameters(), *module.buffers()]
    if any(t.device.type != "cpu" for t in tensors):
        module = copy.deepcopy(module).cpu()  # the graph's constants live on the CPU
    module.eval()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        # The legacy exporter warns that it is deprecated, and the tracer that shape arithmetic
        # becomes constants: both are expected here (the working size is fixed per model).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            tuple(_traceable(t) for t in example.values()),
            buffer,
            input_names=list(example),
            output_names=list(output_names),
            dynamic_axes={name: {axis: "N"} for name, axis in batch_axes.items()},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    return buffer.getvalue()


def _traceable(tensor: Tensor) -> Tensor:
    """A CPU tensor the tracer accepts (inference tensors are copied to plain ones)."""
    tensor = tensor.detach().to("cpu")
    return tensor.clone() if tensor.is_inference() else tensor


def pipeline_onnx(pipeline: Pipeline, image_size: Sequence[int], state: dict[str, Tensor]) -> bytes:
    """The whole pipeline as ONNX bytes, with the inputs ``images`` and :data:`STATE_INPUTS`."""
    example = {"images": torch.zeros(2, 3, *image_size), **{k: state[k] for k in STATE_INPUTS}}
    return onnx_bytes(pipeline, example, OUTPUTS, {"images": 0, **{name: 0 for name in OUTPUTS}})
