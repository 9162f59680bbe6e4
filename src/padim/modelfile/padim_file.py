"""The model file: safetensors tensors plus JSON metadata, in one file that cannot run code.

Loading a pickle can execute arbitrary code (anomalib and PatchCore load models that way);
safetensors holds only a JSON header and raw tensor bytes. The metadata entry ``padim``
carries the format version and the configuration needed to rebuild the model; the file also
holds the backbone weights the model uses, so it loads on a machine without torchvision's
cache. Writes are atomic: a temporary file in the same folder, renamed into place.

Tensors: ``mean`` (P, D) float32, ``precision_cholesky_packed`` (P, D(D+1)/2) float16, the
upper triangles of the precisions' factors C (precision = C C^T), row by row
(:func:`padim.stats.gaussian.pack_triangular`): a quarter of the float32 factors' bytes, and maps
within about 1e-4 of the map maximum of theirs (``benchmarks/native_resolution.py``);
``channel_idx`` (D,) int64; ``backbone.<name>`` for each weight of the cut backbone. The
metadata holds the working size, the Gaussian grid's stride, the tile size, the
``backbone_dtype`` and, for an int8 backbone, the ``quantization`` record
(:class:`padim.graph.quantize.Quantization`: the calibrated activation ranges), from which the same
int8 graph is rebuilt without the training images; an older reader refuses the file rather
than run Gaussians fitted on int8 features with a float32 backbone.

A model fitted with ``keep_stats`` (``padim fit --keep-stats``) also holds its mergeable
statistics, so that :mod:`padim.model.incremental` can add good images to it: ``stats_mean`` (P, D)
float64, ``stats_m2`` (P, D(D+1)/2) in the fit's ``stats_dtype`` (float32 by default: twice
the bytes of the float16 factors), and in the metadata ``stats_count`` and ``holdout_paths``
(the absolute paths of the images that set the threshold). Readers that predate them ignore them.

Before a tensor is read, the metadata is checked against a schema (:func:`check_metadata`: each
key's type and range, the working size under the pixel cap) and the tensors' shapes in the header
against it (:func:`check_shapes`); at load the statistics must be finite and the feature grid must
be the one the backbone gives at the working size and stride. ``tensor_sha256``, stored at save,
is the SHA-256 of every tensor's name, dtype, shape and bytes (:func:`tensor_digest`), verified at
load, so a flipped bit is a clear error rather than a wrong score. It costs one pass over the
tensors in memory (no extra reading): SHA-256 ran at 0.3 GB/s on a loaded 2-core machine with
SHA instructions (about 3 s more to load a 1 GB model; CRC-32 was only 2.3 times faster and would
miss far more multi-bit damage). Files without it (written before it was added) load unverified.

Older formats are read, with a float32 backbone: format 2 stored ``precision_cholesky``
(P, D, D) float32, format 1 (padim-toolkit 0.1) the ``precision`` itself; their factors are
kept in float32 when loaded.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from padim.align.reference import Reference
from padim.errors import ModelFileError, OutputError
from padim.io.files import atomic_path
from padim.options import MAX_SIDE, OPTIONS
from padim.scoring.calibration import Calibration

#: 4: ``align`` and its ``alignment`` record (older readers would run such a model without registering
#: its images, so they must refuse it); 3: packed float16 factors, grid stride, tiles, int8.
FORMAT_VERSION = 4
_KEY = "padim"
#: Constructor arguments of :class:`padim.model.padim.Padim` stored in the metadata.
PARAMS = ("backbone", "layers", "n_features", "image_size", "seed", "eps", "sigma", "holdout", "quantile", "pretrained")
#: Parameters added in formats 3 and 4, with the values that describe models of older formats.
NEW_PARAMS = {"grid_stride": None, "tile_size": 0, "align": "none"}
#: The largest working size stored in a model file, in pixels (height x width) and per side.
MAX_WORKING_PIXELS = 100_000_000


def _is_int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def is_pair(value: Any, high: int) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(_is_int(v, 1, high) for v in value)


def _table(name: str) -> tuple:
    """A schema entry from the option table: the stored setting accepts what the option accepts."""
    option = OPTIONS[name]
    return option.accepts, option.expected(none=False) + (" or null" if option.nullable else "")


#: key -> (test, what it must be); keys older formats lack are filled in before the check. The
#: model's settings are checked against the option table (:mod:`padim.options`), as the command
#: line and the Python API check them.
SCHEMA = {
    "backbone": _table("backbone"),
    "layers": (
        lambda v: isinstance(v, list) and 0 < len(v) < 10 and all(isinstance(x, str) for x in v),
        "a list of layer names",
    ),
    "n_features": _table("n_features"),
    "image_size": (
        lambda v: is_pair(v, MAX_SIDE) and v[0] * v[1] <= MAX_WORKING_PIXELS,
        f"[height, width] of at most {MAX_WORKING_PIXELS:,} pixels",
    ),
    "feature_size": (lambda v: is_pair(v, MAX_SIDE), "[height, width] of the feature grid"),
    **{
        name: _table(name)
        for name in ("seed", "eps", "sigma", "holdout", "quantile", "grid_stride", "tile_size", "backbone_dtype")
    },  # fmt: skip
    "pretrained": (lambda v: isinstance(v, bool), "true or false"),
    "n_images": (lambda v: _is_int(v, 0, 2**53), "an int >= 0"),
    "calibration": (lambda v: v is None or isinstance(v, dict), "null or an object"),
    "tensor_sha256": (lambda v: isinstance(v, str) and len(v) == 64, "64 hex digits"),
}


def check_metadata(meta: Any, path: str | os.PathLike) -> dict:
    """Check the ``padim`` metadata against :data:`SCHEMA`; return it with older formats' keys filled in.

    Pure Python, before any tensor is read: a file whose metadata is null, a list, a string where a
    number belongs, a non-finite threshold or a working size of 100000x100000 is refused here.

    Raises:
        ModelFileError: naming the file and the first key that does not fit.
    """
    if not isinstance(meta, dict):
        raise ModelFileError(f"{path}: malformed padim metadata (a {type(meta).__name__}, not an object)")
    version = meta.get("format_version")
    if not _is_int(version, 1, 2**31):
        raise ModelFileError(f"{path}: unknown model format version {version!r}")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: written in model format {version} by a newer padim-toolkit; this one reads "
            f"format {FORMAT_VERSION} and older: upgrade padim-toolkit"
        )
    meta = {"backbone_dtype": "float32", **NEW_PARAMS, **meta}
    if isinstance(meta.get("image_size"), int) and not isinstance(meta["image_size"], bool):
        meta["image_size"] = [meta["image_size"]] * 2  # format 1 stored a square size as one int
    for key, (test, expected) in SCHEMA.items():
        if key == "tensor_sha256" and key not in meta:
            continue  # written before checksums: loads unverified
        if key not in meta:
            raise ModelFileError(f"{path}: inconsistent padim model file (metadata {key!r} is missing)")
        if not test(meta[key]):
            raise ModelFileError(
                f"{path}: inconsistent padim model file ({key} must be {expected}, got {meta[key]!r:.80})"
            )
    if meta["calibration"] is not None:
        try:
            Calibration(**meta["calibration"])
        except (TypeError, ValueError) as error:
            raise ModelFileError(f"{path}: inconsistent padim model file (calibration: {error})") from None
    if "stats_count" in meta and not _is_int(meta["stats_count"], 2, 2**53):
        raise ModelFileError(f"{path}: inconsistent padim model file (stats_count must be an int >= 2)")
    paths = meta.get("holdout_paths", [])
    if not (isinstance(paths, list) and all(isinstance(q, str) for q in paths)):
        raise ModelFileError(f"{path}: inconsistent padim model file (holdout_paths must be a list of paths)")
    graph = meta.get("graph")  # the traced inference graph, when the file holds it (padim.modelfile.mapped)
    if graph is not None and not (isinstance(graph, dict) and graph.get("factors") in ("float32", "float16")):
        raise ModelFileError(f"{path}: inconsistent padim model file (graph must record its factors' dtype)")
    if meta.get("alignment") is not None or meta["align"] != "none":
        try:
            if (meta["align"] == "none") != (meta.get("alignment") is None):
                raise ValueError(
                    f"align {meta['align']!r} with{'out' * (meta.get('alignment') is None)} an alignment record"
                )
            Reference.from_dict(meta["alignment"])
        except (TypeError, ValueError) as error:
            raise ModelFileError(f"{path}: inconsistent padim model file ({error})") from None
    if (meta["backbone_dtype"] == "int8") != isinstance(meta.get("quantization"), dict):
        raise ModelFileError(f"{path}: inconsistent padim model file (backbone_dtype {meta['backbone_dtype']!r} "
                             f"with{'out' * ('quantization' not in meta)} int8 ranges)")  # fmt: skip
    return meta


def check_shapes(shapes: dict[str, tuple], meta: dict, path: str | os.PathLike) -> None:
    """Check the Gaussians' shapes in the file's header against the metadata, before they are read.

    Raises:
        ModelFileError: naming the file and the tensor.
    """
    p, d = math.prod(meta["feature_size"]), meta["n_features"]
    if meta["format_version"] >= 3:
        expected = {"mean": (p, d), "precision_cholesky_packed": (p, d * (d + 1) // 2), "channel_idx": (d,)}
    else:
        name = "precision" if meta["format_version"] == 1 else "precision_cholesky"
        expected = {"mean": (p, d), name: (p, d, d), "channel_idx": (d,)}
    if "stats_mean" in shapes or "stats_m2" in shapes or "stats_count" in meta:  # fit --keep-stats
        expected.update(stats_mean=(p, d), stats_m2=(p, d * (d + 1) // 2))
        if "stats_count" not in meta:
            raise ModelFileError(f"{path}: inconsistent padim model file (statistics without stats_count)")
    for name, shape in expected.items():
        if name not in shapes:
            raise ModelFileError(f"{path}: inconsistent padim model file (tensor {name!r} is missing)")
        if tuple(shapes[name]) != shape:
            raise ModelFileError(
                f"{path}: inconsistent padim model file (tensor {name!r} has shape {tuple(shapes[name])}, "
                f"expected {shape} from feature_size {meta['feature_size']} and n_features {d})"
            )


def tensor_digest(tensors: dict) -> str:
    """SHA-256 over each tensor's name, dtype, shape and bytes, in name order (64 hex digits).

    Tensors are NumPy arrays (or anything ``np.asarray`` takes, torch CPU tensors included): the
    digest of a file is the same whichever library wrote or reads it.
    """
    digest = hashlib.sha256()
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        digest.update(f"{name}|{array.dtype.name}|{tuple(array.shape)}|".encode())
        if array.size:
            digest.update(array.reshape(-1).view(np.uint8))
    return digest.hexdigest()


def parse_metadata(text: Any, path: str | os.PathLike) -> dict:
    """The ``padim`` metadata string parsed (JSON, any depth refused cleanly) and checked.

    Raises:
        ModelFileError: for text that is not JSON or metadata that does not fit :data:`SCHEMA`.
    """
    if not isinstance(text, str):
        raise ModelFileError(f"{path}: a safetensors file, but not a padim model (no '{_KEY}' metadata)")
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError) as error:
        reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)
        raise ModelFileError(f"{path}: malformed padim metadata ({reason})") from None
    return check_metadata(meta, path)


def write_model_file(path: str | os.PathLike, tensors: dict, meta: dict) -> None:
    """Write tensors (name -> NumPy array) and metadata (a JSON-serialisable dict) atomically."""
    from safetensors import SafetensorError
    from safetensors.numpy import save_file

    tensors = {name: np.ascontiguousarray(array) for name, array in tensors.items()}
    header = json.dumps({"format_version": FORMAT_VERSION, **meta, "tensor_sha256": tensor_digest(tensors)})
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata={_KEY: header})
        except SafetensorError as error:  # an OSError inside (a full disk) comes out as this
            reason = "no space left on the device" if "StorageFull" in str(error) or "code: 28" in str(error) else error
            raise OutputError(f"{path}: cannot write ({reason}); nothing was changed") from None


def read_model_file(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """Read a model file written by :func:`write_model_file`; no torch, and no code from the file runs.

    Returns:
        (tensors, meta): name -> NumPy array, and the checked metadata (:func:`check_metadata`).

    Raises:
        ModelFileError: for a missing, truncated, corrupt, foreign or newer-format file, or one
            whose tensors do not match the checksum stored at save.
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    try:
        with safe_open(str(path), framework="np") as handle:
            header = (handle.metadata() or {}).get(_KEY)
            if header is None:
                raise ModelFileError(f"{path}: a safetensors file, but not a padim model (no '{_KEY}' metadata)")
            meta = parse_metadata(header, path)
            check_shapes({name: handle.get_slice(name).get_shape() for name in handle.keys()}, meta, path)
        tensors = load_file(str(path))
    except ModelFileError:
        raise
    except (SafetensorError, OSError, ValueError, TypeError, RecursionError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ModelFileError(f"{path}: not a padim model, or truncated or corrupt ({reason})") from None
    if "tensor_sha256" in meta and tensor_digest(tensors) != meta["tensor_sha256"]:
        raise ModelFileError(
            f"{path}: the tensor data does not match the checksum stored at save (a damaged copy or a flipped "
            f"bit): copy the model file again"
        )
    return tensors, meta
