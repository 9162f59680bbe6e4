"""The ``padim`` command: fit, predict, evaluate, demo, export and serve.

User errors (a missing folder, a bad option value, an unreadable image or model file) print
one line on stderr and exit with status 2; unexpected errors keep their traceback. Set
``PADIM_DEBUG=1`` to see tracebacks for user errors too. Torch is imported only by the
subcommands that need it, so ``padim predict model.onnx`` runs without torch.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from padim import __version__

EXIT_USER_ERROR = 2


class UserError(Exception):
    """An error in the command's input: reported in one line, exit status 2."""


def _user_errors() -> tuple[type[BaseException], ...]:
    # ValueError covers ImageError, ModelFileError and argument checks; FileNotFoundError
    # covers WeightsNotFoundError.
    return (UserError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


# --- argument types ---------------------------------------------------------------------------

def _number(kind: type, low: float, high: float | None = None, *, low_open: bool = False, expected: str):
    """An argparse type: ``kind(text)`` within [low, high) (or (low, high] with ``low_open``)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or value < low or (low_open and value == low) or (
            high is not None and (value > high or (not low_open and value == high))
        ):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


_positive_int = _number(int, 1, expected="a positive integer")
_non_negative_int = _number(int, 0, expected="an integer >= 0")
_fraction = _number(float, 0.0, 1.0, expected="a number in [0, 1)")
_quantile = _number(float, 0.0, 1.0, low_open=True, expected="a number in (0, 1]")


def _image_size(text: str) -> tuple[int, int]:
    parts = text.lower().replace("x", ",").split(",")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SIZE or HEIGHTxWIDTH in pixels, got {text!r}") from None
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or min(size) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive SIZE or HEIGHTxWIDTH, got {text!r}")
    return size


# --- shared pieces ------------------------------------------------------------------------------

def _say(args: argparse.Namespace, message: str) -> None:
    if not getattr(args, "quiet", False):
        print(message, file=sys.stderr)


def _report_skipped(args: argparse.Namespace, skipped: Sequence[str]) -> None:
    if skipped:
        print(f"padim: skipped {len(skipped)} unreadable file(s):", file=sys.stderr)
        for path in skipped:
            print(f"  {path}", file=sys.stderr)


def overlay_at_image_size(image, anomaly_map: np.ndarray, calibration, vmin: float, vmax: float,
                          max_side: int = 1024) -> np.ndarray:
    """Heatmap over the original image (its aspect ratio kept, longest side at most ``max_side``).

    The map is resized bilinearly to the picture; the predicted region is the resized map at
    or above the threshold, the same rule as the image label.
    """
    from PIL import Image

    from padim.visualize import overlay

    width, height = image.size
    scale = min(1.0, max_side / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    picture = np.asarray(image.convert("RGB").resize(size, Image.BILINEAR))
    resized = np.asarray(Image.fromarray(anomaly_map.astype(np.float32), mode="F").resize(size, Image.BILINEAR))
    region = None if calibration is None else calibration.label(resized)
    return overlay(picture, resized, vmin, vmax, region=region)


def _expand_inputs(inputs: Sequence[str]) -> list[Path]:
    from padim.transforms import list_images

    paths: list[Path] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            paths.extend(list_images(path))
        elif path.is_file():
            paths.append(path)
        else:
            raise UserError(f"{path}: no such image file or folder")
    return paths


def _unique_names(paths: Sequence[Path]) -> list[str]:
    """Overlay file names: the image's stem, with its parent folder where stems repeat."""
    stems = [p.stem for p in paths]
    names = []
    for path, stem in zip(paths, stems):
        names.append(f"{path.parent.name}_{stem}" if stems.count(stem) > 1 else stem)
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return unique


# --- subcommands ----------------------------------------------------------------------------------

def cmd_fit(args: argparse.Namespace) -> int:
    from padim.model import Padim

    if args.output.exists() and args.output.is_dir():
        raise UserError(f"--output {args.output} is a folder; expected a model file path such as model.padim")
    data = Path(args.data)
    if not data.exists():
        raise UserError(f"{data}: no such folder")
    model = Padim(
        backbone=args.backbone,
        layers=args.layers.split(",") if args.layers else None,
        n_features=args.n_features,
        image_size=args.image_size,
        seed=args.seed,
        pretrained=not args.random_weights,
        weights=args.weights,
        device=args.device,
        backend=args.backend,
        holdout=args.holdout,
        quantile=args.quantile,
    )
    start = time.perf_counter()
    model.fit(
        data,
        validation=args.validation,
        batch_size=args.batch_size,
        workers=args.workers,
        quiet=args.quiet,
        skip_bad=args.skip_bad,
    )
    model.save(args.output)
    _report_skipped(args, model.skipped_)
    calibration = model.calibration_
    threshold = "none (no held-out images)" if calibration is None else f"{calibration.threshold:.4g}"
    _say(args, f"fitted {model.n_images_} images in {time.perf_counter() - start:.1f} s; "
               f"threshold {threshold}; wrote {args.output}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from padim.files import write_text
    from padim.progress import progress
    from padim.runtime import open_model
    from padim.transforms import ImageError, load_image
    from padim.visualize import heatmap_range, save_png

    model = open_model(args.model, device=args.device)
    paths = _expand_inputs(args.inputs)
    names = _unique_names(paths)
    args.output.mkdir(parents=True, exist_ok=True)
    rows, skipped = [], []
    for start in progress(range(0, len(paths), args.batch_size), desc="predict", quiet=args.quiet):
        chunk, images = [], []
        for i in range(start, min(start + args.batch_size, len(paths))):
            try:
                images.append(load_image(paths[i]))
                chunk.append(i)
            except ImageError as error:
                if not args.skip_bad:
                    raise
                skipped.append(f"{paths[i]} ({error})")
        if not images:
            continue
        prediction = model.predict(images)
        vmin, vmax = heatmap_range(model.calibration, prediction.anomaly_map)
        for j, i in enumerate(chunk):
            normalized = "" if prediction.normalized_score is None else f"{prediction.normalized_score[j]:.6f}"
            label = "" if prediction.label is None else ("anomalous" if prediction.label[j] else "normal")
            rows.append([str(paths[i]), f"{prediction.score[j]:.6f}", normalized, label])
            if not args.no_overlays:
                picture = overlay_at_image_size(images[j], prediction.anomaly_map[j], model.calibration, vmin, vmax)
                save_png(args.output / f"{names[i]}_overlay.png", picture)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "score", "normalized_score", "label"])
    writer.writerows(rows)
    write_text(args.output / "predictions.csv", buffer.getvalue())
    _report_skipped(args, skipped)
    flagged = sum(row[3] == "anomalous" for row in rows)
    _say(args, f"predicted {len(rows)} images ({flagged} anomalous); wrote {args.output / 'predictions.csv'}")
    return 0


