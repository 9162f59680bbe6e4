"""OpenVINO as an executor of padim's graph, called like :class:`padim.runtime.ort.OrtRunner` (the ``openvino`` extra).

The same ONNX graph onnxruntime runs (a ``.padim`` file's stored graph or an exported ``.onnx``);
only who runs it changes. Two things differ from onnxruntime and are handled here:

- **Precision is set, never left to the plugin.** OpenVINO's CPU plugin runs bfloat16 by default on
  a CPU with AVX512-BF16 or AMX, which moved bottle's scores by up to 140%
  (``benchmarks/results/speed_research.md``). :class:`OvRunner` always passes
  ``INFERENCE_PRECISION_HINT``: ``f32`` (exact: scores within 1e-6 of onnxruntime's) unless the model
  was fitted in bfloat16.
- **State is constant.** The Gaussians a ``.padim`` graph takes as inputs become constants of the
  compiled model (shared with the NumPy arrays, not copied), and OpenVINO folds an exported
  graph's ``threshold`` and ``scale`` (initializers that onnxruntime lets a caller override) into
  constants too: a threshold given at prediction time is then applied to the scores outside the
  graph, by the same rule the graph holds (:func:`padim.scoring.rules.normalize`, :func:`~padim.scoring.rules.label`).
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from padim.errors import ModelFileError
from padim.machine import cache_dir, cpu_threads
from padim.scoring.rules import label, normalize

PathLike = str | os.PathLike

#: padim's precision names -> OpenVINO's ``INFERENCE_PRECISION_HINT``.
HINTS = {"float32": "f32", "bfloat16": "bf16"}


class OvRunner:
    """An OpenVINO compiled model of a padim graph: ``runner(images=..., threshold=..., scale=...)`` -> outputs.

    Args:
        model: ONNX bytes, or the path of a ``.onnx`` file (its external data beside it).
        bound: input name -> array made a constant of the graph (the Gaussians of a ``.padim`` graph).
        precision: ``"float32"`` (exact) or ``"bfloat16"`` (a model fitted in bfloat16).
        threads: inference threads; None: the CPUs this process may use.

    Raises:
        ModelFileError: for a graph OpenVINO cannot read.
    """

    def __init__(self, model: bytes | PathLike, bound: dict[str, np.ndarray] | None = None, *,
                 precision: str = "float32", threads: int | None = None) -> None:  # fmt: skip
        import openvino as ov
        from openvino import op

        core = ov.Core()
        try:
            graph = core.read_model(model if isinstance(model, bytes) else str(model))
        except Exception as error:  # OpenVINO raises RuntimeError with its frontend's message
            raise ModelFileError(f"OpenVINO cannot read the graph ({str(error).splitlines()[0]})") from None
        self._constants = {name: np.ascontiguousarray(value) for name, value in (bound or {}).items()}
        for port in list(graph.inputs):
            value = self._constants.get(port.any_name)
            if value is not None:
                parameter = port.get_node()
                parameter.output(0).replace(op.Constant(ov.Tensor(value, shared_memory=True)).output(0))
                graph.remove_parameter(parameter)
        config = {
            "PERFORMANCE_HINT": "LATENCY",  # one request on every core: padim sends whole batches
            "INFERENCE_PRECISION_HINT": HINTS[precision],
            "INFERENCE_NUM_THREADS": int(threads or cpu_threads()),
            # Pinned threads fight the decoding threads for the same cores (measured slower at batch 1).
            "ENABLE_CPU_PINNING": False,
        }
        if not self._constants:  # a graph whose state is inside (exported): its compiled blob is cached
            core.set_property({"CACHE_DIR": str(cache_dir() / "openvino")})
        self.compiled = core.compile_model(graph, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.input_names = {port.any_name for port in self.compiled.inputs}
        self.output_names = [port.any_name for port in self.compiled.outputs]
        self.precision = precision

    def __call__(self, **inputs: Any) -> dict[str, np.ndarray]:
        feeds = {name: _float(value) for name, value in inputs.items() if name in self.input_names}
        self.request.infer(feeds, share_inputs=True)
        found = {name: self.request.get_tensor(name).data.copy() for name in self.output_names}
        if "label" in found:
            found["label"] = found["label"].astype(bool)
        folded = [name for name in ("threshold", "scale") if name in inputs and name not in self.input_names]
        if folded and "score" in found:  # the graph's own rule, on the scores it gave
            threshold = np.float32(math.nan if inputs.get("threshold") is None else inputs["threshold"])
            scale = np.float32(1.0 if inputs.get("scale") is None else inputs["scale"])
            score = found["score"].astype(np.float32)
            found["normalized_score"] = np.asarray(normalize(score, threshold, scale), np.float32)
            found["label"] = np.asarray(label(score, threshold), bool)
        return found


def _float(value: Any) -> np.ndarray:
    """float32, contiguous; a scalar stays a scalar (OpenVINO checks the rank)."""
    array = np.asarray(value, dtype=np.float32)
    return array if array.ndim == 0 else np.ascontiguousarray(array)


def openvino_version() -> str | None:
    """OpenVINO's version if it is installed (found without importing it), else None."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("openvino")
    except PackageNotFoundError:
        return None
