"""What a user can get wrong, as one family of exceptions.

Every error a person can cause (a bad option, a missing folder, an unreadable image, a damaged
model file, missing weights) derives from :class:`PadimError`. The command line reports those
in one line with exit status 2; anything else is a bug and keeps its traceback. Each class also
derives from the built-in type a Python caller would expect (``ValueError``,
``FileNotFoundError``), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class PadimError(Exception):
    """Base class of the errors a user can cause; the message names the file or option."""


class OptionError(PadimError, ValueError):
    """An argument or command-line option outside what it accepts."""


class DataError(PadimError, ValueError):
    """A folder or file list that does not hold what the command needs (missing, empty, mis-laid)."""


class ImageError(DataError):
    """An image file that cannot be decoded; the message names the file."""


class ImageTooLargeError(ImageError):
    """An image whose header promises more pixels than the cap (a decompression bomb, or an over-size image)."""


class ScoreError(PadimError, ValueError):
    """The model gave a score that is not a finite number: no verdict; the message names the images."""


class ModelFileError(PadimError, ValueError):
    """A file that is not a readable padim model; the message names the file and why."""


class OutputError(PadimError, OSError):
    """A file or folder that cannot be written (permission, full disk, a folder in the way)."""


class WeightsNotFoundError(PadimError, FileNotFoundError):
    """Pretrained weights were asked for but are not on this machine."""


class NotFittedError(ValueError, AttributeError):
    """The model was used before ``fit`` (or ``load``): a programming error, not a user's."""


class MissingExtraError(PadimError, ImportError):
    """A command or file needs an optional part of the toolkit that is not installed; the message says which extra."""
