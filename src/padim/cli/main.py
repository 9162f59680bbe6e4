"""The ``padim`` command: fit, predict, evaluate, calibrate, info, demo, export and serve.

Each ``cmd_*`` parses, calls the library and prints. Errors a user can cause
(:class:`padim.errors.PadimError`: a missing folder, a bad option value, an unreadable image or
model file) print one line on stderr and exit with status 2; anything else is a bug and keeps
its traceback (exit 1). Set ``PADIM_DEBUG=1`` to see tracebacks for user errors too. Torch is
imported only by the subcommands that need it, so ``padim predict model.onnx`` runs without it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Sequence

from padim.cli.commands import _sigterm_as_interrupt
from padim.cli.parser import build_parser
from padim.errors import PadimError

EXIT_USER_ERROR = 2
#: The environment variable of the pixel cap (:data:`padim.io.images.ENV_MAX_MEGAPIXELS`; no import here).
ENV_MAX_MEGAPIXELS = "PADIM_MAX_MEGAPIXELS"

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cap = os.environ.get(ENV_MAX_MEGAPIXELS)
    if getattr(args, "max_megapixels", None) is not None:  # read by padim.io.images (and a server's workers)
        os.environ[ENV_MAX_MEGAPIXELS] = repr(args.max_megapixels)
    try:
        with (
            warnings.catch_warnings(),
            _sigterm_as_interrupt() if args.command != "serve" else contextlib.nullcontext(),
        ):
            warnings.filterwarnings("ignore", message=".*decompression bomb")  # Pillow's: padim's own cap decides
            return args.func(args)
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
