"""The model file: safetensors tensors plus JSON metadata, in one file that cannot run code.

Loading a pickle can execute arbitrary code (anomalib and PatchCore load models that way);
safetensors holds only a JSON header and raw tensor bytes. The metadata entry ``padim``
carries the format version and the configuration needed to rebuild the model. Writes are
atomic: a temporary file in the same folder, renamed into place.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from padim.files import atomic_path

FORMAT_VERSION = 1
_KEY = "padim"


class ModelFileError(ValueError):
    """A file that is not a readable padim model; the message names the file and why."""


def write_model_file(path: str | os.PathLike, tensors: dict, meta: dict) -> None:
    """Write tensors (name -> torch.Tensor) and metadata (JSON-serialisable dict) atomically."""
    from safetensors.torch import save_file

    header = json.dumps({"format_version": FORMAT_VERSION, **meta})
    tensors = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={_KEY: header})


def read_model_file(path: str | os.PathLike, device: str = "cpu") -> tuple[dict, dict]:
    """Read a model file written by :func:`write_model_file`.

    Returns:
        (tensors, meta): name -> torch.Tensor on ``device``, and the metadata dict.

    Raises:
        ModelFileError: for a missing, truncated, corrupt, foreign or newer-format file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = (handle.metadata() or {}).get(_KEY)
        if header is None:
            raise ModelFileError(f"{path}: a safetensors file, but not a padim model (no '{_KEY}' metadata)")
        meta = json.loads(header)
        version = int(meta.get("format_version", -1))
        if version > FORMAT_VERSION:
            raise ModelFileError(
                f"{path}: written in model format {version} by a newer padim-toolkit; this one reads "
                f"format {FORMAT_VERSION} and older: upgrade padim-toolkit"
            )
        if version < 1:
            raise ModelFileError(f"{path}: unknown model format version {meta.get('format_version')!r}")
        tensors = load_file(str(path), device=device)
    except ModelFileError:
        raise
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ModelFileError(f"{path}: not a padim model, or truncated or corrupt ({reason})") from None
    return tensors, meta
