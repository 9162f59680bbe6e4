"""A drift warning: far more images flagged than the calibration expects on good parts.

A model is calibrated on good images: at its threshold it flags a known share of them, its
false-alarm rate (:attr:`padim.scoring.calibration.Calibration.false_alarm_rate`, about 1 - quantile). On
a line where nearly every part is good, the share of DEFECT verdicts should stay near that
rate. When it is far above it over the last N images, either many parts really are bad, or
the images changed: a camera moved by 30 px made 20 of 20 good bottle images anomalous. The
service cannot tell the two apart, so it says both, and asks for a look at the setup before
anyone trusts the verdicts. PaDiM (Defard et al. 2020, https://arxiv.org/abs/2011.08785) models
each patch position separately, which is why a shifted picture looks anomalous everywhere.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

#: The expected false-alarm rate is taken as at least this: a threshold above every good
#: calibration image (rate 0) must not make a single DEFECT a warning.
RATE_FLOOR = 0.01


class DriftMonitor:
    """Watches the share of DEFECT verdicts over the last ``window`` images.

    Args:
        expected_rate: the calibration's false-alarm rate on good images, or None (unknown:
            :data:`RATE_FLOOR` is used).
        window: N, the number of latest verdicts the rate is taken over (>= 1). A warning is
            given only once N verdicts have been seen.
        factor: warn when the share flagged exceeds ``factor`` times the expected rate (> 1).

    >>> monitor = DriftMonitor(0.05, window=4, factor=3.0)
    >>> for flagged in (True, False, True, True):
    ...     monitor.add(flagged)
    >>> monitor.status()["warning"], monitor.status()["limit"]
    (True, 0.15)
    """

    def __init__(self, expected_rate: float | None, window: int = 20, factor: float = 5.0) -> None:
        if not (isinstance(window, int) and window >= 1):
            raise ValueError(f"drift window must be an int >= 1, got {window!r}")
        if not (isinstance(factor, (int, float)) and factor > 1):
            raise ValueError(f"drift factor must be a number > 1, got {factor!r}")
        self.expected_rate = max(RATE_FLOOR, RATE_FLOOR if expected_rate is None else float(expected_rate))
        self.window, self.factor = window, float(factor)
        self._recent: deque[bool] = deque(maxlen=window)
        self._lock = threading.Lock()

    @property
    def limit(self) -> float:
        """The share of flagged images above which the monitor warns."""
        return round(min(1.0, self.factor * self.expected_rate), 6)

    def add(self, flagged: bool) -> None:
        """Record one verdict: True for DEFECT."""
        with self._lock:
            self._recent.append(bool(flagged))

    def status(self) -> dict[str, Any]:
        """``{warning, message, flagged, seen, window, rate, expected_rate, limit}`` (JSON-ready)."""
        with self._lock:
            seen, flagged = len(self._recent), sum(self._recent)
        rate = flagged / seen if seen else None
        warning = seen == self.window and rate > self.limit
        message = None
        if warning:
            message = (
                f"{flagged} of the last {seen} images were flagged as DEFECT ({rate:.0%}); on good parts "
                f"this model flags about {self.expected_rate:.0%}. If most of these parts are good, the camera, "
                "lighting or product has probably changed: check the setup before trusting the verdicts."
            )
        return dict(
            warning=bool(warning),
            message=message,
            flagged=flagged,
            seen=seen,
            window=self.window,
            rate=rate,
            expected_rate=self.expected_rate,
            limit=self.limit,
        )
