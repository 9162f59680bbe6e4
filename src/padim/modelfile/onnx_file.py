"""The metadata padim writes into an exported ``.onnx`` file, and its reader (no torch, no onnx package).

``padim export`` stores the working size, the calibration and the model's configuration as
``metadata_props`` strings (:func:`padim.model.export.model_metadata`); :func:`read_metadata`
reads them back from any ONNX reader's metadata map and refuses what a newer or foreign writer
left.
"""

from __future__ import annotations

import json
import os

from padim.align.reference import Reference
from padim.errors import ModelFileError
from padim.io.images import as_size
from padim.modelfile.padim_file import MAX_SIDE, MAX_WORKING_PIXELS, is_pair
from padim.scoring.calibration import Calibration

PathLike = str | os.PathLike

#: Version of the exported graph and metadata layout; readers refuse files newer than it.
#: 3: ``padim.alignment``, the reference images are registered to before the graph (an older reader
#: would skip it); 2: ``threshold`` and ``scale`` are graph inputs (0.1 wrote 1, with constants instead).
FORMAT_VERSION = 3


def read_metadata(props: dict[str, str], path: PathLike = "model") -> tuple[tuple[int, int], Calibration | None, dict]:
    """Image size, calibration and configuration from an exported model's ``metadata_props``.

    Raises:
        ModelFileError: if the keys are missing, malformed or from a newer format.
    """
    if "padim.format_version" not in props:
        raise ModelFileError(f"{path}: an ONNX model, but not one exported by padim (no padim metadata)")
    try:
        version = int(props["padim.format_version"])
        if version > FORMAT_VERSION:
            raise ModelFileError(
                f"{path}: exported in format {version} by a newer padim-toolkit; this one reads format "
                f"{FORMAT_VERSION} and older: upgrade padim-toolkit"
            )
        stored_size = json.loads(props["padim.image_size"])
        if not is_pair(stored_size, MAX_SIDE) or stored_size[0] * stored_size[1] > MAX_WORKING_PIXELS:
            raise ValueError(f"padim.image_size must be [height, width] of at most {MAX_WORKING_PIXELS:,} pixels")
        image_size = as_size(stored_size)
        stored = json.loads(props["padim.calibration"])
        if stored is not None and not isinstance(stored, dict):
            raise TypeError(f"padim.calibration is a {type(stored).__name__}")
        calibration = None if stored is None else Calibration(**stored)
        config = json.loads(props.get("padim.config", "{}"))
        if not isinstance(config, dict):
            raise TypeError(f"padim.config is a {type(config).__name__}")
    except (KeyError, TypeError, ValueError, RecursionError) as error:
        if isinstance(error, ModelFileError):
            raise
        raise ModelFileError(f"{path}: malformed padim metadata in the ONNX model ({error})") from None
    return image_size, calibration, config


def read_alignment(props: dict[str, str], path: PathLike = "model") -> Reference | None:
    """The alignment reference an exported model carries (``padim.alignment``), or None.

    Raises:
        ModelFileError: for a malformed record.
    """
    text = props.get("padim.alignment")
    if not text or text == "null":
        return None
    try:
        return Reference.from_dict(json.loads(text))
    except (ValueError, TypeError, RecursionError) as error:
        raise ModelFileError(f"{path}: malformed padim metadata in the ONNX model ({error})") from None
