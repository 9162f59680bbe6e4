"""What the commands share: messages on stderr, the decoding options, SIGTERM handled as Ctrl-C."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator, Sequence

from padim.io.loading import default_batch_size


def say(args: argparse.Namespace, message: str) -> None:
    """A progress message on stderr, unless ``--quiet``."""
    if not getattr(args, "quiet", False):
        print(message, file=sys.stderr)


def report_skipped(skipped: dict | Sequence) -> None:
    """List the unreadable files a ``--skip-bad`` run left out."""
    if skipped:
        print(f"padim: skipped {len(skipped)} unreadable file(s):", file=sys.stderr)
        for path in skipped:
            print(f"  {path}", file=sys.stderr)


def decoding(args: argparse.Namespace, image_size: Sequence[int] | None = None) -> dict:
    """Decoding options of a command that reads images; the batch size by working size when not given."""
    batch_size = args.batch_size
    if batch_size is None and image_size is not None:
        batch_size = min(args.batch_cap, default_batch_size(image_size))
    options = dict(workers=args.workers, quiet=args.quiet, skip_bad=args.skip_bad)
    return options if batch_size is None else {**options, "batch_size": batch_size}  # None: the library's default


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While a job runs, SIGTERM (``kill``, a service manager) stops it like Ctrl-C: finished rows are kept."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
