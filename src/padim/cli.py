"""The ``padim`` command: fit, predict, evaluate, demo, export and serve.

Each ``cmd_*`` parses, calls the library and prints. Errors a user can cause
(:class:`padim.errors.PadimError`: a missing folder, a bad option value, an unreadable image or
model file) print one line on stderr and exit with status 2; anything else is a bug and keeps
its traceback (exit 1). Set ``PADIM_DEBUG=1`` to see tracebacks for user errors too. Torch is
imported only by the subcommands that need it, so ``padim predict model.onnx`` runs without it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from padim import __version__
from padim.errors import OptionError, PadimError

EXIT_USER_ERROR = 2


# --- argument types ---------------------------------------------------------------------------


def _number(kind: type, low: float, high: float | None = None, *, low_open: bool = False, expected: str):
    """An argparse type: ``kind(text)`` within [low, high) (or (low, high] with ``low_open``)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if (
            value is None
            or value < low
            or (low_open and value == low)
            or (high is not None and (value > high or (not low_open and value == high)))
        ):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


_positive_int = _number(int, 1, expected="a positive integer")
_non_negative_int = _number(int, 0, expected="an integer >= 0")
_fraction = _number(float, 0.0, 1.0, expected="a number in [0, 1)")
_quantile = _number(float, 0.0, 1.0, low_open=True, expected="a number in (0, 1]")


def _image_size(text: str) -> int | tuple[int, int]:
    """``"256"`` -> 256 (the short side); ``"256x512"`` -> (256, 512) (height, width)."""
    parts = text.lower().replace("x", ",").split(",")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SIZE or HEIGHTxWIDTH in pixels, got {text!r}") from None
    if len(size) not in (1, 2) or min(size) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive SIZE or HEIGHTxWIDTH, got {text!r}")
    return size[0] if len(size) == 1 else size


# --- shared pieces ------------------------------------------------------------------------------


def _say(args: argparse.Namespace, message: str) -> None:
    if not getattr(args, "quiet", False):
        print(message, file=sys.stderr)


def _report_skipped(skipped: dict | Sequence) -> None:
    if skipped:
        print(f"padim: skipped {len(skipped)} unreadable file(s):", file=sys.stderr)
        for path in skipped:
            print(f"  {path}", file=sys.stderr)


def _options(args: argparse.Namespace, image_size: Sequence[int] | None = None) -> dict:
    """Decoding options shared by the commands that read images (the batch size by working size if not given)."""
    batch_size = args.batch_size
    if batch_size is None and image_size is not None:
        from padim.memory import default_batch_size

        batch_size = default_batch_size(image_size)
    return dict(batch_size=batch_size, workers=args.workers, quiet=args.quiet, skip_bad=args.skip_bad)


# --- subcommands ----------------------------------------------------------------------------------


