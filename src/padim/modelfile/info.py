"""What a model file holds, read without running or even loading it: ``padim info``.

A ``.padim`` file (:mod:`padim.modelfile.padim_file`) is safetensors: 8 bytes of header length, a JSON
header with each tensor's dtype, shape and offsets and the ``padim`` metadata, then raw bytes.
:func:`model_info` reads that header alone (no torch, no tensor data), so it is instant even for a
1 GB model. An ``.onnx`` file from ``padim export`` keeps the same facts in its metadata and
initializers, read with ``onnx`` without its external data. :func:`file_sha256` is the
checksum the verdict log (:mod:`padim.outputs.verdict_log`) records for the model that gave a verdict.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

from padim.errors import ModelFileError
from padim.modelfile.mapped import read_header
from padim.modelfile.onnx_file import read_metadata
from padim.modelfile.padim_file import check_shapes, parse_metadata
from padim.scoring.calibration import Calibration

PathLike = str | os.PathLike

_BYTES_PER_ELEMENT = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}


def file_sha256(path: PathLike, chunk: int = 2**20) -> str:
    """SHA-256 of a file's bytes, as 64 hex digits, read in chunks; an ``.onnx`` file's external data
    (``<name>.data`` beside it) follows its bytes, so the checksum covers the tensors too.

    >>> import tempfile; f = tempfile.NamedTemporaryFile(delete=False); _ = f.write(b"abc"); f.close()
    >>> file_sha256(f.name)[:16]
    'ba7816bf8f01cfea'
    """
    digest = hashlib.sha256()
    data = Path(path).with_name(Path(path).name + ".data")
    for part in [path] + ([data] if str(path).lower().endswith(".onnx") and data.is_file() else []):
        with open(part, "rb") as handle:
            while block := handle.read(chunk):
                digest.update(block)
    return digest.hexdigest()


def _tensor(name: str, dtype: str, shape: list[int]) -> dict:
    size = math.prod(shape) * _BYTES_PER_ELEMENT.get(dtype, 4)
    return {"name": name, "dtype": dtype, "shape": list(shape), "bytes": size}


def _padim_info(path: Path) -> dict:
    header, _ = read_header(path)
    stored = header.pop("__metadata__", None)
    meta = parse_metadata(stored.get("padim") if isinstance(stored, dict) else None, path)
    try:
        tensors = [_tensor(name, t["dtype"], t["shape"]) for name, t in header.items()]
    except (KeyError, TypeError, ValueError):
        raise ModelFileError(f"{path}: not a padim model, or truncated or corrupt (malformed tensor entries)") from None
    check_shapes({t["name"]: tuple(t["shape"]) for t in tensors}, meta, path)
    return dict(
        kind="padim",
        format_version=meta.get("format_version"),
        toolkit_version=meta.get("padim_toolkit_version"),
        config={
            k: meta.get(k)
            for k in (
                "backbone",
                "layers",
                "n_features",
                "image_size",
                "pretrained",
                "seed",
                "backbone_dtype",
                "grid_stride",
                "tile_size",
                "align",
            )
        },  # fmt: skip
        alignment=_alignment(meta.get("alignment")),
        graph=isinstance(meta.get("graph"), dict),
        feature_size=meta.get("feature_size"),
        n_images=meta.get("n_images"),
        calibration=meta.get("calibration"),
        tensors=tensors,
    )


def _alignment(record: dict | None) -> dict | None:
    """The alignment record without its reference image: what ``padim info`` shows."""
    if not isinstance(record, dict):
        return None
    return {key: record.get(key) for key in ("motion", "threshold", "max_shift", "max_angle", "shape")}


def _onnx_info(path: Path) -> dict:
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # onnx raises protobuf's DecodeError and others for a bad file
        raise ModelFileError(f"{path}: not a readable ONNX model ({str(error).splitlines()[0]})") from None
    props = {p.key: p.value for p in proto.metadata_props}
    if "padim.format_version" not in props:
        raise ModelFileError(f"{path}: an ONNX model, but not one exported by padim (no padim metadata)")
    dtypes = {1: "F32", 7: "I64", 9: "BOOL", 11: "F64"}
    tensors = [
        _tensor(t.name, dtypes.get(t.data_type, str(t.data_type)), list(t.dims)) for t in proto.graph.initializer
    ]
    image_size, calibration, config = read_metadata(props, path)  # refuses malformed metadata
    inputs = {i.name for i in proto.graph.input}
    outputs = {o.name for o in proto.graph.output}
    if "images" not in inputs or not {"anomaly_map", "score"} <= outputs:
        raise ModelFileError(
            f"{path}: not a padim graph: inputs {sorted(inputs)[:4]}, outputs {sorted(outputs)[:4]} "
            "(expected images -> anomaly_map, score)"
        )
    try:
        n_images = int(props["padim.n_images"]) if "padim.n_images" in props else None
    except ValueError:
        raise ModelFileError(f"{path}: malformed padim metadata in the ONNX model (padim.n_images)") from None
    return dict(
        kind="onnx",
        format_version=int(props["padim.format_version"]),
        toolkit_version=props.get("padim.toolkit_version"),
        config={**config, "image_size": list(image_size)},
        alignment=_alignment(props.get("padim.alignment") and json.loads(props["padim.alignment"])),
        feature_size=None,
        n_images=n_images,
        calibration=None if calibration is None else calibration.to_dict(),
        tensors=[t for t in tensors if t["bytes"] >= 1024 or t["name"] in ("threshold", "scale")],
    )


def model_info(path: PathLike) -> dict:
    """What ``padim info`` shows, as a JSON-ready dict; reads no tensor data and runs nothing.

    Returns:
        ``{path, kind ("padim" or "onnx"), format_version, toolkit_version, config (backbone,
        layers, n_features, image_size, ...), feature_size, n_images, calibration (dict or
        None), tensors [{name, dtype, shape, bytes}], file_bytes, sha256}``.

    Raises:
        ModelFileError: for a missing file or one that is not a padim model.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    info = _onnx_info(path) if path.suffix.lower() == ".onnx" else _padim_info(path)
    data = path.with_name(path.name + ".data")
    size = path.stat().st_size + (data.stat().st_size if info["kind"] == "onnx" and data.is_file() else 0)
    return {"path": str(path), **info, "file_bytes": size, "sha256": file_sha256(path)}


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB" if n >= 1024 else f"{n} B"


