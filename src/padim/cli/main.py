"""The ``padim`` command: parse, run one command, turn a user's error into one line.

Errors a user can cause (:class:`padim.errors.PadimError`: a missing folder, a bad option value,
an unreadable image or model file, a missing extra) print one line on stderr and exit with
status 2; anything else is a bug and keeps its traceback (exit 1). ``PADIM_DEBUG=1`` shows
tracebacks for user errors too. The commands that run a model live in :mod:`padim.cli.run`;
those that need torch (:mod:`padim.cli.train`) are reached by name through :func:`padim.extras.load`,
so ``padim predict model.onnx`` runs where torch is not installed.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Sequence

from padim.cli import run, watch
from padim.cli.common import sigterm_as_interrupt
from padim.cli.parser import build_parser
from padim.errors import PadimError
from padim.extras import load
from padim.io.images import ENV_MAX_MEGAPIXELS

EXIT_USER_ERROR = 2
#: The commands that need the training extra, and where they are.
TRAINING = {"fit": "padim.cli.train:fit", "export": "padim.cli.train:export", "demo": "padim.cli.train:demo"}
#: The commands of the runtime install.
RUNTIME = {"predict": run.predict, "evaluate": run.evaluate, "calibrate": run.calibrate, "info": run.info,
           "serve": run.serve, "watch": watch.watch}  # fmt: skip

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cap = os.environ.get(ENV_MAX_MEGAPIXELS)
    if getattr(args, "max_megapixels", None) is not None:  # read by padim.io.images (and a server's workers)
        os.environ[ENV_MAX_MEGAPIXELS] = repr(args.max_megapixels)
    try:
        with (
            warnings.catch_warnings(),
            sigterm_as_interrupt() if args.command != "serve" else contextlib.nullcontext(),
        ):
            warnings.filterwarnings("ignore", message=".*decompression bomb")  # Pillow's: padim's own cap decides
            if args.command in TRAINING:
                command = load(TRAINING[args.command], "train", f"padim {args.command}")
            else:
                command = RUNTIME[args.command]
            return command(args)
    except PadimError as error:
        if os.environ.get("PADIM_DEBUG"):
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"padim {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("padim: interrupted", file=sys.stderr)
        return 130
    finally:
        if cap is None:
            os.environ.pop(ENV_MAX_MEGAPIXELS, None)
        else:
            os.environ[ENV_MAX_MEGAPIXELS] = cap


if __name__ == "__main__":
    sys.exit(main())
