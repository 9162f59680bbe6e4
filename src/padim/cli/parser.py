"""The ``padim`` command's parser, made from the option table: each command names its options, the table defines them.

:data:`COMMANDS` lists, per command, its help, its positional arguments and the names of its
options in :data:`padim.options.OPTIONS` (with what differs for that command: a help line, a
metavar, ``required``). Types, ranges, defaults and help come from the table, so the command line
accepts exactly what the Python API and the service accept. Nothing here imports a command's code.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from padim.options import OPTIONS
from padim.version import __version__


@dataclass(frozen=True)
class Command:
    """One subcommand: its words for ``--help``, its arguments, and the option names it takes.

    ``options`` holds option names, or ``(name, overrides)`` for what differs in this command;
    ``batch_cap`` is the default batch size at 256x256 (fewer images at larger working sizes).
    """

    help: str
    description: str
    positionals: tuple[tuple[str, dict], ...] = ()
    options: tuple[Any, ...] = ()
    epilog: str = ""
    batch_cap: int | None = None
    exclusive: tuple[str, ...] = field(default_factory=tuple)


#: Options of every command that reads images.
READS_IMAGES = ("device", "backend", "batch_size", "workers", "skip_bad", "max_megapixels", "quiet")
_MODEL = ("model", dict(metavar="MODEL", help=".padim or .onnx model file"))

COMMANDS: dict[str, Command] = {
    "fit": Command(
        help="fit a model on good images",
        description="Fit a PaDiM model on good images. DATA is an MVTec category (its train/good is used) or a "
        "folder of good images. Prints the working size, the model's size and the memory it expects first, and "
        "refuses a fit that would exceed this machine's memory.",
        positionals=(("data", dict(metavar="DATA")),),
        options=(
            ("output", dict(required=True, metavar="MODEL", help="model file to write (.padim)")),
            "backbone",
            "layers",
            "n_features",
            "image_size",
            "grid_stride",
            "tile_size",
            "align",
            "seed",
            "weights",
            "random_weights",
            "holdout",
            "validation",
            "backbone_dtype",
            "quantile",
            "keep_stats",
            "update",
            (
                "ray",
                dict(
                    help="shard the images over the workers of a Ray cluster (float32 backbones); "
                    + OPTIONS["ray"].help
                ),
            ),
            *READS_IMAGES,
        ),  # fmt: skip
        batch_cap=32,
    ),
    "predict": Command(
        help="score images and write verdicts and heatmaps",
        description="Score images with a .padim or .onnx model. Writes OUTDIR/predictions.csv, one row per image "
        "as it finishes (path, score, normalized_score, label, overlay, width, height and the predicted region's box "
        "region_x0,region_y0,region_x1,region_y1 (x1, y1 exclusive) and region_area in pixels of the image), and "
        "heatmap pictures in OUTDIR/overlays/, mirroring the images' folders. Without -o, one image's verdict is "
        "printed and nothing is written.",
        epilog="Exit status: 0 done; 2 bad input (one line names it); 3 done, but some image's score was not a "
        "finite number (label 'error', named on stderr); 130 interrupted (the rows of finished images are in the CSV).",
        positionals=(
            _MODEL,
            (
                "inputs",
                dict(
                    nargs="+",
                    metavar="INPUT",
                    help="image files, folders of images, or @LIST: a text file with one path per line",
                ),
            ),
        ),  # fmt: skip
        options=(
            ("output", dict(metavar="OUTDIR", help="folder for predictions.csv and overlays/")),
            "recursive",
            "overlays",
            "overlay_format",
            "threshold",
            "executor",
            (
                "ray",
                dict(help="decode with Ray Data and score on a pool of actors, one model each; " + OPTIONS["ray"].help),
            ),
            *READS_IMAGES,
        ),  # fmt: skip
        batch_cap=16,  # onnxruntime keeps its largest batch's memory: 390 MB at 32 images of 256 px, 200 MB at 16
    ),
    "watch": Command(
        help="judge images as they arrive and send each verdict on",
        description="Judge the images SOURCE brings as they arrive, as predict would: rows appended to "
        "OUTDIR/predictions.csv as each is judged, overlays of flagged parts in OUTDIR/overlays/, and one JSON message "
        "per verdict (path, label, score, threshold, model, time, ...) posted to --webhook and published to --mqtt "
        "(QoS 1). SOURCE is a folder (each image file that appears in it, renamed into place or written and left "
        "unchanged for --settle seconds, is judged once), a video file, a camera index (0), an RTSP/HTTP stream URL, "
        "or - (one path per line on standard input). A restart with the same arguments judges what arrived meanwhile "
        "and nothing twice; verdicts wait on disk while a destination is down. Runs until SIGTERM or Ctrl-C (the "
        "image in hand is finished; exit 0), or the end of a video or of standard input.",
        epilog="Exit status: 0 stopped by a signal, or the source ended; 2 bad input (one line names it); 3 a finite "
        "source ended and some image got the label 'error'. Video, cameras and streams need "
        "pip install 'padim-toolkit[video]'.",
        positionals=(_MODEL, ("source", dict(metavar="SOURCE", help="folder, video file, camera index, URL, or -"))),
        options=(
            ("output", dict(required=True, metavar="OUTDIR", help="folder for predictions.csv, overlays/ and .watch/")),
            "webhook",
            "mqtt",
            "move_to",
            ("recursive", dict(help="also watch the subfolders (hidden ones skipped)")),
            "settle",
            ("poll", dict(help="look for new files every SECONDS instead of waiting for file events (network shares)")),
            ("fps", dict(help="judge at most this many frames per second of a video, camera or stream (default: all)")),
            "queue_size",
            "overlays",
            "overlay_format",
            "threshold",
            "executor",
            *(name for name in READS_IMAGES if name != "skip_bad"),
        ),  # fmt: skip
        batch_cap=16,
    ),
    "evaluate": Command(
        help="metrics on a labelled test set",
        description="Evaluate a model on an MVTec category's test split (or a folder with good/ and one folder per "
        "defect type, optional ground_truth/). Prints image AUROC, pixel AUROC, AUPRO and F1-max, overall and per "
        "defect type.",
        positionals=(_MODEL, ("data", dict(metavar="DATA"))),
        options=(
            (
                "json_file",
                dict(
                    help="write the metrics, the confusion counts, the threshold table and every "
                    "image's verdict as JSON"
                ),
            ),
            "report",
            ("threshold", dict(help="evaluate at this threshold instead of the model's")),
            "executor",
            *READS_IMAGES,
        ),  # fmt: skip
        batch_cap=32,
    ),
    "calibrate": Command(
        help="set a model's thresholds after fitting",
        description="Give a .padim model new thresholds and write it (atomically; -o for another file): "
        "--threshold T by hand; or --good DIR, good images it was not fitted on, whose --quantile (default: the "
        "model's, 0.99) becomes the threshold; or --good DIR --defective DIR with --f1 (default) or --recall R, the "
        "highest threshold that flags at least R of the defective images. With images, the pixel threshold of the "
        "regions is set from the good images' maps too (--pixel-quantile). Prints what changed.",
        positionals=(("model", dict(metavar="MODEL", help=".padim model file")),),
        options=(
            ("threshold", dict(help="the image threshold, by hand")),
            "good",
            "defective",
            ("quantile", dict(default=None, help="with --good alone: threshold = this quantile of their scores")),
            "f1",
            "recall",
            "pixel_threshold",
            "pixel_quantile",
            ("output", dict(metavar="MODEL", help="write here instead of replacing MODEL")),
            "executor",
            *READS_IMAGES,
        ),  # fmt: skip
        batch_cap=32,
        exclusive=("f1", "recall"),
    ),
    "info": Command(
        help="show what a model file holds",
        description="Show a .padim or .onnx model's backbone, layers, working size, d, training images, thresholds "
        "and how they were set, file format, tensor sizes and SHA-256; reads no tensor data.",
        positionals=(_MODEL,),
        options=("json",),
    ),
    "demo": Command(
        help="fit and evaluate on a generated data set, offline",
        description="Generate a small synthetic inspection set, fit, evaluate, and write the model, heatmaps and an "
        "HTML report to ./padim-demo/.",
        options=(("output", dict(default=Path("padim-demo"), help="default: ./padim-demo")), "quiet"),
    ),
    "export": Command(
        help="export a model to ONNX",
        description="Export the whole pipeline (image batch in; anomaly map, score, normalised score and label "
        "out) to ONNX: MODEL.onnx and its tensors in MODEL.onnx.data beside it (keep the two together; --single-file "
        "writes one file, slower to open). A model fitted with --backbone-dtype int8 exports its int8 graph.",
        positionals=(("model", dict(metavar="MODEL", help=".padim model file")),),
        options=(("output", dict(required=True, help="ONNX file to write")), "single_file", "quiet"),
    ),
    "serve": Command(
        help="serve a model over HTTP with a web page",
        description="Serve MODEL (.padim or .onnx): GET / (a page for the line), GET /health, POST /predict. Every "
        "verdict is appended to a log; a warning shows when far more images are flagged than the calibration "
        "expects.",
        positionals=(("model", dict(metavar="MODEL")),),
        options=(
            "host",
            "port",
            "server_workers",
            "max_upload_mb",
            "threshold",
            "executor",
            "verdict_log",
            "no_verdict_log",
            "log_max_mb",
            "log_keep",
            "drift_window",
            "drift_factor",
            "max_megapixels",
        ),  # fmt: skip
    ),
}


def _add_options(parser: argparse.ArgumentParser, command: Command) -> None:
    exclusive = parser.add_mutually_exclusive_group() if command.exclusive else None
    for item in command.options:
        name, overrides = (item, {}) if isinstance(item, str) else item
        OPTIONS[name].add_to(exclusive if name in command.exclusive else parser, **overrides)


def build_parser() -> argparse.ArgumentParser:
    """The whole ``padim`` parser; each subcommand's namespace carries ``command`` and ``batch_cap``."""
    parser = argparse.ArgumentParser(
        prog="padim",
        description="PaDiM anomaly detection: fit on good images, find and locate defects.",
        epilog="Start with 'padim demo'. Each command has --help.",
    )
    parser.add_argument("--version", action="version", version=f"padim-toolkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.description, epilog=command.epilog or None)
        for dest, spec in command.positionals:
            p.add_argument(dest, **spec)
        _add_options(p, command)
        if name == "predict":  # an older spelling, kept for scripts written against padim-toolkit 0.1
            p.add_argument("--no-overlays", dest="overlays", action="store_const", const="none", help=argparse.SUPPRESS)
        p.set_defaults(batch_cap=command.batch_cap)
    return parser
