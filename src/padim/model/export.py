"""ONNX export: the inference pipeline of :mod:`padim.graph.modules`, written to a file with its state.

The exported graph is exactly the one onnxruntime runs in memory for a ``.padim`` model
(:func:`padim.graph.trace.pipeline_onnx`); only its state changes form. The Gaussians ``mean``
and ``precision_cholesky`` become initializers (constants), and ``threshold`` and ``scale`` become
initializers that stay graph inputs too, so a caller may override the threshold at run time
(``padim predict model.onnx --threshold T``) and otherwise gets the calibrated one.

Graph interface (batch size N is dynamic, H x W is the model's working size):

- input ``images``: (N, 3, H, W) float32 (H x W need not be square), resized and normalised by
  :func:`padim.io.images.preprocess` (pre-processing stays outside the graph; its constants are
  in the metadata); optional inputs ``threshold`` and ``scale`` (float32 scalars);
- outputs ``anomaly_map`` (N, H, W) float32, ``score`` (N,), ``normalized_score`` (N,) and
  ``label`` (N,) bool (True = anomalous). An uncalibrated model has threshold NaN: its
  ``normalized_score`` is NaN and its ``label`` True for every image.

``metadata_props``: ``padim.format_version`` (2), ``padim.image_size`` ([H, W]),
``padim.calibration`` (JSON or ``null``), ``padim.config``, ``padim.n_images`` (training
images), ``padim.preprocess`` and ``padim.toolkit_version``. The tensors are kept in one external data
file, ``<name>.data`` beside ``<name>`` (onnxruntime finds it by that name and maps it: the model opens
ten times as fast); ``padim export --single-file`` keeps them inside, below protobuf's 2 GB limit.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from padim.errors import OptionError
from padim.graph.build import pipeline_graph, runtime_factors
from padim.io.files import check_replaceable, staging_folder
from padim.io.images import IMAGENET_MEAN, IMAGENET_STD
from padim.model.padim import Padim, check_fitted
from padim.version import __version__

PathLike = str | os.PathLike

#: Version of the graph and metadata layout; :mod:`padim.runtime.predictor` refuses files newer than it knows.
#: 2: ``threshold`` and ``scale`` are graph inputs (0.1 wrote 1, with constants instead).
FORMAT_VERSION = 2
#: protobuf cannot serialise a message of 2 GiB or more; stay clear of it (the graph adds a little).
PROTOBUF_LIMIT = 2**31 - 2**24


def model_metadata(model: Padim) -> dict[str, str]:
    """The ``metadata_props`` an exported model carries (string keys and values)."""
    calibration = model.calibration_
    preprocess = {
        "input": "images",
        "layout": "NCHW",
        "color": "RGB",
        "resize": "bilinear",
        "scale": 1.0 / 255.0,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
    }
    return {
        "padim.format_version": str(FORMAT_VERSION),
        "padim.image_size": json.dumps(list(model.image_size_)),
        "padim.calibration": json.dumps(None if calibration is None else calibration.to_dict()),
        "padim.config": json.dumps(model.config()),
        "padim.alignment": json.dumps(None if model.alignment_ is None else model.alignment_.to_dict()),
        "padim.n_images": str(int(model.n_images_)),
        "padim.preprocess": json.dumps(preprocess),
        "padim.toolkit_version": __version__,
    }


def model_proto(model: Padim):
    """The model's pipeline graph as an ``onnx.ModelProto`` with its state inside (see the module doc)."""
    import onnx
    import torch
    from onnx import numpy_helper

    check_fitted(model)
    calibration = model.calibration_
    state = {
        "mean": model.mean_.detach().cpu().float().numpy(),
        "precision_cholesky": runtime_factors(model.precision_cholesky_packed_).detach().cpu().numpy(),
        "threshold": np.float32(math.nan if calibration is None else calibration.threshold),
        "scale": np.float32(1.0 if calibration is None else calibration.scale),
    }
    example = {k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}
    graph = pipeline_graph(model.graph_spec(), example)  # int8: the graph the .padim model runs
    proto = onnx.load_from_string(graph)
    constant = {"mean", "precision_cholesky"}
    kept = [value for value in proto.graph.input if value.name not in constant]
    del proto.graph.input[:]
    proto.graph.input.extend(kept)
    for name, value in state.items():
        value = np.asarray(value)  # float32, or float16 factors for a model too large for float32 ones
        proto.graph.initializer.append(
            numpy_helper.from_array(value.astype(np.float32, copy=False) if value.dtype != np.float16 else value, name)
        )
    for key, value in model_metadata(model).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name, proto.producer_version = "padim-toolkit", __version__
    height, width = model.image_size_
    proto.doc_string = (
        f"PaDiM anomaly detector ({model.backbone}, working size {height}x{width}): input 'images' "
        "(N, 3, H, W) normalised RGB; outputs anomaly_map, score, normalized_score, label."
    )
    return proto


def export_onnx(model: Padim | PathLike, path: PathLike, *, external_data: bool = True) -> Path:
    """Export a fitted model's whole inference pipeline to an ONNX file, atomically.

    Args:
        model: a fitted :class:`~padim.model.padim.Padim`, or the path of a ``.padim`` model file.
        path: the ``.onnx`` file to write (its folder is created if missing).
        external_data: keep the tensors in ``<path>.data`` beside the model (default): onnxruntime
            maps that file instead of parsing the tensors out of the protobuf, so the model opens in
            0.05 s instead of 0.5 s (bottle, 168 MB). False: one file (refused past protobuf's 2 GB limit).

    Returns:
        ``Path(path)``. With external data, ``<path>.data`` is written first and the model file
        last, each by a rename from a temporary name in the same folder; a failed export
        leaves any earlier files at those names untouched.

    Raises:
        NotFittedError: for an unfitted model. ModelFileError: if ``model`` names an unreadable
        model file. OptionError: if ``path`` is a folder.
    """
    import onnx

    if not isinstance(model, Padim):
        model = Padim.load(model)
    path = Path(path)
    if path.is_dir():
        raise OptionError(f"--output {path} is a folder; expected an ONNX file path such as model.onnx")
    proto = model_proto(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not external_data and sum(len(t.raw_data) for t in proto.graph.initializer) >= PROTOBUF_LIMIT:
        raise OptionError(f"--single-file: {path}: the model's tensors pass protobuf's 2 GB limit; export it "
                          "with its tensors beside it (the default)")  # fmt: skip
    with staging_folder(path) as workdir:
        # Written under the final name inside the temporary folder: external data is then
        # referenced by a relative location that stays valid after the move.
        staged, data_name = workdir / path.name, f"{path.name}.data"
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
        check_replaceable(path)
        if external_data:
            os.replace(workdir / data_name, path.parent / data_name)
        os.replace(staged, path)
        if not external_data:
            # A sidecar from an earlier export to this name is no longer referenced by anything.
            (path.parent / data_name).unlink(missing_ok=True)
    return path
