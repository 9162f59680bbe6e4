"""A ``.padim`` file memory-mapped: every tensor a read-only NumPy view, nothing read before it is used.

:func:`read_model_file` (:mod:`padim.modelfile.padim_file`) copies every tensor into memory
through the safetensors library. Opening a model to predict needs far less: the stored graph
(:data:`GRAPH_TENSOR`, written at save by :func:`padim.model.files.save`), the means and the packed
precision factors. :func:`map_model_file` parses the safetensors header itself (8 bytes of
length, then JSON), checks the metadata and the shapes as the full reader does, and gives each
tensor as a view of the mapped file: the operating system reads the pages the predictor touches,
once, and shares them between processes. :func:`verify` computes the same SHA-256 as
:func:`padim.modelfile.padim_file.tensor_digest` over the mapped bytes (hashlib releases the GIL:
it can run in a thread beside the executor's start-up).
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from padim.errors import ModelFileError
from padim.modelfile.padim_file import check_shapes, parse_metadata, tensor_digest

#: The tensor that holds the traced inference graph's ONNX bytes (uint8), and its metadata entry.
GRAPH_TENSOR = "onnx_graph"
#: safetensors dtype names -> NumPy dtypes (those padim writes).
DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32,
          "U8": np.uint8, "I8": np.int8, "BOOL": np.bool_}  # fmt: skip
#: A header longer than this is not one padim wrote (its headers are a few hundred kB).
MAX_HEADER_BYTES = 100 * 2**20


@dataclass
class MappedModel:
    """A mapped ``.padim`` file.

    Attributes:
        path: the file.
        tensors: name -> read-only NumPy view of the mapped bytes.
        meta: the checked ``padim`` metadata (:func:`padim.modelfile.padim_file.check_metadata`).
        mapping: the file's memory map (the views need it alive; :class:`MappedModel` keeps it).
    """

    path: Path
    tensors: dict[str, np.ndarray]
    meta: dict
    mapping: Any

    @property
    def graph(self) -> bytes | None:
        """The stored inference graph's ONNX bytes, or None for a file written without one."""
        stored = self.tensors.get(GRAPH_TENSOR)
        return None if stored is None or not isinstance(self.meta.get("graph"), dict) else stored.tobytes()

    def verify(self) -> None:
        """Check the tensors against the SHA-256 stored at save (files without one pass unverified).

        Raises:
            ModelFileError: when they differ (a damaged copy or a flipped bit).
        """
        if "tensor_sha256" in self.meta and tensor_digest(self.tensors) != self.meta["tensor_sha256"]:
            raise ModelFileError(
                f"{self.path}: the tensor data does not match the checksum stored at save (a damaged copy or a "
                f"flipped bit): copy the model file again"
            )


def read_header(path: Path) -> tuple[dict, int]:
    """A safetensors file's JSON header and the offset where its data starts.

    Raises:
        ModelFileError: for a file too short or with a malformed header.
    """
    try:
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise ValueError("shorter than a safetensors header")
            (length,) = struct.unpack("<Q", prefix)
            if length > min(MAX_HEADER_BYTES, path.stat().st_size - 8):
                raise ValueError(f"header length {length} does not fit the file")
            header = json.loads(handle.read(length))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as error:
        raise ModelFileError(f"{path}: not a padim model, or truncated or corrupt ({error})") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{path}: not a padim model (malformed safetensors header)")
    return header, 8 + length


def map_model_file(path: str | os.PathLike) -> MappedModel:
    """Map a ``.padim`` file: header, metadata and shapes checked; tensors as views, not read yet.

    Raises:
        ModelFileError: for a missing, truncated, foreign or inconsistent file.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    header, start = read_header(path)
    stored = header.pop("__metadata__", None)
    meta = parse_metadata(stored.get("padim") if isinstance(stored, dict) else None, path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    tensors = {}
    try:
        for name, entry in header.items():
            dtype = np.dtype(DTYPES[entry["dtype"]])
            begin, end = (int(v) for v in entry["data_offsets"])
            shape = tuple(int(v) for v in entry["shape"])
            count = int(np.prod(shape, dtype=np.int64))
            if not (0 <= begin <= end and start + end <= size and end - begin == count * dtype.itemsize):
                raise ValueError(f"tensor {name!r} does not fit the file")
            tensors[name] = np.frombuffer(mapping, dtype, count, start + begin).reshape(shape)
    except (KeyError, TypeError, ValueError) as error:
        raise ModelFileError(f"{path}: not a padim model, or truncated or corrupt ({error})") from None
    check_shapes({name: array.shape for name, array in tensors.items()}, meta, path)
    graph = meta.get("graph")
    if graph is not None and (GRAPH_TENSOR not in tensors or tensors[GRAPH_TENSOR].dtype != np.uint8):
        raise ModelFileError(f"{path}: inconsistent padim model file (graph metadata without a uint8 {GRAPH_TENSOR})")
    return MappedModel(path, tensors, meta, mapping)
