"""The ``padim`` command: fit, predict, evaluate, calibrate, info, demo, export and serve.

Each ``cmd_*`` parses, calls the library and prints. Errors a user can cause
(:class:`padim.errors.PadimError`: a missing folder, a bad option value, an unreadable image or
model file) print one line on stderr and exit with status 2; anything else is a bug and keeps
its traceback (exit 1). Set ``PADIM_DEBUG=1`` to see tracebacks for user errors too. Torch is
imported only by the subcommands that need it, so ``padim predict model.onnx`` runs without it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from padim import __version__
from padim.errors import ModelFileError, OptionError, OutputError, PadimError

EXIT_USER_ERROR = 2
#: The environment variable of the pixel cap (:data:`padim.images.ENV_MAX_MEGAPIXELS`; no import here).
ENV_MAX_MEGAPIXELS = "PADIM_MAX_MEGAPIXELS"
#: ``padim predict`` finished, but some image's score was not a finite number (its label: error).
EXIT_NO_VERDICT = 3
#: The file ``padim demo`` leaves in its output folder: only a folder holding it is written over.
DEMO_MARKER = ".padim-demo"


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
            or value != value  # NaN
            or value < low
            or (low_open and value == low)
            or (high is not None and (value > high or (not low_open and value == high)))
        ):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


_fraction = _number(float, 0.0, 1.0, expected="a number in [0, 1)")
_quantile = _number(float, 0.0, 1.0, low_open=True, expected="a number in (0, 1]")
#: Upper bounds of the numeric options: far beyond any real use, so a typo is refused, not run.
MAX_BATCH, MAX_WORKERS, MAX_MB, MAX_SIDE, MAX_COUNT = 4096, 256, 10240, 16384, 10**7
_batch = _number(int, 1, MAX_BATCH + 1, expected=f"an integer in 1..{MAX_BATCH}")
_workers = _number(int, 0, MAX_WORKERS + 1, expected=f"an integer in 0..{MAX_WORKERS}")
_server_workers = _number(int, 1, MAX_WORKERS + 1, expected=f"an integer in 1..{MAX_WORKERS}")
_features = _number(int, 1, 8193, expected="an integer in 1..8192")
_seed = _number(int, 0, 2**63, expected="an integer in [0, 2**63)")
_port = _number(int, 1, 65536, expected="a port in 1..65535")
_count = _number(int, 0, MAX_COUNT + 1, expected=f"an integer in 0..{MAX_COUNT}")
_positive_count = _number(int, 1, MAX_COUNT + 1, expected=f"an integer in 1..{MAX_COUNT}")
_megabytes = _number(float, 0.0, MAX_MB, low_open=True, expected=f"a size in MB in (0, {MAX_MB}]")
_megapixels = _number(float, 0.0, 1e6, low_open=True, expected="a number of megapixels in (0, 1e6)")
_positive = _megabytes


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _image_size(text: str) -> int | tuple[int, int]:
    """``"256"`` -> 256 (the short side); ``"256x512"`` -> (256, 512) (height, width)."""
    parts = text.lower().replace("x", ",").split(",")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SIZE or HEIGHTxWIDTH in pixels, got {text!r}") from None
    if len(size) not in (1, 2) or min(size) < 1 or max(size) > MAX_SIDE:
        raise argparse.ArgumentTypeError(f"expected SIZE or HEIGHTxWIDTH in 1..{MAX_SIDE} pixels, got {text!r}")
    return size[0] if len(size) == 1 else size


def max_megapixels_option(p: argparse.ArgumentParser) -> None:
    """``--max-megapixels``: the pixel cap of :func:`padim.images.max_pixels` (main() sets it)."""
    p.add_argument(
        "--max-megapixels",
        type=_megapixels,
        default=None,
        metavar="MP",
        help="refuse images with more pixels than this, read from their header before decoding "
        "(default: 100, or $PADIM_MAX_MEGAPIXELS)",
    )


# --- output checks, made before any work ----------------------------------------------------------


def _writable_folder(path: Path, option: str) -> None:
    """The nearest existing folder at or above ``path`` must be a folder this process may write in."""
    ancestor = path
    while not ancestor.exists() and not ancestor.is_symlink() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"{option} {path}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {path}: permission denied (cannot write in {ancestor})")


def check_output_file(path: Path | None, option: str = "-o") -> None:
    """Refuse an output file path that is a folder, a device, a pipe or a link, or in a folder not writable."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{option} {path}: is a folder; expected a file name")
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise OutputError(f"{option} {path}: not a regular file; padim replaces only regular files")
    _writable_folder(path.parent, option)


def check_output_folder(path: Path | None, option: str = "-o") -> None:
    """Refuse an output folder path that is an existing file, or under a folder that is not writable."""
    if path is None:
        return
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path}: is a file, not a folder")
    _writable_folder(path, option)


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

        batch_size = min(args.batch_cap, default_batch_size(image_size))
    options = dict(workers=args.workers, quiet=args.quiet, skip_bad=args.skip_bad)
    return options if batch_size is None else {**options, "batch_size": batch_size}  # None: the library's default


