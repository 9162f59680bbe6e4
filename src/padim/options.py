"""Every option, once: its type, range, default and help, for the command line, the service and the Python API.

An :class:`Option` is one row of :data:`OPTIONS`: the parser takes its type, default and help from
it (:meth:`Option.parse`), the Python API and the service check arguments with :func:`check`, and
the model file's schema checks stored settings with :meth:`Option.accepts`, so a bound cannot
differ between them (as scikit-learn's ``_parameter_constraints``). Standard library only.
"""

from __future__ import annotations

import argparse
import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from padim.errors import OptionError

#: The largest image side, in pixels, any option or model file may name.
MAX_SIDE = 65_536


@dataclass(frozen=True)
class Option:
    """One option: what it accepts and what it means.

    Attributes:
        name: the Python keyword (``n_features``); the command-line flag is ``--n-features``.
        kind: ``int``, ``float``, ``str``, ``bool`` (a flag), ``"path"`` (a non-empty path) or
            ``"size"`` (an int, or height x width).
        default: the value when it is not given (None: decided later, e.g. by the working size).
        low, high: the range; ``low_open``/``high_open`` exclude the bound itself.
        choices: the accepted values of a ``str`` option.
        nullable: None is accepted (Python API: "automatic").
        finite: a float must be a finite number (NaN and infinities refused).
        help, metavar: what ``--help`` says (the default included) and its placeholder.
        flags, nargs, const: argparse's, where the flag is not ``--name-with-dashes`` or the value optional.
    """

    name: str
    kind: Any
    default: Any = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] | None = None
    nullable: bool = False
    finite: bool = True
    help: str = ""
    metavar: str | None = None
    flags: tuple[str, ...] | None = None
    nargs: str | None = None
    const: Any = None

    @property
    def flag(self) -> str:
        """The long flag: ``--n-features`` for ``n_features`` unless ``flags`` says otherwise."""
        return self.flags[-1] if self.flags else "--" + self.name.replace("_", "-")

    def expected(self, none: bool = True) -> str:
        """What the option accepts, in words: ``an integer in 1..8192``, ``a number in (0, 1]``.

        ``none``: say that None is accepted too, where it is (not on the command line, which has no None).

        >>> OPTIONS["quantile"].expected(), OPTIONS["port"].expected()
        ('a number in (0, 1]', 'an integer in 1..65535')
        """
        if self.choices is not None:
            return "one of " + ", ".join(self.choices)
        if self.kind == "size":
            return f"SIZE or HEIGHTxWIDTH in 1..{int(self.high)} pixels"
        if self.kind == "path":
            return "a path"
        if self.kind is bool:
            return "true or false"
        if self.kind is int:
            low = int(self.low) + self.low_open
            high = None if self.high is None else int(self.high) - self.high_open
            text = f"an integer >= {low}" if high is None else f"an integer in {low}..{high}"
        elif self.kind is float and (self.low is not None or self.high is not None):
            if self.high is None:
                text = f"a number {'>' if self.low_open else '>='} {self.low:g}"
            else:
                text = (f"a number in {'(' if self.low_open else '['}{self.low:g}, "
                        f"{self.high:g}{')' if self.high_open else ']'}")  # fmt: skip
        else:
            text = "a finite number" if self.kind is float else "a string"
        return text + (" or None" if self.nullable and none else "")

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` (a Python value, not text) is one this option takes."""
        if value is None:
            return self.nullable
        if self.choices is not None:
            return value in self.choices
        if self.kind == "size":
            sides = [value] if _is_int(value) else list(value) if isinstance(value, (list, tuple)) else []
            return len(sides) in (1, 2) and all(_is_int(s) and 1 <= s <= self.high for s in sides)
        if self.kind is int and not _is_int(value):
            return False
        if self.kind is float and not (_is_number(value) and (math.isfinite(value) or not self.finite)):
            return False
        if self.kind is bool:
            return isinstance(value, bool)
        if self.kind is str:
            return isinstance(value, str)
        if self.kind == "path":
            return isinstance(value, (str, os.PathLike)) and bool(str(value).strip())
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or not (value > self.high or (self.high_open and value == self.high))

    def check(self, value: Any, name: str | None = None) -> Any:
        """``value`` if :meth:`accepts` it.

        Raises:
            OptionError: ``"<name> must be <expected>, got <value>"``.
        """
        if not self.accepts(value):
            raise OptionError(f"{name or self.name} must be {self.expected()}, got {value!r}")
        return value

    def parse(self, text: str) -> Any:
        """The value of a command-line argument (argparse's ``type``).

        Raises:
            argparse.ArgumentTypeError: saying what was expected; argparse prefixes the flag.
        """
        try:
            value = _from_text(self.kind, text)
        except ValueError:
            value = _INVALID
        if value is _INVALID or not self.accepts(value):
            raise argparse.ArgumentTypeError(f"expected {self.expected(none=False)}, got {text!r}")
        return value

    def add_to(self, parser: argparse.ArgumentParser, **overrides: Any) -> None:
        """Add this option to an argparse parser: flags, type, default, help (``overrides`` win)."""
        out: dict[str, Any] = dict(default=self.default, help=self.help, dest=self.name)
        if self.kind is bool:
            out.update(action="store_true", default=False)
        elif self.choices is not None:
            out["choices"] = list(self.choices)
        else:
            out["type"] = self.parse
        out.update({key: getattr(self, key) for key in ("metavar", "nargs", "const") if getattr(self, key) is not None})
        out.update(overrides)
        parser.add_argument(*(self.flags or (self.flag,)), **out)


_INVALID = object()


def _is_int(value: Any) -> bool:
    """An integer (NumPy's too), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A real number (NumPy's too), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _from_text(kind: Any, text: str) -> Any:
    if kind == "path" and not text.strip():
        raise ValueError("empty")
    if kind == "size":
        sides = tuple(int(part) for part in text.lower().replace("x", ",").split(","))
        return sides[0] if len(sides) == 1 else sides
    return {"path": Path, int: int, float: float}.get(kind, str)(text)


#: The option table: every option of the command, the service and the Python API, by name.
# fmt: off
OPTIONS: dict[str, Option] = {row.name: row for row in (
    # --- the model (Padim's constructor) -------------------------------------------------------
    Option("backbone", str, "efficientnet_lite0", choices=("efficientnet_lite0", "resnet18", "wide_resnet50_2"),
           help="the CNN whose layers embed each patch (default: efficientnet_lite0, offline ImageNet weights)"),
    Option("layers", str, None, nullable=True, metavar="NAMES",
           help="comma-separated layer names (default: the backbone's three stages)"),
    Option("n_features", int, None, low=1, high=8192, nullable=True,
           help="channels kept, d (default: 100; 550 for wide_resnet50_2)"),
    Option("image_size", "size", 256, high=MAX_SIDE, metavar="SIZE|HxW",
           help="working size: SIZE is the short side, the long side follows the training images' median aspect "
                "ratio (a square if they vary widely), rounded to the backbone's stride; HxW is used as given "
                "(default: 256)"),
    Option("grid_stride", int, None, low=1, high=1024, nullable=True, metavar="PIXELS",
           help="pixels per Gaussian (default: the first layer's stride, 4); 8 or 16 make the model 4 or 16 times "
                "smaller, for large working sizes"),
    Option("tile_size", int, None, low=0, high=MAX_SIDE, nullable=True, metavar="PIXELS",
           help="run the backbone over overlapping tiles of this side (default: 1024 when the working size exceeds "
                "it; 0: never), so activation memory stays bounded"),
    Option("seed", int, 0, low=0, high=2**63, high_open=True, help="channel selection and hold-out seed (default: 0)"),
    Option("eps", float, 0.01, low=0.0, high=1e6, help="added to each covariance's diagonal (default: 0.01)"),
    Option("sigma", float, 4.0, low=0.0, high=1e4, low_open=True, help="the map's blur, in pixels (default: 4)"),
    Option("holdout", float, 0.1, low=0.0, high=1.0, high_open=True,
           help="fraction of good images held out to set the threshold (default: 0.1)"),
    Option("quantile", float, 0.99, low=0.0, high=1.0, low_open=True,
           help="threshold = this quantile of the held-out good images' scores (default: 0.99)"),
    Option("backend", str, "auto", choices=("auto", "torch", "onnxruntime"),
           help="what runs a .padim model (default: auto = onnxruntime on the CPU, torch on CUDA)"),
    Option("device", str, "cpu", metavar="DEVICE", help="cpu, cuda or cuda:N (default: cpu)"),
    Option("executor", str, "auto", choices=("auto", "onnxruntime", "openvino"),
           help="who runs the model on the CPU (default: auto, measured once per machine: OpenVINO where installed "
                "and faster, else onnxruntime)"),
    Option("stats_dtype", str, "float32", choices=("float32", "float64"),
           help="the scatter matrices' type while fitting (default: float32)"),
    Option("backbone_dtype", str, "float32", choices=("float32", "int8", "bfloat16"),
           help="reduced precision, fitted and checked (image and pixel AUROC within 0.005 of float32 on the held-out "
                "images with synthetic defects, else refused): int8 (onnxruntime; VNNI CPUs gain most) or bfloat16 "
                "(OpenVINO; CPUs with AVX512-BF16 or AMX); default: float32"),
    Option("align", str, "translate", choices=("none", "translate", "rigid"), help="register each image to a reference "
           "of the good ones first, so parts a little off their place are judged where they are (default: translate)"),
    Option("weights", "path", None, nullable=True, metavar="FILE",
           help="backbone weights file (.pth or .safetensors) instead of the default location"),
    Option("random_weights", bool, help="random backbone weights (for testing only)"),
    # --- what a fit reads and keeps --------------------------------------------------------------
    Option("validation", "path", None, nullable=True, metavar="DIR",
           help="folder of good images for the threshold instead of a held-out fraction"),
    Option("single_file", bool, help="one .onnx file with the tensors inside (opens 10x slower) instead of MODEL.onnx "
                                     "and MODEL.onnx.data"),
    Option("keep_stats", bool, help="also store the mergeable statistics (about 3x the file size) and the held-out "
                                    "images' paths, so that good images can be added later with --update"),
    Option("update", "path", None, nullable=True, metavar="MODEL",
           help="add the good images DATA to MODEL (fitted with --keep-stats), exactly as if fitted on both sets; "
                "MODEL's settings are kept, the threshold is set again from both fits' held-out images"),
    Option("ray", str, None, nullable=True, metavar="ADDRESS", nargs="?", const="",
           help="run on a Ray cluster: ADDRESS (ray://HOST:10001, HOST:6379 or auto); without it RAY_ADDRESS, "
                "else a local cluster on this machine; needs pip install 'padim-toolkit[ray]'"),
    # --- reading images --------------------------------------------------------------------------
    Option("batch_size", int, None, low=1, high=4096, nullable=True,
           help="images per batch (default: by working size: 32 at 256x256, 8 at 512x512, 1 from 1448x1448)"),
    Option("workers", int, None, low=0, high=256, nullable=True,
           help="image decoding threads, and for predict drawing threads (default: the CPUs, at most 8; 0: none)"),
    Option("max_megapixels", float, None, low=0.0, high=1e6, low_open=True, high_open=True, nullable=True,
           metavar="MP", help="refuse images with more pixels than this, read from their header before decoding "
                              "(default: 100, or $PADIM_MAX_MEGAPIXELS)"),
    Option("skip_bad", bool, help="skip unreadable images and list them at the end"),
    Option("recursive", bool, flags=("-r", "--recursive"), help="also read the images in subfolders"),
    Option("quiet", bool, help="no progress bars or messages"),
    # --- verdicts and outputs ----------------------------------------------------------------------
    Option("output", "path", None, nullable=True, flags=("-o", "--output"), help="where to write"),
    Option("threshold", float, None, nullable=True, metavar="T", help="use this threshold instead of the model's"),
    Option("pixel_threshold", float, None, nullable=True, metavar="P", help="the regions' pixel threshold, by hand"),
    Option("pixel_quantile", float, 0.999, low=0.0, high=1.0, low_open=True,
           help="with --good: pixel threshold = this quantile of their map pixels (default: 0.999)"),
    Option("good", "path", None, nullable=True, metavar="DIR", help="folder of good images the model was not fitted on"),
    Option("defective", "path", None, nullable=True, metavar="DIR", help="folder of defective images (needs --good)"),
    Option("f1", bool, help="with --defective: the F1-maximising threshold (default)"),
    Option("recall", float, None, low=0.0, high=1.0, low_open=True, nullable=True, metavar="R",
           help="with --defective: the highest threshold that flags at least R of them"),
    Option("overlays", str, "anomalous", choices=("all", "anomalous", "none"),
           help="which images get a heatmap picture (default: anomalous, the ones to look at)"),
    Option("overlay_format", str, "jpeg", choices=("jpeg", "png", "webp"),
           help="heatmap picture format (default: jpeg, quality 90: 3 ms and 80 kB for 900x900; png: 60 ms, 670 kB)"),
    Option("json_file", "path", None, nullable=True, flags=("--json",), metavar="FILE", help="write the results as JSON"),
    Option("json", bool, help="print JSON"),
    Option("report", "path", None, nullable=True, metavar="DIR",
           help="write an HTML report: model, confusion matrix, thresholds, curves, every mistake, every image"),
    # --- the web service -----------------------------------------------------------------------------
    Option("host", str, "127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)"),
    Option("port", int, 8000, low=1, high=65535, help="TCP port (default: 8000)"),
    Option("server_workers", int, 1, low=1, high=256, flags=("--workers",), help="server processes (default: 1)"),
    Option("max_upload_mb", float, 20.0, low=0.0, high=10240.0, low_open=True,
           help="largest upload accepted, in MiB (default: 20)"),
    Option("verdict_log", "path", Path("padim-verdicts.jsonl"), metavar="FILE",
           help="append every verdict here as a JSON line (default: ./padim-verdicts.jsonl)"),
    Option("no_verdict_log", bool, help="keep no verdict log"),
    Option("log_max_mb", float, 10.0, low=0.0, high=10240.0, low_open=True,
           help="rotate the verdict log at this size, in MiB (default: 10)"),
    Option("log_keep", int, 5, low=0, high=1000, help="rotated verdict log files kept (default: 5)"),
    Option("drift_window", int, 20, low=1, high=10**7, metavar="N",
           help="drift warning: over the last N images (default: 20)"),
    Option("drift_factor", float, 5.0, low=1.0, high=1e6, low_open=True,
           help="warn when this many times the calibrated false-alarm rate is flagged (default: 5)"),
    # --- padim watch: the line -------------------------------------------------------------------------
    Option("webhook", str, None, nullable=True, metavar="URL", help="POST each verdict as JSON to this http(s) URL"),
    Option("mqtt", str, None, nullable=True, metavar="URL", help="publish each verdict (QoS 1): mqtt://HOST[:PORT]/TOPIC"),
    Option("move_to", "path", None, nullable=True, metavar="DIR", help="move each judged file into DIR/good|anomalous|error/"),
    Option("fps", float, None, low=0.0, high=1000.0, low_open=True, nullable=True, help="frames judged per second at most"),
    Option("poll", float, None, low=0.01, high=3600.0, nullable=True, metavar="SECONDS", help="poll the folder, no events"),
    Option("settle", float, 1.0, low=0.0, high=3600.0, metavar="SECONDS", help="written in place: complete once unchanged this long (default: 1)"),
    Option("queue_size", int, 64, low=1, high=100_000, help="images waiting to be judged at most (default: 64)"),
)}
# fmt: on


def check(name: str, value: Any) -> Any:
    """``OPTIONS[name].check(value)``: the value, or an :class:`OptionError` naming ``name``.

    >>> check("holdout", 1.0)
    Traceback (most recent call last):
    ...
    padim.errors.OptionError: holdout must be a number in [0, 1), got 1.0
    """
    return OPTIONS[name].check(value)
