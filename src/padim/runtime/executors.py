"""Which executor runs a model's graph on this machine: onnxruntime or OpenVINO, chosen once and said.

The graph is the same whoever runs it (:mod:`padim.graph.modules`, traced once); executors differ
in speed per processor. ``--executor auto`` (the default) decides per machine:

- a model whose backbone is **int8** runs in onnxruntime, the executor it was fitted with (OpenVINO
  computes other integers: good images' scores moved by up to 48%); a **bfloat16** model runs in
  OpenVINO, the executor it was fitted with;
- a **float32** model runs in onnxruntime unless OpenVINO is installed (``pip install
  'padim-toolkit[openvino]'``) and measured faster on this machine: both run the model on a batch
  once, the first time a model of this shape is opened here, and the answer is kept in
  :func:`padim.machine.cache_dir` (``executors.json``, keyed by the processor, the executors'
  versions and the graph's shape), so later starts only read it. OpenVINO must be at least
  :data:`MARGIN` times as fast: it takes more memory.

Every choice carries its reason (:class:`Choice`), which ``padim predict`` prints and ``padim info``
shows. float32 is exact on every executor (scores within 1e-5 of the torch path, in the tests).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from padim.errors import OptionError
from padim.extras import missing, require
from padim.machine import cache_dir, cpu_info
from padim.runtime.ort import OrtRunner

#: ``--executor`` values.
EXECUTORS = ("auto", "onnxruntime", "openvino")
#: OpenVINO is chosen for a float32 model only when it runs at least this many times as fast.
MARGIN = 1.1
#: Images per timed run when measuring (and timed runs per executor, after one warm-up run).
MEASURE_IMAGES, MEASURE_RUNS = 8, 3


@dataclass(frozen=True)
class Choice:
    """An executor decided for a model on this machine.

    Attributes:
        executor: ``"onnxruntime"`` or ``"openvino"``.
        precision: what the backbone computes in: ``"float32"``, ``"int8"`` or ``"bfloat16"``.
        reason: why, in a few words (``"auto: OpenVINO is not installed"``).
    """

    executor: str
    precision: str
    reason: str

    def describe(self) -> str:
        """``onnxruntime, float32 (auto: OpenVINO is not installed)``."""
        return f"{self.executor}, {self.precision} ({self.reason})"


def check_executor(requested: str, precision: str) -> Choice | None:
    """The choice that needs no measuring, or None when ``auto`` must measure (float32 with OpenVINO installed).

    Raises:
        OptionError: for an unknown executor, or one that cannot run this model's precision.
        MissingExtraError: for ``openvino`` (or a bfloat16 model) without the ``openvino`` extra.
    """
    if requested not in EXECUTORS:
        raise OptionError(f"--executor must be one of {', '.join(EXECUTORS)}, got {requested!r}")
    if precision == "int8":
        if requested == "openvino":
            raise OptionError("--executor openvino: this int8 model was fitted with onnxruntime's integer arithmetic; "
                              "OpenVINO computes other integers (scores up to 48% off): use --executor onnxruntime "
                              "or auto")  # fmt: skip
        return Choice("onnxruntime", precision, "int8 runs in the executor it was fitted with")
    if precision == "bfloat16":
        if requested == "onnxruntime":
            raise OptionError("--executor onnxruntime: this bfloat16 model was fitted with OpenVINO; use --executor "
                              "openvino or auto")  # fmt: skip
        require("openvino", "a bfloat16 model")
        return Choice("openvino", precision, "bfloat16 runs in the executor it was fitted with")
    if requested == "onnxruntime":
        return Choice("onnxruntime", precision, "as asked")
    if requested == "openvino":
        require("openvino", "--executor openvino")
        return Choice("openvino", precision, "as asked")
    if missing("openvino"):
        return Choice("onnxruntime", precision, "auto: OpenVINO is not installed")
    return None


def _key(signature: str) -> str:
    from importlib.metadata import version

    cpu = cpu_info()
    return f"{cpu.model}|{','.join(sorted(cpu.flags))}|{os.cpu_count()}|ort {version('onnxruntime')}|ov {version('openvino')}|{signature}"


def _cache() -> dict:
    try:
        found = json.loads((cache_dir() / "executors.json").read_text())
        return found if isinstance(found, dict) else {}
    except (OSError, ValueError):
        return {}


def remembered(signature: str) -> Choice | None:
    """The choice measured earlier on this machine for graphs of ``signature``, or None."""
    found = _cache().get(_key(signature))
    if not (isinstance(found, dict) and found.get("executor") in EXECUTORS[1:]):
        return None
    return Choice(found["executor"], "float32", str(found.get("reason", "auto: measured here earlier")))


def _remember(signature: str, choice: Choice) -> None:
    path = cache_dir() / "executors.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        found = {**_cache(), _key(signature): {"executor": choice.executor, "reason": choice.reason}}
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(found, indent=1))
        os.replace(tmp, path)
    except OSError:  # a read-only home: measure again next time
        pass


def _per_image(runner: Any, images: np.ndarray) -> float:
    inputs = {"images": images, "threshold": np.float32(np.nan), "scale": np.float32(1.0)}
    runner(**inputs)  # warm-up: OpenVINO compiles shape-specific kernels on the first run
    times = []
    for _ in range(MEASURE_RUNS):
        start = time.perf_counter()
        runner(**inputs)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) / len(images)


def measure(runners: dict[str, Any], image_size: tuple[int, int], signature: str) -> Choice:
    """Run each executor on the same batch, choose (OpenVINO only :data:`MARGIN` times as fast), remember.

    Args:
        runners: ``{"onnxruntime": ..., "openvino": ...}`` of the same float32 graph.
        image_size: the graph's working size (H, W).
        signature: what makes graphs alike for this choice (:func:`padim.runtime.stored.signature`).
    """
    images = np.zeros((MEASURE_IMAGES, 3, *image_size), np.float32)
    ort = _per_image(runners["onnxruntime"], images)
    ov = _per_image(runners["openvino"], images)
    ort = min(ort, _per_image(runners["onnxruntime"], images))  # alternate: a busy machine hurts both alike
    faster = "openvino" if ort >= MARGIN * ov else "onnxruntime"
    reason = (f"auto: measured on this machine, onnxruntime {ort * 1e3:.1f} ms and OpenVINO {ov * 1e3:.1f} ms "
              f"per image at batch {MEASURE_IMAGES}")  # fmt: skip
    choice = Choice(faster, "float32", reason)
    _remember(signature, choice)
    return choice


def signature(config: dict, precision: str) -> str:
    """What makes two graphs alike for the executors' speed: backbone, working size, d, grid, tiles, precision."""
    keys = ("backbone", "image_size", "n_features", "grid_stride", "tile_size")
    return "|".join(f"{key}={config.get(key)}" for key in keys) + f"|{precision}"