# --- subcommands ----------------------------------------------------------------------------------


def cmd_fit(args: argparse.Namespace) -> int:
    from padim.model import Padim

    check_output_file(args.output)
    if args.weights is not None and args.random_weights:
        raise OptionError("--weights and --random-weights contradict each other: give one")
    layers = None if args.layers is None else [name.strip() for name in args.layers.split(",") if name.strip()]
    model = Padim(
        backbone=args.backbone,
        layers=layers,
        n_features=args.n_features,
        image_size=args.image_size,
        seed=args.seed,
        pretrained=not args.random_weights,
        weights=args.weights,
        device=args.device,
        backend=args.backend,
        holdout=args.holdout,
        quantile=args.quantile,
        backbone_dtype=args.backbone_dtype,
        grid_stride=args.grid_stride,
        tile_size=args.tile_size,
    )
    start = time.perf_counter()
    if args.ray is not None:
        from padim import distributed

        if args.backbone_dtype == "int8" and args.update is None:  # before starting Ray
            raise OptionError(distributed.INT8_REFUSAL)
        distributed.connect(args.ray or None)
    if args.update is not None:
        from padim.incremental import update

        options = {**_options(args), "distributed": args.ray is not None}
        model = update(args.update, args.data, device=args.device, backend=args.backend, **options)
    elif args.ray is not None:
        options = {k: v for k, v in _options(args).items() if k != "workers"}
        distributed.fit(model, args.data, validation=args.validation, keep_stats=args.keep_stats, **options)
    else:
        model.fit(args.data, validation=args.validation, keep_stats=args.keep_stats, **_options(args))
    model.save(args.output)
    _report_skipped(model.skipped_)
    calibration = model.calibration_
    threshold = "none (no held-out images)" if calibration is None else f"{calibration.threshold:.4g}"
    _say(
        args,
        f"fitted {model.n_images_} images in {time.perf_counter() - start:.1f} s ({model.backbone_dtype} backbone); "
        f"threshold {threshold}; wrote {args.output}",
    )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from padim.batch_predict import predict_files
    from padim.datasets import image_samples
    from padim.progress import phase
    from padim.runtime import open_model

    if not Path(args.model).is_file():  # before listing the images, as open_model would
        raise ModelFileError(f"{args.model}: model file not found")
    check_output_folder(args.output)
    with phase(f"listing the images in {' '.join(args.inputs)}", args.quiet):
        samples = image_samples(args.inputs, recursive=args.recursive)
    if args.output is None and len(samples) > 1:
        raise OptionError(f"-o OUTDIR is needed for {len(samples)} images (without it, give one image)")
    if args.ray is not None:
        return _predict_on_ray(args, samples)
    with phase(f"opening {args.model}", args.quiet):
        predictor = open_model(args.model, device=args.device, backend=args.backend)
    if args.threshold is not None:
        predictor = predictor.with_threshold(args.threshold)
    start = time.perf_counter()
    on_row = (lambda row: print(row.verdict(), flush=True)) if args.output is None else None
    with _sigterm_as_interrupt():
        summary = predict_files(
            predictor,
            samples,
            args.output,
            overlays=args.overlays,
            overlay_format=args.overlay_format,
            on_row=on_row,
            **_options(args, predictor.image_size),
        )
    return _predict_summary(args, summary, start)


def _predict_on_ray(args: argparse.Namespace, samples: list) -> int:
    """``padim predict --ray``: the batch job on a Ray cluster (:func:`padim.distributed.predict_files`)."""
    from padim import distributed
    from padim.model_file import read_model_file

    start = time.perf_counter()
    distributed.connect(args.ray or None)
    size = args.batch_size
    if size is None and not str(args.model).endswith(".onnx"):  # by working size, as the local command
        size = _options(args, read_model_file(args.model)[1]["image_size"]).get("batch_size")
    on_row = (lambda row: print(row.verdict(), flush=True)) if args.output is None else None
    with _sigterm_as_interrupt():
        summary = distributed.predict_files(
            args.model, samples, args.output, overlays=args.overlays, overlay_format=args.overlay_format,
            batch_size=size or args.batch_cap, device=args.device, backend=args.backend, threshold=args.threshold,
            skip_bad=args.skip_bad, quiet=args.quiet, on_row=on_row,
        )  # fmt: skip
    return _predict_summary(args, summary, start)


