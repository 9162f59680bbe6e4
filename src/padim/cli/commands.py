"""The ``padim`` subcommands: each ``cmd_*`` takes the parsed options, calls the library and prints.

Errors a user can cause are :class:`padim.errors.PadimError`s, turned into one line by
:func:`padim.cli.main.main`. Torch is imported only by the subcommands that need it, so
``padim predict model.onnx`` runs without it.
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
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from padim.cli.options import check_output_file, check_output_folder
from padim.errors import ModelFileError, OptionError, OutputError

#: ``padim predict`` finished, but some image's score was not a finite number (its label: error).
EXIT_NO_VERDICT = 3
#: The file ``padim demo`` leaves in its output folder: only a folder holding it is written over.
DEMO_MARKER = ".padim-demo"


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
        from padim.io.loading import default_batch_size

        batch_size = min(args.batch_cap, default_batch_size(image_size))
    options = dict(workers=args.workers, quiet=args.quiet, skip_bad=args.skip_bad)
    return options if batch_size is None else {**options, "batch_size": batch_size}  # None: the library's default


# --- subcommands ----------------------------------------------------------------------------------


def cmd_fit(args: argparse.Namespace) -> int:
    from padim.model.padim import Padim

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
    gather = None
    if args.ray is not None:
        from padim.jobs.ray_cluster import INT8_REFUSAL, connect
        from padim.model.distributed import gather as ray_gather

        if args.backbone_dtype == "int8" and args.update is None:  # before starting Ray
            raise OptionError(INT8_REFUSAL)
        connect(args.ray or None)
        gather = ray_gather()
    if args.update is not None:
        from padim.model.incremental import update

        model = update(args.update, args.data, device=args.device, backend=args.backend, gather=gather,
                       **_options(args))  # fmt: skip
    elif args.ray is not None:
        options = {k: v for k, v in _options(args).items() if k != "workers"}
        model.fit(args.data, validation=args.validation, keep_stats=args.keep_stats, gather=gather, **options)
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
    from padim.io.datasets import image_samples
    from padim.jobs.predict import predict_files
    from padim.progress import phase
    from padim.runtime.opening import open_model

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
    """``padim predict --ray``: the batch job on a Ray cluster (:func:`padim.jobs.ray_predict.predict_files`)."""
    from padim.jobs.ray_cluster import connect
    from padim.jobs.ray_predict import predict_files
    from padim.modelfile.padim_file import read_model_file

    start = time.perf_counter()
    connect(args.ray or None)
    size = args.batch_size
    if size is None and not str(args.model).endswith(".onnx"):  # by working size, as the local command
        size = _options(args, read_model_file(args.model)[1]["image_size"]).get("batch_size")
    on_row = (lambda row: print(row.verdict(), flush=True)) if args.output is None else None
    with _sigterm_as_interrupt():
        summary = predict_files(
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
    from padim.eval.evaluation import evaluate_model, format_table
    from padim.io.files import write_text
    from padim.progress import phase
    from padim.report.evaluation_report import evaluation_json, write_evaluation_report
    from padim.runtime.opening import open_model

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
    from padim.eval.evaluation import evaluate_model, format_table
    from padim.io.datasets import image_samples
    from padim.io.files import write_text
    from padim.io.synthetic import make_demo_dataset
    from padim.jobs.predict import predict_files
    from padim.model.padim import Padim
    from padim.report.evaluation_report import write_evaluation_report

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
    from padim.model.export import export_onnx
    from padim.model.padim import Padim

    check_output_file(args.output)
    model = Padim.load(args.model)
    path = export_onnx(model, args.output)
    _say(args, f"wrote {path} ({model.backbone_dtype} backbone, as fitted)")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from padim.runtime.calibrate import recalibrate_file

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
    from padim.modelfile.info import format_info, model_info

    info = model_info(args.model)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from padim.serve.app import run

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