METRIC_COLUMNS = ("image_auroc", "pixel_auroc", "aupro", "image_f1_max", "image_accuracy")


def format_table(metrics: dict) -> str:
    """The metrics as a fixed-width text table: overall first, then one row per defect type."""
    header = ["", "images"] + [c.replace("image_", "img_") for c in METRIC_COLUMNS]
    rows = [("overall", metrics["overall"])] + sorted(metrics["per_defect"].items())
    lines = [header]
    for name, summary in rows:
        cells = [name, str(summary["n_images"])]
        cells += ["-" if summary.get(c) is None else f"{summary[c]:.3f}" for c in METRIC_COLUMNS]
        lines.append(cells)
    widths = [max(len(line[k]) for line in lines) for k in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) if k else cell.ljust(w) for k, (cell, w) in enumerate(zip(line, widths)))
                     for line in lines)


def evaluate_model(model, data: Path, *, batch_size: int = 32, workers: int | None = None,
                   quiet: bool = True, skip_bad: bool = False) -> dict:
    """Predict every test image of ``data`` and compute the metrics.

    Returns:
        dict with ``samples`` (the Samples that were read), ``maps`` (N, H, W), ``scores`` (N,),
        ``masks`` (N, H, W) bool (None for a defect image without mask), ``metrics`` (see
        :func:`padim.metrics.evaluate`) and ``skipped``.
    """
    from padim.data import BatchStream, test_samples
    from padim.metrics import evaluate

    samples = test_samples(data)
    stream = BatchStream(samples, model.image_size, batch_size=batch_size, workers=workers,
                         skip_bad=skip_bad, quiet=quiet, desc="evaluate")
    maps, masks, kept = [], [], []
    for images, batch_masks, indices in stream:
        maps.append(model.anomaly_maps(images).cpu().numpy())
        masks.append(batch_masks.numpy() > 0)
        kept.extend(indices)
    if not kept:
        raise UserError(f"{data}: no readable test images")
    samples = [samples[i] for i in kept]
    maps_array = np.concatenate(maps)
    scores = maps_array.reshape(len(maps_array), -1).max(axis=1)
    mask_list = [None if (s.label and s.mask_path is None) else m for s, m in zip(samples, np.concatenate(masks))]
    labels = np.array([s.label for s in samples])
    threshold = None if model.calibration_ is None else model.calibration_.threshold
    metrics = evaluate(labels, scores, [s.defect_type for s in samples], maps_array, mask_list, threshold)
    return dict(samples=samples, maps=maps_array, scores=scores, masks=mask_list, metrics=metrics,
                skipped=[str(p) for p in stream.skipped])


