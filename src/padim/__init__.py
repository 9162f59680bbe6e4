"""padim-toolkit: PaDiM anomaly detection (Defard et al. 2020, https://arxiv.org/abs/2011.08785).

``import padim`` loads nothing heavy: :func:`open_model` and :class:`Prediction` need only the
runtime install (NumPy, Pillow, onnxruntime); :class:`Padim` and :class:`AnomalyMapGenerator`
need the training extra (torch) and are imported on first use through :func:`padim.extras.load`,
which says in one line what to install when it is missing. The package's layers are described
in ``docs/architecture.md``.

onnxruntime's telemetry is turned off before onnxruntime is first imported (it otherwise writes a
database under ``~/.cache/Microsoft`` in every process that opens a session, and may send it);
set ``ORT_DISABLE_TELEMETRY=0`` in the environment to leave it on.
"""

from __future__ import annotations

import os

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from padim.version import __version__  # noqa: E402

__all__ = ["AnomalyMapGenerator", "Padim", "PadimError", "Prediction", "__version__", "open_model"]

#: The training layer's public names, reached through padim.extras (torch is an extra).
_TRAINING = {"Padim": "padim.model.padim:Padim", "AnomalyMapGenerator": "padim.maps.anomaly_map:AnomalyMapGenerator"}


def __getattr__(name: str):
    if name in _TRAINING:
        from padim.extras import load

        return load(_TRAINING[name], "train", f"padim.{name}")
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
