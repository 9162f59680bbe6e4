"""The onnxruntime session padim configures: threads, no spinning, no memory pattern, inputs bound once.

onnxruntime's telemetry is switched off before any session is made.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from padim.errors import OptionError
from padim.machine import cpu_threads

PathLike = str | os.PathLike


class OrtRunner:
    """An onnxruntime session with some inputs bound once.

    Args:
        model: ONNX bytes, or the path of a ``.onnx`` file (its external data beside it).
        bound: input name -> array passed on every call (shared with onnxruntime, not copied).
        device: ``"cpu"`` or ``"cuda"`` (needs onnxruntime-gpu).
        threads: intra-op threads; None: the CPUs this process may use.

    ``runner(**inputs)`` takes the remaining inputs and returns output name -> array. Inputs the
    graph does not have are ignored (older exported files have fewer).
    """

    def __init__(
        self,
        model: bytes | PathLike,
        bound: dict[str, np.ndarray] | None = None,
        device: str = "cpu",
        threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        ort.disable_telemetry_events()
        providers = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
        if str(device) not in providers:
            raise OptionError(f"--device must be 'cpu' or 'cuda' for an ONNX model, got {device!r}")
        if providers[str(device)][0] not in ort.get_available_providers():
            raise OptionError(f"--device {device}: this onnxruntime lacks {providers[str(device)][0]}")
        options = ort.SessionOptions()
        # Errors only: an exported graph keeps its threshold as an overridable input on
        # purpose, which onnxruntime would warn about on every load.
        options.log_severity_level = 3
        options.intra_op_num_threads = threads or cpu_threads()
        options.inter_op_num_threads = 1
        # The memory pattern pre-plans one block per input shape on top of the arena: it
        # doubled peak memory (+620 MB instead of +330 MB, batch 32 at 256 px) for no speed.
        options.enable_mem_pattern = False
        # Idle workers that spin steal the cores from the image decoding threads.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, options, providers=providers[str(device)])
        # Initializers that are also graph inputs (an exported threshold) are inputs too.
        overridable = self.session.get_overridable_initializers()
        self.input_names = {i.name for i in [*self.session.get_inputs(), *overridable]}
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.bound = {k: _float(v) for k, v in (bound or {}).items()}

    def __call__(self, **inputs: Any) -> dict[str, np.ndarray]:
        feeds = {k: _float(v) for k, v in {**self.bound, **inputs}.items()}
        feeds = {k: v for k, v in feeds.items() if k in self.input_names}
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))


def _float(array: Any) -> np.ndarray:
    """A contiguous float32 array, except float16 state (compact precision factors), kept as it is."""
    array = np.asarray(array)
    return np.ascontiguousarray(array, dtype=np.float16 if array.dtype == np.float16 else np.float32)