def cmd_fit(args: argparse.Namespace) -> int:
    from padim.model import Padim

    if args.output.is_dir():
        raise OptionError(f"--output {args.output} is a folder; expected a model file path such as model.padim")
    model = Padim(
        backbone=args.backbone,
        layers=None if args.layers is None else [name for name in args.layers.split(",") if name],
        n_features=args.n_features,
        image_size=args.image_size,
        seed=args.seed,
        pretrained=not args.random_weights,
        weights=args.weights,
        device=args.device,
        backend=args.backend,
        holdout=args.holdout,
        quantile=args.quantile,
        grid_stride=args.grid_stride,
        tile_size=args.tile_size,
    )
    start = time.perf_counter()
    model.fit(args.data, validation=args.validation, **_options(args))
    model.save(args.output)
    _report_skipped(model.skipped_)
    calibration = model.calibration_
    threshold = "none (no held-out images)" if calibration is None else f"{calibration.threshold:.4g}"
    _say(
        args,
        f"fitted {model.n_images_} images in {time.perf_counter() - start:.1f} s; "
        f"threshold {threshold}; wrote {args.output}",
    )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from padim.batch_predict import predict_files
    from padim.datasets import image_samples
    from padim.runtime import open_model

    predictor = open_model(args.model, device=args.device, backend=args.backend)
    samples = image_samples(args.inputs)
    options = _options(args, predictor.image_size)
    summary = predict_files(predictor, samples, args.output, overlays=not args.no_overlays, **options)
    _report_skipped(summary.skipped)
    _say(args, f"predicted {summary.n_images} images ({summary.n_anomalous} anomalous); wrote {summary.csv_path}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from padim.evaluation import evaluate_model, format_table
    from padim.files import write_text
    from padim.report import write_evaluation_report
    from padim.runtime import open_model

    predictor = open_model(args.model, device=args.device, backend=args.backend)
    evaluation = evaluate_model(predictor, args.data, **_options(args, predictor.image_size))
    metrics = evaluation.metrics
    print(format_table(metrics))
    overall = metrics["overall"]
    summary = {key: overall[key] for key in ("image_auroc", "pixel_auroc", "aupro", "image_f1_max", "f1_threshold")}
    summary.update(
        threshold=overall["threshold"],
        n_images=overall["n_images"],
        overall=overall,
        per_defect=metrics["per_defect"],
        model=str(args.model),
        data=str(args.data),
    )
    if args.json:
        write_text(args.json, json.dumps(summary, indent=2) + "\n")
        _say(args, f"wrote {args.json}")
    if args.report:
        write_evaluation_report(evaluation, predictor.calibration, args.report)
        _say(args, f"wrote {Path(args.report) / 'index.html'}")
    _report_skipped(evaluation.skipped)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from padim.batch_predict import predict_files
    from padim.datasets import image_samples
    from padim.evaluation import evaluate_model, format_table
    from padim.files import write_text
    from padim.model import Padim
    from padim.report import write_evaluation_report
    from padim.synthetic import make_demo_dataset

    out = Path(args.output)
    start = time.perf_counter()
    category = make_demo_dataset(out / "data", overwrite=True)
    _say(args, f"generated a synthetic inspection set in {category}")
    model = Padim(image_size=128, seed=0).fit(category, quiet=args.quiet)
    model_path = model.save(out / "model.padim")
    _say(
        args, f"fitted {model.n_images_} good images; threshold {model.calibration_.threshold:.4g}; wrote {model_path}"
    )
    predictor = model.predictor()
    evaluation = evaluate_model(predictor, category, quiet=args.quiet)
    print(format_table(evaluation.metrics))
    write_text(out / "metrics.json", json.dumps(evaluation.metrics, indent=2) + "\n")
    write_evaluation_report(evaluation, predictor.calibration, out / "report")
    test_folders = [category / "test" / name for name in sorted(os.listdir(category / "test"))]
    predict_files(predictor, image_samples(test_folders), out / "heatmaps", quiet=True)
    overall = evaluation.metrics["overall"]
    _say(
        args,
        f"done in {time.perf_counter() - start:.1f} s: image AUROC {overall['image_auroc']:.3f}, "
        f"pixel AUROC {overall['pixel_auroc']:.3f}; open {out / 'report' / 'index.html'} "
        f"and the overlays in {out / 'heatmaps'}",
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from padim.export import export_onnx

    path = export_onnx(args.model, args.output)
    _say(args, f"wrote {path}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from padim.serve import run

    run(args.model, host=args.host, port=args.port, workers=args.workers, max_upload_mb=args.max_upload_mb)
    return 0


# --- the parser ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="padim",
        description="PaDiM anomaly detection: fit on good images, find and locate defects.",
        epilog="Start with 'padim demo'. Each command has --help.",
    )
    parser.add_argument("--version", action="version", version=f"padim-toolkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
        p.add_argument(
            "--backend",
            default="auto",
            choices=["auto", "torch", "onnxruntime"],
            help="runs a .padim model (default: auto = onnxruntime on the CPU, torch on CUDA)",
        )
        p.add_argument(
            "--batch-size",
            type=_positive_int,
            default=None,
            help="images per batch (default: by working size: 32 at 256x256, 8 at 512x512, 1 from 1448x1448)",
        )
        p.add_argument(
            "--workers",
            type=_non_negative_int,
            default=None,
            help="image decoding threads (default: the CPUs, at most 8; 0 = none)",
        )
        p.add_argument("--skip-bad", action="store_true", help="skip unreadable images and list them at the end")
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
    p.add_argument("--n-features", type=_positive_int, help="channels kept, d (default: 100; 550 for wide_resnet50_2)")
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
        type=_positive_int,
        default=None,
        metavar="PIXELS",
        help="pixels per Gaussian (default: the first layer's stride, 4); 8 or 16 make the model 4 or 16 "
        "times smaller, for large working sizes",
    )
    p.add_argument(
        "--tile-size",
        type=_non_negative_int,
        default=None,
        metavar="PIXELS",
        help="run the backbone over overlapping tiles of this side (default: 1024 when the working size "
        "exceeds it; 0: never), so activation memory stays bounded",
    )
    p.add_argument("--seed", type=int, default=0, help="channel selection seed (default: 0)")
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
        "--quantile",
        type=_quantile,
        default=0.99,
        help="threshold = this quantile of held-out good scores (default: 0.99)",
    )
    common(p)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser(
        "predict",
        help="score images and write heatmaps",
        description="Score images with a .padim or .onnx model; write OUTDIR/predictions.csv "
        "(path,score,normalized_score,label) and a heatmap overlay PNG per image.",
    )
    p.add_argument("model", metavar="MODEL", help=".padim or .onnx model file")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders of images")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUTDIR")
    p.add_argument("--no-overlays", action="store_true", help="write only predictions.csv")
    common(p)
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
    p.add_argument("--report", type=Path, metavar="DIR", help="write an HTML report with curves and examples")
    common(p)
    p.set_defaults(func=cmd_evaluate)

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
        "score and label out) to ONNX.",
    )
    p.add_argument("model", metavar="MODEL", help=".padim model file")
    p.add_argument("-o", "--output", type=Path, required=True, help="ONNX file to write")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "serve",
        help="serve a model over HTTP with a web page",
        description="Serve MODEL (.padim or .onnx): GET / (a page), GET /health, POST /predict.",
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1 (this machine only)")
    p.add_argument("--port", type=_positive_int, default=8000, help="default: 8000")
    p.add_argument("--workers", type=_positive_int, default=1, help="server processes (default: 1)")
    p.add_argument(
        "--max-upload-mb",
        type=_number(float, 0.0, low_open=True, expected="a size in MB > 0"),
        default=20.0,
        help="largest upload accepted (default: 20)",
    )
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
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


if __name__ == "__main__":
    sys.exit(main())
