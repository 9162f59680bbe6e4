"""Running an ONNX graph in onnxruntime: the session padim configures, and opening an exported ``.onnx`` file.

An exported file (``padim export``) runs with NumPy and onnxruntime alone, no torch: a line PC
without the training extra runs it. The graph computes the maps, scores, normalised scores
and labels (:mod:`padim.graph.modules`); nothing here recomputes them. onnxruntime's telemetry is
switched off before any session is made.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from padim.errors import ModelFileError, OptionError
from padim.modelfile.onnx_file import read_alignment, read_metadata
from padim.runtime.executors import Choice, check_executor, open_runner, remembered, signature
from padim.runtime.ort import OrtRunner
from padim.runtime.predictor import Predictor

PathLike = str | os.PathLike


def check_io(session: Any, image_size: tuple[int, int], calibrated: bool, path: PathLike = "model") -> None:
    """Check an onnxruntime session's inputs and outputs against what :class:`Predictor` feeds and reads.

    A graph from ``padim export`` takes ``images`` (N, 3, H, W) float at the stored working size
    and gives ``anomaly_map`` (N, H, W) and ``score`` (N,) float, and when calibrated
    ``normalized_score`` (N,) float and ``label`` (N,) bool. Any other graph carrying padim's
    metadata is refused here, at opening, not with an onnxruntime error on the first image.

    Raises:
        ModelFileError: naming the file and the input or output that does not fit.
    """
    height, width = image_size
    wanted_in = {"images": ("tensor(float)", (None, 3, height, width))}
    wanted_out = {"anomaly_map": ("tensor(float)", (None, height, width)), "score": ("tensor(float)", (None,))}
    if calibrated:
        wanted_out.update(normalized_score=("tensor(float)", (None,)), label=("tensor(bool)", (None,)))
    for kind, wanted, found in (
        ("input", wanted_in, session.get_inputs()),
        ("output", wanted_out, session.get_outputs()),
    ):
        found = {item.name: item for item in found}
        for name, (dtype, shape) in wanted.items():
            item = found.get(name)
            dims = None if item is None else tuple(item.shape)
            fits = (
                item is not None
                and item.type == dtype
                and len(dims) == len(shape)
                and all(want is None or got == want or not isinstance(got, int) for got, want in zip(dims, shape))
            )
            if not fits:
                got = "none" if item is None else f"{item.type} {list(dims)}"
                expected = [("N" if d is None else d) for d in shape]
                raise ModelFileError(
                    f"{path}: not a padim graph: {kind} {name!r} should be {dtype} {expected}, got {got}"
                )


def open_onnx(path: PathLike, device: str = "cpu", executor: str = "auto") -> Predictor:
    """A :class:`Predictor` for an exported ``.onnx`` file (no torch), run by the executor chosen for it.

    onnxruntime opens the file first and gives its metadata (``auto`` then compares it with OpenVINO
    where that is installed: :mod:`padim.runtime.executors`); ``--executor openvino`` reads the
    metadata with the ``onnx`` package instead, without the tensors.

    Raises:
        ModelFileError: for a missing or unreadable file, or one not exported by padim.
        OptionError, MissingExtraError: for an executor this model or machine cannot use.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    data = path.with_name(path.name + ".data")
    if executor == "openvino" and str(device) == "cpu":
        props, inputs = _onnx_header(path)
        image_size, calibration, config = read_metadata(props, path)
        alignment = read_alignment(props, path)
        runner, choice = open_runner(path, None, requested=executor, precision=config.get("backbone_dtype", "float32"),
                                     config={**config, "image_size": list(image_size)})  # fmt: skip
        return Predictor(runner, image_size=image_size, calibration=calibration, config=config, kind=choice.executor,
                         threshold_input="threshold" in inputs, executor=choice, alignment=alignment)  # fmt: skip
    try:
        runner = OrtRunner(path, device=device)
    except OptionError:
        raise
    except Exception as error:  # onnxruntime raises its own exception types for bad files
        reason = str(error).splitlines()[0]
        if not data.is_file() and "external" in reason.lower() or ".data" in reason:
            reason = f"its tensors file {data.name} is missing beside it: copy both files"
        raise ModelFileError(f"{path}: not a readable ONNX model ({reason})") from None
    props = runner.session.get_modelmeta().custom_metadata_map
    image_size, calibration, config = read_metadata(props, path)
    alignment = read_alignment(props, path)
    check_io(runner.session, image_size, calibration is not None, path)
    precision = config.get("backbone_dtype", "float32")
    on_cpu = str(device) == "cpu"
    choice = check_executor(executor, precision) if on_cpu else Choice("onnxruntime", precision, f"--device {device}")
    choice = choice or remembered(signature({**config, "image_size": list(image_size)}, precision))
    if choice is None or choice.executor != "onnxruntime":
        del runner  # its memory back before another executor opens the file
        runner, choice = open_runner(path, None, requested=executor, precision=precision, device=device,
                                     config={**config, "image_size": list(image_size)})  # fmt: skip
    return Predictor(runner, image_size=image_size, calibration=calibration, config=config, kind=choice.executor,
                     threshold_input="threshold" in getattr(runner, "input_names", ()) or choice.executor == "openvino",
                     executor=choice, alignment=alignment)  # fmt: skip


def _onnx_header(path: Path) -> tuple[dict[str, str], set[str]]:
    """An ONNX file's metadata and input names, read with the ``onnx`` package without its tensors."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf's DecodeError and others
        raise ModelFileError(f"{path}: not a readable ONNX model ({str(error).splitlines()[0]})") from None
    return {p.key: p.value for p in proto.metadata_props}, {i.name for i in proto.graph.input}