def format_info(info: dict) -> str:
    """:func:`model_info` as aligned lines for a person."""
    config = info["config"]
    height, width = config.get("image_size") or ("?", "?")
    rows = [
        ("model", f"{info['path']} ({info['kind']} file, format {info['format_version']}, "
                  f"written by padim-toolkit {info['toolkit_version'] or '?'})"),  # fmt: skip
        ("checksum", f"sha256 {info['sha256']}"),
        ("backbone", f"{config.get('backbone')}, layers {', '.join(config.get('layers') or [])}"
                     f"{'' if config.get('pretrained', True) else ' (random weights)'}"),  # fmt: skip
        ("working size", f"{height} x {width} px" + (
            "" if not info["feature_size"] else f", feature grid {info['feature_size'][0]} x {info['feature_size'][1]}")),
        ("features", f"d = {config.get('n_features')}"),
        ("trained on", "?" if info["n_images"] is None else f"{info['n_images']} good images"),
    ]  # fmt: skip
    stored = info["calibration"]
    if stored is None:
        rows.append(("threshold", "none: uncalibrated (run padim calibrate)"))
    else:
        calibration = Calibration(**stored)
        rate = calibration.false_alarm_rate
        flags = "" if rate is None else f"; flags {rate:.1%} of the good images it was set on"
        rows.append(("threshold", f"{calibration.threshold:.6g} ({calibration.describe()}{flags})"))
        rows.append(("pixel threshold", f"{calibration.region_threshold:.6g} ({calibration.describe_pixel()})"))
        rows.append(("normalised score", f"0 at {calibration.center:.6g} (median good score), 0.5 at the threshold"))
    aligned = info.get("alignment")
    rows.append(("alignment", "none: parts are expected where they were trained" if not aligned else
                 f"{aligned['motion']}: each image registered to a reference of the good images; trusted at "
                 f"confidence >= {aligned['threshold']:.4g}, shifts up to {aligned['max_shift']:.0%} of the side"
                 + (f", turns up to {aligned['max_angle']:g} deg" if aligned["motion"] == "rigid" else "")))  # fmt: skip
    big = [t for t in info["tensors"] if not t["name"].startswith("backbone.")]
    backbone = [t for t in info["tensors"] if t["name"].startswith("backbone.")]
    for t in big:
        rows.append(("tensor", f"{t['name']} {tuple(t['shape'])} {t['dtype']}, {_mib(t['bytes'])}"))
    if backbone:
        rows.append(("tensor", f"backbone: {len(backbone)} tensors, {_mib(sum(t['bytes'] for t in backbone))}"))
    rows.append(("file size", _mib(info["file_bytes"])))
    rows += [(name, info[key]) for name, key in (("this CPU", "cpu"), ("executor here", "executor")) if key in info]
    width_ = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width_)}  {value}" for name, value in rows)
