"""The ``padim`` command's parser: one subparser per command, with its options, help and defaults."""

from __future__ import annotations

import argparse
from pathlib import Path

from padim.cli.commands import (
    cmd_calibrate,
    cmd_demo,
    cmd_evaluate,
    cmd_export,
    cmd_fit,
    cmd_info,
    cmd_predict,
    cmd_serve,
)
from padim.cli.options import (
    MAX_SIDE,
    _batch,
    _features,
    _finite,
    _fraction,
    _image_size,
    _megabytes,
    _number,
    _port,
    _positive,
    _positive_count,
    _quantile,
    _ray_option,
    _seed,
    _server_workers,
    _workers,
    max_megapixels_option,
)
from padim.version import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="padim",
        description="PaDiM anomaly detection: fit on good images, find and locate defects.",
        epilog="Start with 'padim demo'. Each command has --help.",
    )
    parser.add_argument("--version", action="version", version=f"padim-toolkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def common(p: argparse.ArgumentParser, batch_size: int = 32) -> None:
        p.set_defaults(batch_cap=batch_size)
        p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
        p.add_argument(
            "--backend",
            default="auto",
            choices=["auto", "torch", "onnxruntime"],
            help="runs a .padim model (default: auto = onnxruntime on the CPU, torch on CUDA)",
        )
        p.add_argument(
            "--batch-size",
            type=_batch,
            default=None,
            help=f"images per batch (default: by working size: {batch_size} at 256x256, 8 at 512x512, "
            "1 from 1448x1448)",
        )
        p.add_argument(
            "--workers",
            type=_workers,
            default=None,
            help="image decoding threads, and for predict drawing threads (default: the CPUs, at most 8; 0 = none)",
        )
        p.add_argument("--skip-bad", action="store_true", help="skip unreadable images and list them at the end")
        max_megapixels_option(p)
        p.add_argument("--quiet", action="store_true", help="no progress bars or messages")

    p = sub.add_parser(
        "fit",
        help="fit a model on good images",
        description="Fit a PaDiM model on good images. DATA is an MVTec category "
        "(its train/good is used) or a folder of good images. Prints the working size, the model's size "
        "and the memory it expects first, and refuses a fit that would exceed this machine's memory.",
    )
    p.add_argument("data", metavar="DATA")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="MODEL", help="model file to write (.padim)")
    p.add_argument(
        "--backbone",
        default="efficientnet_lite0",
        choices=["efficientnet_lite0", "resnet18", "wide_resnet50_2"],
        help="default: efficientnet_lite0",
    )
    p.add_argument("--layers", help="comma-separated layer names (default: the backbone's three stages)")
    p.add_argument("--n-features", type=_features, help="channels kept, d (default: 100; 550 for wide_resnet50_2)")
    p.add_argument(
        "--image-size",
        type=_image_size,
        default=256,
        metavar="SIZE|HxW",
        help="working size: SIZE is the short side, the long side follows the training images' median aspect "
        "ratio (a square if they vary widely), rounded to the backbone's stride; HxW is used as given (default: 256)",
    )
    p.add_argument(
        "--grid-stride",
        type=_number(int, 1, 1025, expected="an integer in 1..1024"),
        default=None,
        metavar="PIXELS",
        help="pixels per Gaussian (default: the first layer's stride, 4); 8 or 16 make the model 4 or 16 "
        "times smaller, for large working sizes",
    )
    p.add_argument(
        "--tile-size",
        type=_number(int, 0, MAX_SIDE + 1, expected=f"an integer in 0..{MAX_SIDE}"),
        default=None,
        metavar="PIXELS",
        help="run the backbone over overlapping tiles of this side (default: 1024 when the working size "
        "exceeds it; 0: never), so activation memory stays bounded",
    )
    p.add_argument("--seed", type=_seed, default=0, help="channel selection seed (default: 0)")
    p.add_argument("--weights", help="backbone weights file (.pth or .safetensors) instead of the default location")
    p.add_argument("--random-weights", action="store_true", help="random backbone weights (for testing only)")
    p.add_argument(
        "--holdout",
        type=_fraction,
        default=0.1,
        help="fraction of good images held out to set the threshold (default: 0.1)",
    )
    p.add_argument("--validation", help="folder of good images for the threshold instead of a held-out fraction")
    p.add_argument(
        "--backbone-dtype",
        choices=["float32", "int8"],
        default="float32",
        help="int8: the backbone quantised, calibrated on 32 of the good images (CPU, onnxruntime; "
        "predicts about 1.6x faster); default: float32",
    )
    p.add_argument(
        "--quantile",
        type=_quantile,
        default=0.99,
        help="threshold = this quantile of held-out good scores (default: 0.99)",
    )
    p.add_argument(
        "--keep-stats",
        action="store_true",
        help="also store the mergeable statistics (about 3x the file size) and the held-out images' paths, "
        "so that good images can be added later with --update",
    )
    p.add_argument(
        "--update",
        type=Path,
        metavar="MODEL",
        help="add the good images DATA to MODEL (fitted with --keep-stats), exactly as if fitted on both sets; "
        "MODEL's settings are kept, the threshold is set again from both fits' held-out images",
    )
    _ray_option(p, "shard the images over the workers of a Ray cluster; each streams its shard into statistics, "
                "merged once (float32 backbones)")  # fmt: skip
    common(p)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser(
        "predict",
        help="score images and write verdicts and heatmaps",
        description="Score images with a .padim or .onnx model. Writes OUTDIR/predictions.csv, one row "
        "per image as it finishes (path, score, normalized_score, label, overlay, width, height and the "
        "predicted region's box region_x0,region_y0,region_x1,region_y1 (x1, y1 exclusive) and "
        "region_area in pixels of the image), and heatmap pictures in OUTDIR/overlays/, mirroring the "
        "images' folders. Without -o, one image's verdict is printed and nothing is written.",
        epilog="Exit status: 0 done; 2 bad input (one line names it); 3 done, but some image's score "
        "was not a finite number (label 'error', named on stderr); 130 interrupted (the rows of "
        "finished images are in the CSV).",
    )
    p.add_argument("model", metavar="MODEL", help=".padim or .onnx model file")
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files, folders of images, or @LIST: a text file with one path per line",
    )
    p.add_argument("-o", "--output", type=Path, metavar="OUTDIR", help="folder for predictions.csv and overlays/")
    p.add_argument("-r", "--recursive", action="store_true", help="also read the images in subfolders")
    p.add_argument(
        "--overlays",
        choices=["all", "anomalous", "none"],
        default="anomalous",
        help="which images get a heatmap picture (default: anomalous, the ones to look at)",
    )
    p.add_argument(
        "--overlay-format",
        choices=["jpeg", "png", "webp"],
        default="jpeg",
        help="heatmap picture format (default: jpeg, quality 90: 3 ms and 80 kB for 900x900; png: 60 ms, 670 kB)",
    )
    p.add_argument("--threshold", type=_finite, metavar="T", help="use this threshold instead of the model's")
    p.add_argument("--no-overlays", dest="overlays", action="store_const", const="none", help=argparse.SUPPRESS)
    # 16, not 32: onnxruntime keeps the memory of its largest batch (390 MB at 32 images of 256 px,
    # 200 MB at 16) for 2% more time per image; 8000x8000 images then stay under 1.5 GB.
    _ray_option(p, "read and decode the images with Ray Data and score them on a pool of actors, one "
                "model each (one GPU each with --device cuda); rows are written as they arrive")  # fmt: skip
    common(p, batch_size=16)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "evaluate",
        help="metrics on a labelled test set",
        description="Evaluate a model on an MVTec category's test split (or a folder with good/ "
        "and one folder per defect type, optional ground_truth/). Prints image AUROC, "
        "pixel AUROC, AUPRO and F1-max, overall and per defect type.",
    )
    p.add_argument("model", metavar="MODEL", help=".padim or .onnx model file")
    p.add_argument("data", metavar="DATA")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the metrics as JSON")
    p.add_argument(
        "--report",
        type=Path,
        metavar="DIR",
        help="write an HTML report: model, confusion matrix, thresholds, curves, every mistake, every image",
    )
    p.add_argument("--threshold", type=_finite, metavar="T", help="evaluate at this threshold instead of the model's")
    common(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "calibrate",
        help="set a model's thresholds after fitting",
        description="Give a .padim model new thresholds and write it (atomically; -o for another file): "
        "--threshold T by hand; or --good DIR, good images it was not fitted on, whose --quantile "
        "(default: the model's, 0.99) becomes the threshold; or --good DIR --defective DIR with --f1 "
        "(default) or --recall R, the highest threshold that flags at least R of the defective images. "
        "With images, the pixel threshold of the regions is set from the good images' maps too "
        "(--pixel-quantile). Prints what changed.",
    )
    p.add_argument("model", metavar="MODEL", help=".padim model file")
    p.add_argument("--threshold", type=_finite, metavar="T", help="the image threshold, by hand")
    p.add_argument("--good", metavar="DIR", help="folder of good images the model was not fitted on")
    p.add_argument("--defective", metavar="DIR", help="folder of defective images (needs --good)")
    p.add_argument("--quantile", type=_quantile, help="with --good alone: threshold = this quantile of their scores")
    choice = p.add_mutually_exclusive_group()
    choice.add_argument("--f1", action="store_true", help="with --defective: the F1-maximising threshold (default)")
    choice.add_argument("--recall", type=_quantile, metavar="R", help="with --defective: flag at least R of them")
    p.add_argument("--pixel-threshold", type=_finite, metavar="P", help="the regions' pixel threshold, by hand")
    p.add_argument(
        "--pixel-quantile",
        type=_quantile,
        default=0.999,
        help="with --good: pixel threshold = this quantile of their map pixels (default: 0.999)",
    )
    p.add_argument("-o", "--output", type=Path, metavar="MODEL", help="write here instead of replacing MODEL")
    common(p)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser(
        "info",
        help="show what a model file holds",
        description="Show a .padim or .onnx model's backbone, layers, working size, d, training images, "
        "thresholds and how they were set, file format, tensor sizes and SHA-256; reads no tensor data.",
    )
    p.add_argument("model", metavar="MODEL", help=".padim or .onnx model file")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "demo",
        help="fit and evaluate on a generated data set, offline",
        description="Generate a small synthetic inspection set, fit, evaluate, and write the model, "
        "heatmaps and an HTML report to ./padim-demo/.",
    )
    p.add_argument("-o", "--output", type=Path, default=Path("padim-demo"), help="default: ./padim-demo")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "export",
        help="export a model to ONNX",
        description="Export the whole pipeline (image batch in; anomaly map, score, normalised "
        "score and label out) to ONNX. A model fitted with --backbone-dtype int8 exports its int8 graph.",
    )
    p.add_argument("model", metavar="MODEL", help=".padim model file")
    p.add_argument("-o", "--output", type=Path, required=True, help="ONNX file to write")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "serve",
        help="serve a model over HTTP with a web page",
        description="Serve MODEL (.padim or .onnx): GET / (a page for the line), GET /health, POST /predict. "
        "Every verdict is appended to a log; a warning shows when far more images are flagged than "
        "the calibration expects.",
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1 (this machine only)")
    p.add_argument("--port", type=_port, default=8000, help="default: 8000")
    p.add_argument("--workers", type=_server_workers, default=1, help="server processes (default: 1)")
    p.add_argument(
        "--max-upload-mb",
        type=_megabytes,
        default=20.0,
        help="largest upload accepted (default: 20)",
    )
    p.add_argument("--threshold", type=_finite, metavar="T", help="use this threshold instead of the model's")
    p.add_argument(
        "--verdict-log",
        type=Path,
        default=Path("padim-verdicts.jsonl"),
        metavar="FILE",
        help="append every verdict here as a JSON line (default: ./padim-verdicts.jsonl)",
    )
    p.add_argument("--no-verdict-log", action="store_true", help="keep no verdict log")
    p.add_argument("--log-max-mb", type=_positive, default=10.0, help="rotate the log at this size (default: 10)")
    p.add_argument(
        "--log-keep",
        type=_number(int, 0, 1001, expected="an integer in 0..1000"),
        default=5,
        help="rotated log files kept (default: 5)",
    )
    p.add_argument(
        "--drift-window",
        type=_positive_count,
        default=20,
        metavar="N",
        help="drift warning: over the last N images (default: 20)",
    )
    p.add_argument(
        "--drift-factor",
        type=_number(float, 1.0, 1e6, low_open=True, expected="a number in (1, 1e6]"),
        default=5.0,
        help="warn when this many times the calibrated false-alarm rate is flagged (default: 5)",
    )
    max_megapixels_option(p)
    p.set_defaults(func=cmd_serve)
    return parser
