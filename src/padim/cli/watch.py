"""``padim watch``: check the arguments, open the model, judge until a signal (:func:`padim.jobs.watch.watch`).

Everything that needs no model is checked first (the URLs, SOURCE, options that do not fit it, the
output folders), so a mistake is one line, exit 2, before a model takes seconds to open. SIGTERM
and Ctrl-C ask the watcher to stop: the image in hand is finished, its row written, and the
command exits 0; a second one stops at once.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from padim.cli.run import EXIT_NO_VERDICT, _opened
from padim.errors import ModelFileError
from padim.extras import require
from padim.io.files import check_output_folder
from padim.io.loading import default_batch_size


def watch(args: argparse.Namespace) -> int:
    """``padim watch MODEL SOURCE -o OUTDIR``: until a signal, or the end of a video or of standard input."""
    from padim.jobs.watch import check_options, source_kind
    from padim.jobs.watch import watch as run_watch
    from padim.outputs.mqtt import parse_mqtt_url
    from padim.outputs.webhook import parse_webhook_url

    if args.mqtt is not None:
        parse_mqtt_url(args.mqtt)
    if args.webhook is not None:
        parse_webhook_url(args.webhook)
    kind = source_kind(args.source)
    check_options(kind, args.source, move_to=args.move_to, fps=args.fps, poll=args.poll, recursive=args.recursive,
                  output=args.output)  # fmt: skip
    if kind in ("video", "camera", "stream"):
        require("video", f"padim watch {args.source}: reading a {kind}")
    if not Path(args.model).is_file():
        raise ModelFileError(f"{args.model}: model file not found")
    check_output_folder(args.output)
    check_output_folder(args.move_to, "--move-to")
    predictor = _opened(args)
    batch_size = args.batch_size or min(args.batch_cap, default_batch_size(predictor.image_size))
    with _stop_on_signals(args.quiet) as stop:
        summary = run_watch(predictor, args.source, args.output, model=str(args.model), webhook=args.webhook,
                            mqtt=args.mqtt, move_to=args.move_to, recursive=args.recursive, fps=args.fps,
                            poll=args.poll, settle=args.settle, queue_size=args.queue_size, overlays=args.overlays,
                            overlay_format=args.overlay_format, batch_size=batch_size, workers=args.workers,
                            quiet=args.quiet, stop=stop)  # fmt: skip
    if not args.quiet:
        skipped = f"; {summary.skipped} frames skipped" if summary.skipped else ""
        print(f"padim watch: judged {summary.judged} images ({summary.anomalous} anomalous, {summary.errors} errors) "
              f"in {summary.seconds:.0f} s{skipped}; rows in {summary.csv_path}", file=sys.stderr)  # fmt: skip
    for name, count in summary.undelivered.items():
        print(f"padim watch: {count} verdicts wait in the spool for {name}; they are sent when the watcher runs again "
              f"with --{name}", file=sys.stderr)  # fmt: skip
    return EXIT_NO_VERDICT if summary.errors and not summary.stopped else 0


@contextlib.contextmanager
def _stop_on_signals(quiet: bool) -> Iterator[threading.Event]:
    """An event set by the first SIGTERM or SIGINT; the second raises KeyboardInterrupt (stop now)."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        if not quiet:
            print(f"\npadim watch: {signal.Signals(signum).name}: finishing the image in hand, then stopping",
                  file=sys.stderr, flush=True)  # fmt: skip

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