def _predict_summary(args: argparse.Namespace, summary: Any, start: float) -> int:
    _report_skipped(summary.skipped)
    if summary.left_out:
        _say(args, f"padim: left out {summary.left_out} image(s) inside the output folder {args.output}")
    if args.output is not None:
        seconds = time.perf_counter() - start
        _say(
            args,
            f"predicted {summary.n_images} images ({summary.n_anomalous} anomalous, {summary.n_overlays} overlays) "
            f"in {seconds:.1f} s, {summary.n_images / max(seconds, 1e-9):.1f} images/s; wrote {summary.csv_path}",
        )
    for path in summary.errors:
        print(f"padim predict: error: {path}: the score is not a finite number; labelled error", file=sys.stderr)
    return EXIT_NO_VERDICT if summary.errors else 0


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
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


def cmd_evaluate(args: argparse.Namespace) -> int:
    from padim.evaluation import evaluate_model, format_table
    from padim.evaluation_report import evaluation_json, write_evaluation_report
    from padim.files import write_text
    from padim.progress import phase
    from padim.runtime import open_model

    check_output_file(args.json, "--json")
    check_output_folder(args.report, "--report")
    with phase(f"opening {args.model}", args.quiet):
        predictor = open_model(args.model, device=args.device, backend=args.backend)
    if args.threshold is not None:
        predictor = predictor.with_threshold(args.threshold)
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
        **evaluation_json(evaluation, predictor.calibration),
    )
    if args.json:
        write_text(args.json, json.dumps(summary, indent=2) + "\n")
        _say(args, f"wrote {args.json}")
    if args.report:
        write_evaluation_report(
            evaluation, predictor.calibration, args.report, model_path=args.model, config=predictor.config
        )
        _say(args, f"wrote {Path(args.report) / 'index.html'}")
    _report_skipped(evaluation.skipped)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from padim.batch_predict import predict_files
    from padim.datasets import image_samples
    from padim.evaluation import evaluate_model, format_table
    from padim.evaluation_report import write_evaluation_report
    from padim.files import write_text
    from padim.model import Padim
    from padim.synthetic import make_demo_dataset

    out = Path(args.output)
    check_output_folder(out)
    marker = out / DEMO_MARKER
    if out.is_dir() and any(out.iterdir()) and not marker.is_file():
        raise OutputError(f"-o {out}: folder holds files padim demo did not write; choose an empty or new folder")
    write_text(marker, "written by padim demo: it may replace the files in this folder\n")
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
    write_evaluation_report(evaluation, predictor.calibration, out / "report", model_path=model_path)
    test_folders = [category / "test" / name for name in sorted(os.listdir(category / "test"))]
    predict_files(predictor, image_samples(test_folders), out / "heatmaps", overlays="all", quiet=True)
    overall = evaluation.metrics["overall"]
    _say(
        args,
        f"done in {time.perf_counter() - start:.1f} s: image AUROC {overall['image_auroc']:.3f}, "
        f"pixel AUROC {overall['pixel_auroc']:.3f}; open {out / 'report' / 'index.html'} "
        f"and the overlays in {out / 'heatmaps' / 'overlays'}",
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from padim.export import export_onnx
    from padim.model import Padim

    check_output_file(args.output)
    model = Padim.load(args.model)
    path = export_onnx(model, args.output)
    _say(args, f"wrote {path} ({model.backbone_dtype} backbone, as fitted)")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from padim.calibration import recalibrate_file

    if args.f1 and args.defective is None:
        raise OptionError("--f1 needs --good DIR and --defective DIR")
    check_output_file(args.output if args.output is not None else Path(args.model))
    change = recalibrate_file(
        args.model,
        threshold=args.threshold,
        good=args.good,
        defective=args.defective,
        quantile=args.quantile,
        recall=args.recall,
        pixel_threshold=args.pixel_threshold,
        pixel_quantile=args.pixel_quantile,
        output=args.output,
        device=args.device,
        backend=args.backend,
        **_options(args),
    )
    print("\n".join(change.lines()))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from padim.model_info import format_info, model_info

    info = model_info(args.model)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from padim.serve import run

    if args.verdict_log is not None and not args.no_verdict_log:
        check_output_file(args.verdict_log, "--verdict-log")
    run(
        args.model,
        host=args.host,
        port=args.port,
        workers=args.workers,
        max_upload_mb=args.max_upload_mb,
        threshold=args.threshold,
        verdict_log=None if args.no_verdict_log else args.verdict_log,
        log_max_mb=args.log_max_mb,
        log_keep=args.log_keep,
        drift_window=args.drift_window,
        drift_factor=args.drift_factor,
    )
    return 0


# --- the parser ------------------------------------------------------------------------------------


def _ray_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help=f"{what}. ADDRESS: a cluster (ray://HOST:10001, HOST:6379 or auto); without it RAY_ADDRESS, "
        "else a local cluster on this machine. Needs pip install 'padim-toolkit[ray]'",
    )


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cap = os.environ.get(ENV_MAX_MEGAPIXELS)
    if getattr(args, "max_megapixels", None) is not None:  # read by padim.images (and a server's workers)
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
