"""``padim watch`` as one function: a source, a model, an output folder, and the machines to tell.

:func:`watch` checks the options, takes the output folder for itself (a lock: one watcher per
folder), reads back what was judged (:class:`padim.jobs.watch.journal.Journal`), starts the deliveries
of the spool (:mod:`padim.outputs.delivery`) and the source, and runs the judging loop
(:class:`padim.jobs.watch.judge.Judge`) until ``stop`` is set (a signal) or a finite source is done.
It then finishes the images in hand, gives the destinations a few seconds to take what is spooled
(what they do not take waits in the spool for the next run) and returns a :class:`WatchSummary`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from padim.errors import OptionError, OutputError
from padim.jobs.watch.arrivals import ArrivalQueue
from padim.jobs.watch.folder import FolderSource
from padim.jobs.watch.journal import Journal
from padim.jobs.watch.judge import Judge
from padim.jobs.watch.sources import Source, StdinSource, source_kind
from padim.jobs.watch.status import Status
from padim.machine import default_workers
from padim.modelfile.info import file_sha256
from padim.options import check
from padim.outputs.delivery import Delivery
from padim.outputs.mqtt import MqttSender, MqttTarget, parse_mqtt_url
from padim.outputs.spool import Spool
from padim.outputs.webhook import WebhookSender, parse_webhook_url

try:
    import fcntl
except ImportError:  # Windows: no lock; one watcher per output folder is then the user's care
    fcntl = None

#: Seconds the destinations get at the end to take what is spooled (when they are up).
DELIVERY_GRACE = 5.0
#: Frames queued at most, whatever ``queue_size`` says: a live camera's frames should be fresh, and are large.
FRAME_QUEUE = 16


@dataclass
class WatchSummary:
    """What :func:`watch` did: rows written, frames skipped, verdicts left in the spool, and why it ended."""

    csv_path: Path
    judged: int = 0
    anomalous: int = 0
    errors: int = 0
    skipped: int = 0
    recovered: int = 0
    undelivered: dict[str, int] = field(default_factory=dict)
    stopped: bool = False
    seconds: float = 0.0


def check_options(kind: str, source: str, *, move_to: Path | None, fps: float | None, poll: float | None,
                  recursive: bool, output: Path | None = None) -> None:  # fmt: skip
    """Refuse options that do not apply to this kind of source, in one line naming the option.

    Raises:
        OptionError: naming the option and SOURCE.
    """
    frames = kind in ("video", "camera", "stream")
    if move_to is not None and frames:
        raise OptionError(f"--move-to moves judged files; {source} gives video frames (their overlays are kept)")
    if fps is not None and not frames:
        raise OptionError(f"--fps samples the frames of a video, camera or stream; {source} is a {kind} of files")
    for name, value in (("--poll", poll), ("--recursive", recursive or None)):
        if value is not None and kind != "folder":
            raise OptionError(f"{name} applies to a watched folder; {source} is a {kind}")
    if move_to is not None and kind == "folder" and os.path.abspath(move_to) == os.path.abspath(source):
        raise OptionError(f"--move-to {move_to}: the watched folder itself; give another folder")
    inside = kind == "folder" and output is not None and Path(os.path.abspath(output)) in (
        Path(os.path.abspath(source)), *Path(os.path.abspath(source)).parents)  # fmt: skip
    if inside:
        raise OptionError(f"-o {output}: the watched folder {source} is inside it (its files would be left out); "
                          "give another output folder")  # fmt: skip


def watch(predictor: Any, source: str, output: str | os.PathLike, *, model: str = "", webhook: str | None = None,
          mqtt: str | None = None, move_to: str | os.PathLike | None = None, recursive: bool = False,
          fps: float | None = None, poll: float | None = None, settle: float = 1.0, queue_size: int = 64,
          overlays: str = "anomalous", overlay_format: str = "jpeg", batch_size: int = 16, workers: int | None = None,
          quiet: bool = False, stop: threading.Event | None = None, stdin: IO[str] | None = None) -> WatchSummary:  # fmt: skip
    """Judge the images SOURCE brings as they arrive; rows in ``output/predictions.csv``, messages to the destinations.

    Args:
        predictor: a :class:`padim.runtime.predictor.Predictor`; model: its file (for the messages).
        source: a folder, a video file, a camera index, a stream URL, or ``-`` (paths on ``stdin``).
        output: the output folder (``predictions.csv``, ``overlays/``, ``.watch/``: the lock and the spool).
        webhook, mqtt: URLs of the destinations (:func:`padim.outputs.webhook.parse_webhook_url`,
            :func:`padim.outputs.mqtt.parse_mqtt_url`).
        move_to: move each judged file into ``move_to/good``, ``/anomalous`` or ``/error``.
        recursive, poll, settle: the folder's (:class:`padim.jobs.watch.folder.FolderSource`).
        fps: frames per second of a video, camera or stream (None: all).
        queue_size: images queued at most (then files wait in their folder, live frames are skipped).
        overlays, overlay_format: as ``padim predict``; batch_size, workers: the model's batch, the threads.
        quiet: no status line; stop: set it to stop (the images in hand are finished first).

    Raises:
        OptionError, DataError: for options or a SOURCE that do not fit, before anything runs.
        OutputError: when the output folder is another watcher's, or cannot be written.
    """
    for name, value in (("fps", fps), ("poll", poll), ("settle", settle), ("queue_size", queue_size),
                        ("batch_size", batch_size), ("workers", workers)):  # fmt: skip
        check(name, value)  # the option table's bounds, as on the command line
    kind = source_kind(source)
    move_to, output, stop = None if move_to is None else Path(move_to), Path(output), stop or threading.Event()
    check_options(kind, source, move_to=move_to, fps=fps, poll=poll, recursive=recursive, output=output)
    if move_to is not None and predictor.calibration is None:
        raise OptionError("--move-to sorts the files by verdict, and this model has no threshold: give --threshold T")
    targets = ([parse_webhook_url(webhook)] if webhook else []) + ([parse_mqtt_url(mqtt)] if mqtt else [])
    names = ["webhook"] * bool(webhook) + ["mqtt"] * bool(mqtt)
    if kind in ("video", "camera", "stream"):  # frames are large: a few of them wait at most
        queue_size = min(queue_size, FRAME_QUEUE)
    with _exclusive(output / ".watch"), contextlib.ExitStack() as closing:
        spool = Spool(output / ".watch" / "spool", names) if targets else None
        if spool is not None:
            closing.callback(spool.close)
        journal = Journal(output, spool)
        closing.callback(journal.close)
        deliveries: list[Delivery] = []
        holder: dict[str, Any] = {}
        status = Status(quiet, gauges=lambda: _gauges(holder["queue"], holder["source"], deliveries))
        closing.callback(status.close)
        say = status.say
        if journal.recovered:
            say(f"the last verdict of the run before had no row in {journal.path}; added it from the spool")
        for name, count in (spool.stranded() if spool else {}).items():
            say(f"{count} verdicts wait in the spool for {name} (no --{name} this time); kept for a run with it")
        holder["source"] = src = _source(kind, source, journal, output, move_to, recursive, poll, settle, fps, stdin,
                                         say)  # fmt: skip
        src.on_arrival = status.arrived
        holder["queue"] = queue = ArrivalQueue(queue_size)
        for target in targets:
            sender = MqttSender(target, f"padim-watch-{os.getpid()}") if isinstance(target, MqttTarget) else (
                WebhookSender(target))  # fmt: skip
            deliveries.append(Delivery(spool, sender, say).start())
            closing.callback(deliveries[-1].close, DELIVERY_GRACE)  # closed first: before the spool
        judge = Judge(predictor, output, journal, src, queue, status, overlays=overlays, overlay_format=overlay_format,
                      batch_size=batch_size, workers=default_workers() if workers is None else workers, model=model,
                      model_sha256=_sha256(model), messages=bool(targets))  # fmt: skip
        judge.warm_up()
        start = time.monotonic()
        src.start(queue)
        closing.callback(src.stop)  # stopped first of all
        if not quiet:
            sent = "".join(f"; verdicts to {target.where}" for target in targets)
            say(f"watching {source} ({src.describe}); rows in {journal.path}{sent}")
        judge.run(stop)
    return WatchSummary(journal.path, status.judged, status.anomalous, status.errors, src.skipped, journal.recovered,
                        {d.sender.name: d.waiting for d in deliveries if d.waiting}, stop.is_set(),
                        time.monotonic() - start)  # fmt: skip


def _source(kind, source, journal, output, move_to, recursive, poll, settle, fps, stdin, say) -> Source:
    if kind == "folder":
        return FolderSource(Path(source), journal, recursive=recursive, poll=poll, settle=settle, say=say,
                            exclude=[output] + ([move_to] if move_to is not None else []), move_to=move_to)  # fmt: skip
    if kind == "stdin":
        return StdinSource(stdin if stdin is not None else sys.stdin, journal, move_to, say)
    from padim.jobs.watch.video import VideoSource

    return VideoSource(source, kind, journal, fps=fps, say=say)


def _gauges(queue: ArrivalQueue, source: Source, deliveries: list[Delivery]) -> dict[str, Any]:
    """The status line's numbers: images waiting, the oldest one's wait, frames skipped, verdicts spooled."""
    now = time.monotonic()
    (queued, oldest), (held, first) = queue.waiting(), source.backlog()
    starts = [t for t in (oldest, first) if t is not None]
    return {"waiting": queued + held, "lag": now - min(starts) if starts else 0.0, "skipped": source.skipped,
            "spooled": sum(d.waiting for d in deliveries)}  # fmt: skip


def _sha256(model: str) -> str | None:
    try:
        return file_sha256(model) if model and Path(model).is_file() else None
    except OSError:
        return None


@contextlib.contextmanager
def _exclusive(state: Path) -> Iterator[None]:
    """Hold ``state/lock`` (created with its folder): one watcher per output folder; released even by SIGKILL."""
    try:
        state.mkdir(parents=True, exist_ok=True)
        handle = open(state / "lock", "a+", encoding="utf-8")
    except OSError as error:
        raise OutputError(f"{state.parent}: cannot write the output folder ({error.strerror or error})") from None
    with handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                raise OutputError(f"{state.parent}: another padim watch (process {handle.read().strip() or '?'}) "
                                  "writes here; give another output folder (-o)") from None  # fmt: skip
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
