"""padim-toolkit: PaDiM anomaly detection (Defard et al. 2020, https://arxiv.org/abs/2011.08785).

``import padim`` loads no torch: ``padim.Padim`` and ``padim.AnomalyMapGenerator`` are
imported on first use, so the ONNX path runs where torch is not installed.

onnxruntime's telemetry is turned off before onnxruntime is first imported (it otherwise writes a
database under ``~/.cache/Microsoft`` in every process that opens a session, and may send it);
set ``ORT_DISABLE_TELEMETRY=0`` in the environment to leave it on.
"""

from __future__ import annotations

import os

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from padim.version import __version__  # noqa: E402

__all__ = ["AnomalyMapGenerator", "Padim", "PadimError", "Prediction", "__version__", "open_model"]


def __getattr__(name: str):
    if name == "Padim":
        from padim.model.padim import Padim

        return Padim
    if name == "AnomalyMapGenerator":
        from padim.maps.anomaly_map import AnomalyMapGenerator

        return AnomalyMapGenerator
    if name == "Prediction":
        from padim.runtime.predictor import Prediction

        return Prediction
    if name == "open_model":
        from padim.runtime.opening import open_model

        return open_model
    if name == "PadimError":
        from padim.errors import PadimError

        return PadimError
    raise AttributeError(f"module 'padim' has no attribute {name!r}")
