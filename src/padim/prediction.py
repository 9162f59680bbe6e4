"""What a prediction returns, shared by the PyTorch and ONNX paths (NumPy only)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from padim.calibration import Calibration


@dataclass
class Prediction:
    """Per-image results of a batch of N images at the model's image size (H, W).

    Attributes:
        anomaly_map: (N, H, W) float32 raw map (Mahalanobis distances, up-sampled and blurred).
        score: (N,) float32 image scores, the maximum of each map; higher is more anomalous.
        normalized_score: (N,) in [0, 1], 0.5 at the threshold; None for an uncalibrated model.
        label: (N,) bool, True = anomalous; None for an uncalibrated model.
        region: (N, H, W) bool predicted defect region (map >= threshold); None when uncalibrated.
    """

    anomaly_map: np.ndarray
    score: np.ndarray
    normalized_score: np.ndarray | None = None
    label: np.ndarray | None = None
    region: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.score)


def make_prediction(anomaly_map: np.ndarray, calibration: Calibration | None) -> Prediction:
    """Scores, normalised scores, labels and regions from (N, H, W) maps.

    >>> p = make_prediction(np.array([[[1.0, 3.0]], [[0.0, 1.0]]]), Calibration(threshold=2.0, center=1.0))
    >>> p.score.tolist(), p.label.tolist(), p.normalized_score.tolist()
    ([3.0, 1.0], [True, False], [1.0, 0.0])
    """
    anomaly_map = np.asarray(anomaly_map, dtype=np.float32)
    score = anomaly_map.reshape(len(anomaly_map), -1).max(axis=1)
    if calibration is None:
        return Prediction(anomaly_map, score)
    return Prediction(
        anomaly_map,
        score,
        calibration.normalize(score).astype(np.float32),
        calibration.label(score),
        calibration.label(anomaly_map),
    )
