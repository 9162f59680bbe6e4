"""padim-toolkit: PaDiM anomaly detection (Defard et al. 2020, https://arxiv.org/abs/2011.08785).

``import padim`` loads no torch: ``padim.Padim`` and ``padim.AnomalyMapGenerator`` are
imported on first use, so the ONNX path runs where torch is not installed.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["AnomalyMapGenerator", "Padim", "Prediction", "__version__"]


def __getattr__(name: str):
    if name == "Padim":
        from padim.model import Padim

        return Padim
    if name == "AnomalyMapGenerator":
        from padim.anomaly_map import AnomalyMapGenerator

        return AnomalyMapGenerator
    if name == "Prediction":
        from padim.runtime import Prediction

        return Prediction
    raise AttributeError(f"module 'padim' has no attribute {name!r}")
