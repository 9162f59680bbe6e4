"""Executors of a traced or eager module: onnxruntime on the graph traced in memory, or PyTorch, and the device rules.

Executors differ only in who runs the module (:mod:`padim.graph.modules`): :class:`TorchRunner`
runs it eagerly (CPU or CUDA, ``backend="torch"``); :func:`make_runner` traces it
(:func:`padim.graph.trace.onnx_bytes`) and hands the graph to :class:`padim.runtime.ort.OrtRunner`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from padim.errors import OptionError
from padim.graph.modules import OUTPUTS, STATE_INPUTS, Scorer
from padim.graph.trace import onnx_bytes
from padim.runtime.ort import OrtRunner


def parse_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device.

    Raises:
        OptionError: naming ``--device`` for a string torch does not read as a device.
    """
    try:
        return torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise OptionError(f"--device must be cpu, cuda or cuda:N, got {str(device)!r}") from None


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device, if this machine has it.

    Raises:
        OptionError: naming ``--device`` for a device that is malformed or absent (``cuda`` without
            CUDA, ``cuda:7`` on a machine with fewer GPUs, ``mps`` off a Mac, ``meta``).
    """
    found = parse_device(device)
    if found.type == "cpu":
        return found
    if found.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise OptionError(f"--device {device}: no CUDA device on this machine (torch sees none); use --device cpu")
        if found.index is not None and found.index >= count:
            raise OptionError(f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
        return found
    if found.type == "mps" and torch.backends.mps.is_available():
        return found
    raise OptionError(f"--device {device}: not available here; padim runs on cpu or cuda")


def use_onnxruntime(backend: str, device: str | torch.device, backbone_dtype: str = "float32") -> bool:
    """Whether ``backend`` (``"auto"``, ``"torch"``, ``"onnxruntime"``) runs in onnxruntime on ``device``.

    An int8 backbone (``backbone_dtype="int8"``, :mod:`padim.graph.quantize`) runs only there: CUDA keeps float32.

    Raises:
        OptionError: for ``"onnxruntime"`` or int8 where onnxruntime is not installed, and for
            int8 with the torch backend or off the CPU.
    """
    device = parse_device(device)
    if backbone_dtype != "float32" and (backend == "torch" or device.type != "cpu"):
        option = f"backend={backend!r}" if backend == "torch" else f"device={str(device)!r}"
        executor = "onnxruntime" if backbone_dtype == "int8" else "OpenVINO"
        raise OptionError(f"backbone_dtype={backbone_dtype!r} runs in {executor} on the CPU, got {option}; "
                          "fit a float32 model for torch or CUDA")  # fmt: skip
    if backend == "torch" or torch.device(device).type != "cpu":
        return False
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        if backend == "onnxruntime" or backbone_dtype == "int8":
            wanted = "backbone_dtype='int8'" if backbone_dtype == "int8" else "backend='onnxruntime'"
            raise OptionError(f"{wanted} needs the onnxruntime package") from None
        return False
    return True


def make_runner(
    module: nn.Module,
    example: dict[str, Tensor],
    output_names: Sequence[str],
    batch_axes: dict[str, int],
    *,
    bound: Sequence[str] = (),
    device: str | torch.device = "cpu",
    onnxruntime: bool = False,
    transform: Callable[[bytes], bytes] | None = None,
    precision: str = "float32",
) -> Any:
    """An executor of ``module``: onnxruntime on the graph traced in memory, or eager PyTorch.

    Args:
        module: called with the inputs named in ``example``, in order.
        example: input name -> example tensor; the inputs named in ``bound`` are bound to
            these tensors once, the others are passed at each call.
        output_names, batch_axes: as for :func:`onnx_bytes`.
        device: where eager PyTorch runs.
        onnxruntime: run the traced graph in :class:`padim.runtime.ort.OrtRunner` (CPU).
        transform: applied to the traced graph before it runs (:func:`padim.graph.quantize.quantize`).
        precision: ``"bfloat16"`` runs the traced graph in OpenVINO in bfloat16
            (:class:`padim.runtime.openvino.OvRunner`); otherwise onnxruntime runs it.

    Returns:
        A callable: ``runner(**inputs)`` -> output name -> array or tensor.
    """
    state = {name: example[name] for name in bound}
    if not onnxruntime:
        return TorchRunner(module, list(example), output_names, state, device)
    graph = onnx_bytes(module, example, output_names, batch_axes)
    if transform is not None:
        graph = transform(graph)
    bound = {name: t.detach().cpu().numpy() for name, t in state.items()}
    if precision == "bfloat16":
        from padim.runtime.openvino import OvRunner

        return OvRunner(graph, bound, precision="bfloat16")
    return OrtRunner(graph, bound)


class ChainedRunner:
    """:class:`Pipeline` run as its two stages by two executors: the embedding's, then the scorer's.

    The same math as one pipeline runner; it lets a fit reuse the backbone's executor it
    already holds and score in eager PyTorch on the packed precision factors (unpacked a chunk
    at a time by :func:`padim.maps.anomaly_map.mahalanobis`), without tracing the graph once more
    nor unpacking the factors whole.

    Args:
        embed: runs :class:`Embedder`: ``embed(images=...)["patches"]``.
        scorer: the :class:`Scorer`, run eagerly on ``device``.
        state: ``mean`` (P, D) and ``precision_cholesky`` (P, D, D) or packed (P, D(D+1)/2).
    """

    def __init__(self, embed: Any, scorer: Scorer, state: dict[str, Tensor], device: str | torch.device) -> None:
        self.embed = embed
        self.score = TorchRunner(scorer, ["patches", *STATE_INPUTS], OUTPUTS, state, device)

    def __call__(self, *, images: Any, threshold: Any, scale: Any) -> dict[str, Any]:
        patches = self.embed(images=images)["patches"]
        return self.score(patches=patches, threshold=threshold, scale=scale)


class TorchRunner:
    """Runs a module eagerly in PyTorch, with some inputs bound once.

    Args:
        module: the module to run (moved to ``device``).
        input_names: the names of its positional inputs, in order.
        output_names: names for its outputs.
        bound: input name -> tensor, passed on every call (moved to ``device`` once).
        device: where to run.

    ``runner(**inputs)`` takes the remaining inputs (arrays or tensors) and returns output
    name -> tensor on ``device``. Calls from several threads run one at a time: they would
    otherwise compete for the same intra-op threads.
    """

    def __init__(
        self,
        module: nn.Module,
        input_names: Sequence[str],
        output_names: Sequence[str],
        bound: dict[str, Any] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()
        self.input_names = tuple(input_names)
        self.output_names = tuple(output_names)
        self.bound = {k: _float(torch.as_tensor(v)).to(self.device) for k, v in (bound or {}).items()}
        self._lock = threading.Lock()

    def __call__(self, **inputs: Any) -> dict[str, Tensor]:
        feeds = {**self.bound, **inputs}
        args = [_float(torch.as_tensor(feeds[name])).to(self.device) for name in self.input_names]
        with self._lock, torch.inference_mode():
            outputs = self.module(*args)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        return dict(zip(self.output_names, outputs))


def _float(tensor: Tensor) -> Tensor:
    """Float32, except float16 state (compact precision factors), which the graph casts itself."""
    return tensor if tensor.dtype == torch.float16 else tensor.to(torch.float32)
