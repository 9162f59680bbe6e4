"""What ``padim watch`` says while it runs: one status line, messages, and back pressure out loud.

The status line (``watch: 1234 judged (12 anomalous, 0 errors), 9.8 images/s, lag 0.05 s, 0 waiting``,
and frames skipped and verdicts spooled when there are any) is redrawn in place on a terminal every
:data:`REDRAW` seconds; off a terminal (a log, a service manager's journal) it is printed as a plain
line every :data:`padim.progress.LOG_INTERVAL` seconds when something changed. Messages (a file that
does not decode, a broker that is down) are printed on their own lines above it. When images wait
longer than :data:`LAG_WARNING` seconds, a warning gives the rates in and out, the lag and what
waits, at most every :data:`WARNING_INTERVAL` seconds.
"""

from __future__ import annotations

import collections
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from padim.outputs.rows import Row
from padim.progress import LOG_INTERVAL

#: Seconds between redraws of the status line on a terminal.
REDRAW = 0.5
#: An image waiting longer than this (seconds) means images arrive faster than they are judged.
LAG_WARNING = 2.0
#: Seconds between two back-pressure warnings.
WARNING_INTERVAL = 10.0
#: Seconds over which the rates are measured.
RATE_WINDOW = 10.0


class Rate:
    """Events per second over the last :data:`RATE_WINDOW` seconds, in one-second buckets (bounded memory)."""

    def __init__(self) -> None:
        self.buckets: collections.deque[list] = collections.deque()
        self.start = time.monotonic()

    def add(self, now: float, n: int = 1) -> None:
        second = int(now)
        if self.buckets and self.buckets[-1][0] == second:
            self.buckets[-1][1] += n
        else:
            self.buckets.append([second, n])
        self._trim(now)

    def per_second(self, now: float) -> float:
        self._trim(now)
        span = min(RATE_WINDOW, max(now - self.start, 1.0))
        return sum(n for _, n in self.buckets) / span

    def _trim(self, now: float) -> None:
        while self.buckets and self.buckets[0][0] <= now - RATE_WINDOW:
            self.buckets.popleft()


class Status:
    """Counts verdicts, prints the status line and messages on ``stream`` (stderr), warns about back pressure.

    Args:
        quiet: print nothing but messages (no status line, no warnings).
        gauges: returns ``waiting`` (images arrived, not judged), ``lag`` (seconds the oldest of them
            has waited), ``skipped`` (frames) and ``spooled`` (verdicts not delivered yet).
    """

    def __init__(self, quiet: bool = False, gauges: Callable[[], dict[str, Any]] | None = None, stream=None) -> None:
        self.quiet, self.stream = quiet, stream if stream is not None else sys.stderr
        self.gauges = gauges or (lambda: {"waiting": 0, "lag": 0.0, "skipped": 0, "spooled": 0})
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.judged = self.anomalous = self.errors = 0
        self.rate_in, self.rate_out = Rate(), Rate()
        self._lock = threading.Lock()
        self._drawn = False
        self._last_draw = self._last_warning = self._printed = 0.0
        self._last_counts: tuple = ()

    def counted(self, row: Row) -> None:
        """One verdict written."""
        with self._lock:
            self.judged += 1
            self.anomalous += row.label == "anomalous"
            self.errors += row.label == "error"
            self.rate_out.add(time.monotonic())

    def arrived(self, n: int = 1) -> None:
        with self._lock:
            self.rate_in.add(time.monotonic(), n)

    def line(self, gauges: dict[str, Any] | None = None) -> str:
        """The status line."""
        g = gauges or self.gauges()
        now = time.monotonic()
        with self._lock:
            text = (f"watch: {self.judged} judged ({self.anomalous} anomalous, {self.errors} errors), "
                    f"{self.rate_out.per_second(now):.1f} images/s, lag {g['lag']:.2f} s, {g['waiting']} waiting")  # fmt: skip
        if g.get("skipped"):
            text += f", {g['skipped']} frames skipped"
        if g.get("spooled"):
            text += f", {g['spooled']} verdicts spooled"
        return text

    def tick(self) -> None:
        """Redraw or print the status line when it is time; warn about back pressure."""
        if self.quiet:
            return
        now = time.monotonic()
        if now - self._last_draw < (REDRAW if self.tty else 1.0):
            return
        self._last_draw = now
        gauges = self.gauges()
        if gauges["lag"] > LAG_WARNING and gauges["waiting"] and now - self._last_warning >= WARNING_INTERVAL:
            self._last_warning = now
            kept = f"{gauges['skipped']} frames skipped" if gauges.get("skipped") else "none dropped"
            self.say(f"images arrive faster than they are judged: {self.rate_in.per_second(now):.1f} images/s in, "
                     f"{self.rate_out.per_second(now):.1f} judged, lag {gauges['lag']:.1f} s, {gauges['waiting']} "
                     f"waiting ({kept})")  # fmt: skip
        text = self.line(gauges)
        counts = (self.judged, gauges["waiting"], gauges.get("skipped"), gauges.get("spooled"))
        with self._lock:
            if self.tty:
                self.stream.write("\r\x1b[K" + text)
                self.stream.flush()
                self._drawn = True
            elif counts != self._last_counts and now - self._printed >= LOG_INTERVAL:
                self._printed, self._last_counts = now, counts
                print(text, file=self.stream, flush=True)

    def say(self, message: str) -> None:
        """One message line (``padim watch: ...``), above the status line."""
        with self._lock:
            if self._drawn:
                self.stream.write("\r\x1b[K")
                self._drawn = False
            print(f"padim watch: {message}", file=self.stream, flush=True)

    def close(self) -> None:
        """End the status line (the final counts are printed by the caller)."""
        with self._lock:
            if self._drawn:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
                self._drawn = False