def open_runner(graph: Any, bound: dict[str, np.ndarray] | None, *, requested: str, precision: str, config: dict,
                device: str = "cpu") -> tuple[Any, Choice]:  # fmt: skip
    """The runner of ``graph`` chosen for this machine (:func:`check_executor`, else remembered, else measured).

    Args:
        graph: ONNX bytes or a ``.onnx`` path.
        bound: inputs bound once (the Gaussians of a ``.padim`` graph).
        requested: ``--executor``. precision: the model's backbone dtype. config: the model's settings.
        device: ``"cpu"``, or ``"cuda"`` (onnxruntime's CUDA provider; OpenVINO runs here on the CPU only).

    Returns:
        (a callable ``runner(images=..., threshold=..., scale=...)`` -> outputs, the :class:`Choice`).
    """
    if str(device) != "cpu":
        if requested == "openvino":
            raise OptionError(f"--executor openvino runs on the CPU; got --device {device}")
        return OrtRunner(graph, bound, device=device), Choice("onnxruntime", precision, f"--device {device}")
    choice = check_executor(requested, precision)
    sig = signature(config, precision)
    if choice is None:
        choice = remembered(sig)
    if choice is None:
        from padim.runtime.openvino import OvRunner

        runners = {"onnxruntime": OrtRunner(graph, bound), "openvino": OvRunner(graph, bound)}
        choice = measure(runners, tuple(config["image_size"]), sig)
        return runners[choice.executor], choice
    if choice.executor == "openvino":
        from padim.runtime.openvino import OvRunner

        return OvRunner(graph, bound, precision="bfloat16" if precision == "bfloat16" else "float32"), choice
    return OrtRunner(graph, bound), choice


def expected(config: dict, precision: str) -> Choice:
    """What ``--executor auto`` gives this model here, without measuring (``padim info``)."""
    found = check_executor("auto", precision) or remembered(signature(config, precision))
    return found or Choice("onnxruntime or openvino", precision, "auto: measured at its first prediction here")
