"""The drift warning against a direct count over the last N verdicts."""

import numpy as np
import pytest

from padim.outputs.drift import RATE_FLOOR, DriftMonitor


@pytest.mark.parametrize("seed", range(3))
def test_warning_matches_a_direct_count(seed):
    rng = np.random.default_rng(seed)
    verdicts = rng.random(200) < np.r_[np.full(100, 0.02), np.full(100, 0.6)]  # the line drifts half-way
    monitor = DriftMonitor(0.04, window=25, factor=4.0)
    warnings = []
    for k, flagged in enumerate(verdicts):
        monitor.add(flagged)
        status = monitor.status()
        last = verdicts[max(0, k - 24) : k + 1]
        expected = len(last) == 25 and last.mean() > 0.16
        assert status["warning"] is bool(expected)
        assert status["flagged"] == last.sum() and status["seen"] == len(last)
        warnings.append(status["warning"])
    assert not any(warnings[:100]) and all(warnings[130:])


def test_limits_and_floor():
    assert DriftMonitor(None).expected_rate == RATE_FLOOR
    assert DriftMonitor(0.0, factor=5).limit == pytest.approx(0.05)
    assert DriftMonitor(0.5, factor=5).limit == 1.0  # can never warn: it already flags half the good parts
    for kwargs, match in (({"window": 0}, "window"), ({"factor": 1.0}, "factor")):
        with pytest.raises(ValueError, match=match):
            DriftMonitor(0.01, **kwargs)