def cmd_evaluate(args: argparse.Namespace) -> int:
    from padim.files import write_text
    from padim.model import Padim

    if str(args.model).endswith(".onnx"):
        raise UserError(f"{args.model}: evaluate needs the .padim model file (ONNX files are for predict and serve)")
    model = Padim.load(args.model, device=args.device, backend=args.backend)
    result = evaluate_model(model, Path(args.data), batch_size=args.batch_size, workers=args.workers,
                            quiet=args.quiet, skip_bad=args.skip_bad)
    metrics = result["metrics"]
    print(format_table(metrics))
    overall = metrics["overall"]
    summary = {key: overall[key] for key in ("image_auroc", "pixel_auroc", "aupro", "image_f1_max", "f1_threshold")}
    summary.update(threshold=overall["threshold"], n_images=overall["n_images"], overall=overall,
                   per_defect=metrics["per_defect"], model=str(args.model), data=str(args.data))
    if args.json:
        write_text(args.json, json.dumps(summary, indent=2) + "\n")
        _say(args, f"wrote {args.json}")
    if args.report:
        write_evaluation_report(model, result, args.report)
        _say(args, f"wrote {Path(args.report) / 'index.html'}")
    _report_skipped(args, result["skipped"])
    return 0


def write_evaluation_report(model, result: dict, directory: Path) -> Path:
    """The HTML report of an evaluation, with overlays of the worst-scored images."""
    from padim.metrics import roc_curve
    from padim.report import ReportData, worst_examples, write_report
    from padim.transforms import load_image
    from padim.visualize import heatmap_range

    samples, maps, scores = result["samples"], result["maps"], result["scores"]
    labels = np.array([s.label for s in samples])
    calibration = model.calibration_
    if calibration is not None:
        threshold = calibration.threshold
    else:  # an uncalibrated model: show the F1-best split of this test set
        threshold = float(result["metrics"]["overall"]["f1_threshold"] or scores.max())
    vmin, vmax = heatmap_range(calibration, maps)
    overlays = {
        i: overlay_at_image_size(load_image(samples[i].path), maps[i], calibration, vmin, vmax, max_side=512)
        for i in worst_examples(labels, scores, threshold, k=8)
    }
    pixel_roc = None
    if all(m is not None for m in result["masks"]) and labels.any():
        masks = np.stack(result["masks"])
        if masks.any() and not masks.all():
            pixel_roc = tuple(roc_curve(masks.ravel(), maps.ravel())[:2])
    data = ReportData(
        paths=[str(s.path) for s in samples], labels=labels, scores=scores,
        defect_types=[s.defect_type for s in samples], metrics=result["metrics"], threshold=threshold,
        overlays=overlays, pixel_roc=pixel_roc,
    )
    return write_report(directory, data)


def cmd_demo(args: argparse.Namespace) -> int:
    from padim.model import Padim
    from padim.synthetic import make_demo_dataset

    out = Path(args.output)
    start = time.perf_counter()
    category = make_demo_dataset(out / "data", overwrite=True)
    _say(args, f"generated a synthetic inspection set in {category}")
    model = Padim(image_size=128, seed=0).fit(category, workers=0, quiet=args.quiet)
    model_path = model.save(out / "model.padim")
    _say(args, f"fitted {model.n_images_} good images; threshold {model.calibration_.threshold:.4g}; wrote {model_path}")
    result = evaluate_model(model, category, workers=0, quiet=args.quiet)
    print(format_table(result["metrics"]))
    from padim.files import write_text

    overall = result["metrics"]["overall"]
    write_text(out / "metrics.json", json.dumps(result["metrics"], indent=2) + "\n")
    write_evaluation_report(model, result, out / "report")
    predict_args = argparse.Namespace(
        model=model_path, inputs=[str(category / "test" / name) for name in sorted(os.listdir(category / "test"))],
        output=out / "heatmaps", device="cpu", batch_size=32, quiet=True, skip_bad=False, no_overlays=False,
    )
    cmd_predict(predict_args)
    _say(args, f"done in {time.perf_counter() - start:.1f} s: image AUROC {overall['image_auroc']:.3f}, "
               f"pixel AUROC {overall['pixel_auroc']:.3f}; open {out / 'report' / 'index.html'} "
               f"and the overlays in {out / 'heatmaps'}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from padim.export import export_onnx

    path = export_onnx(args.model, args.output)
    _say(args, f"wrote {path}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from padim.serve import run

    if not Path(args.model).is_file():
        raise UserError(f"{args.model}: model file not found")
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

    def common(p: argparse.ArgumentParser, workers: bool = True) -> None:
        p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
        if workers:
            p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime"],
                           help="runs the backbone (default: auto = onnxruntime on the CPU, torch on CUDA)")
        p.add_argument("--batch-size", type=_positive_int, default=32, help="images per batch (default: 32)")
        if workers:
            p.add_argument("--workers", type=_non_negative_int, default=None,
                           help="image decoding processes (default: automatic; 0 = in this process)")
        p.add_argument("--skip-bad", action="store_true", help="skip unreadable images and list them at the end")
        p.add_argument("--quiet", action="store_true", help="no progress bars or messages")

    p = sub.add_parser("fit", help="fit a model on good images",
                       description="Fit a PaDiM model on good images. DATA is an MVTec category "
                                   "(its train/good is used) or a folder of good images.")
    p.add_argument("data", metavar="DATA")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="MODEL", help="model file to write (.padim)")
    p.add_argument("--backbone", default="efficientnet_lite0",
                   choices=["efficientnet_lite0", "resnet18", "wide_resnet50_2"], help="default: efficientnet_lite0")
    p.add_argument("--layers", help="comma-separated layer names (default: the backbone's three stages)")
    p.add_argument("--n-features", type=_positive_int, help="channels kept, d (default: 100; 550 for wide_resnet50_2)")
    p.add_argument("--image-size", type=_image_size, default=(256, 256), help="SIZE or HxW (default: 256)")
    p.add_argument("--seed", type=int, default=0, help="channel selection seed (default: 0)")
    p.add_argument("--weights", help="backbone weights file (.pth or .safetensors) instead of the default location")
    p.add_argument("--random-weights", action="store_true", help="random backbone weights (for testing only)")
    p.add_argument("--holdout", type=_fraction, default=0.1,
                   help="fraction of good images held out to set the threshold (default: 0.1)")
    p.add_argument("--validation", help="folder of good images for the threshold instead of a held-out fraction")
    p.add_argument("--quantile", type=_quantile, default=0.99,
                   help="threshold = this quantile of held-out good scores (default: 0.99)")
    common(p)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("predict", help="score images and write heatmaps",
                       description="Score images with a .padim or .onnx model; write OUTDIR/predictions.csv "
                                   "(path,score,normalized_score,label) and a heatmap overlay PNG per image.")
    p.add_argument("model", metavar="MODEL", help=".padim or .onnx model file")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders of images")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUTDIR")
    p.add_argument("--no-overlays", action="store_true", help="write only predictions.csv")
    common(p, workers=False)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", help="metrics on a labelled test set",
                       description="Evaluate a model on an MVTec category's test split (or a folder with good/ "
                                   "and one folder per defect type, optional ground_truth/). Prints image AUROC, "
                                   "pixel AUROC, AUPRO and F1-max, overall and per defect type.")
    p.add_argument("model", metavar="MODEL", help=".padim model file")
    p.add_argument("data", metavar="DATA")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the metrics as JSON")
    p.add_argument("--report", type=Path, metavar="DIR", help="write an HTML report with curves and examples")
    common(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="fit and evaluate on a generated data set, offline",
                       description="Generate a small synthetic inspection set, fit, evaluate, and write the model, "
                                   "heatmaps and an HTML report to ./padim-demo/.")
    p.add_argument("-o", "--output", type=Path, default=Path("padim-demo"), help="default: ./padim-demo")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("export", help="export a model to ONNX",
                       description="Export the whole pipeline (image batch in; anomaly map, score, normalised "
                                   "score and label out) to ONNX.")
    p.add_argument("model", metavar="MODEL", help=".padim model file")
    p.add_argument("-o", "--output", type=Path, required=True, help="ONNX file to write")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", help="serve a model over HTTP with a web page",
                       description="Serve MODEL (.padim or .onnx): GET / (a page), GET /health, POST /predict.")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1 (this machine only)")
    p.add_argument("--port", type=_positive_int, default=8000, help="default: 8000")
    p.add_argument("--workers", type=_positive_int, default=1, help="server processes (default: 1)")
    p.add_argument("--max-upload-mb", type=_number(float, 0.0, low_open=True, expected="a size in MB > 0"),
                   default=20.0, help="largest upload accepted (default: 20)")
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except _user_errors() as error:
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
