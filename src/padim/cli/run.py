"""The commands that run a trained model, in the runtime install (no torch): predict, evaluate, calibrate, info, serve.

Each parses nothing (the parser did), calls the library and prints. Heavy modules (the web
framework, Ray) are imported by the command that needs them, so ``padim info`` starts at once.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from padim.cli.common import decoding, report_skipped, say, sigterm_as_interrupt
from padim.errors import ModelFileError, OptionError
from padim.io.files import check_output_file, check_output_folder, write_text
from padim.io.inputs import image_samples
from padim.progress import phase
from padim.runtime.opening import open_model

#: ``padim predict`` finished, but some image's score was not a finite number (its label: error).
EXIT_NO_VERDICT = 3


def _opened(args: argparse.Namespace) -> Any:
    with phase(f"opening {args.model}", args.quiet):
        predictor = open_model(args.model, device=args.device, backend=args.backend, executor=args.executor)
    say(args, f"padim: {args.model} runs in {predictor.describe()}")
    return predictor if args.threshold is None else predictor.with_threshold(args.threshold)


def predict(args: argparse.Namespace) -> int:
    """``padim predict``: the batch job (:func:`padim.jobs.predict.predict_files`), here or on Ray."""
    from padim.jobs.predict import predict_files

    if not Path(args.model).is_file():  # before listing the images, as open_model would
        raise ModelFileError(f"{args.model}: model file not found")
    check_output_folder(args.output)
    with phase(f"listing the images in {' '.join(args.inputs)}", args.quiet):
        samples = _ray_inputs(args) if args.ray is not None else image_samples(args.inputs, recursive=args.recursive)
    if args.output is None and len(samples) > 1:
        raise OptionError(f"-o OUTDIR is needed for {len(samples)} images (without it, give one image)")
    on_row = (lambda row: print(row.verdict(), flush=True)) if args.output is None else None
    start = time.perf_counter()
    with sigterm_as_interrupt():
        if args.ray is not None:
            summary = _predict_on_ray(args, samples, on_row)
        else:
            predictor = _opened(args)
            summary = predict_files(predictor, samples, args.output, overlays=args.overlays,
                                    overlay_format=args.overlay_format, on_row=on_row,
                                    **decoding(args, predictor.image_size))  # fmt: skip
    report_skipped(summary.skipped)
    if hasattr(summary, "line"):  # a Ray job: the cluster, what it lost and redid, what it cost the driver
        say(args, summary.line())
    if summary.left_out:
        say(args, f"padim: left out {summary.left_out} image(s) inside the output folder {args.output}")
    if args.output is not None:
        seconds = time.perf_counter() - start
        say(args, f"predicted {summary.n_images} images ({summary.n_anomalous} anomalous, {summary.n_overlays} "
                  f"overlays) in {seconds:.1f} s, {summary.n_images / max(seconds, 1e-9):.1f} images/s; "
                  f"wrote {summary.csv_path}")  # fmt: skip
    for path in summary.errors:
        print(f"padim predict: error: {path}: the score is not a finite number; labelled error", file=sys.stderr)
    return EXIT_NO_VERDICT if summary.errors else 0


def _ray_inputs(args: argparse.Namespace) -> list:
    """``padim predict --ray``'s images: paths, and URLs of object storage or web servers (:mod:`padim.jobs.storage`)."""
    from padim.jobs.storage import image_locations

    return image_locations(args.inputs, recursive=args.recursive)


def _predict_on_ray(args: argparse.Namespace, samples: list, on_row: Any) -> Any:
    """``padim predict --ray``: the batch job on a Ray cluster (:func:`padim.jobs.ray_predict.predict_files`)."""
    from padim.jobs.ray_cluster import connect
    from padim.jobs.ray_predict import predict_files
    from padim.jobs.storage import location
    from padim.modelfile.info import model_info

    connect(args.ray or None)
    size = decoding(args, model_info(args.model)["config"]["image_size"]).get("batch_size", args.batch_cap)
    return predict_files(args.model, samples, location(args.output), overlays=args.overlays,
                         overlay_format=args.overlay_format, batch_size=size, device=args.device, backend=args.backend,
                         executor=args.executor, threshold=args.threshold, skip_bad=args.skip_bad, quiet=args.quiet, on_row=on_row)  # fmt: skip


def evaluate(args: argparse.Namespace) -> int:
    """``padim evaluate``: metrics on a labelled test set, the table, and optionally JSON and the HTML report."""
    from padim.eval.evaluation import evaluate_model, format_table
    from padim.report.evaluation_report import evaluation_summary, write_evaluation_report

    check_output_file(args.json_file, "--json")
    check_output_folder(args.report, "--report")
    predictor = _opened(args)
    evaluation = evaluate_model(predictor, args.data, **decoding(args, predictor.image_size))
    print(format_table(evaluation.metrics))
    if args.json_file:
        summary = evaluation_summary(evaluation, predictor.calibration, args.model, args.data)
        write_text(args.json_file, json.dumps(summary, indent=2) + "\n")
        say(args, f"wrote {args.json_file}")
    if args.report:
        write_evaluation_report(evaluation, predictor.calibration, args.report, model_path=args.model,
                                config=predictor.config)  # fmt: skip
        say(args, f"wrote {Path(args.report) / 'index.html'}")
    report_skipped(evaluation.skipped)
    return 0


def calibrate(args: argparse.Namespace) -> int:
    """``padim calibrate``: new thresholds written into the ``.padim`` file (:mod:`padim.jobs.recalibrate`)."""
    from padim.jobs.recalibrate import recalibrate_file

    if args.f1 and args.defective is None:
        raise OptionError("--f1 needs --good DIR and --defective DIR")
    check_output_file(args.output if args.output is not None else Path(args.model))
    change = recalibrate_file(args.model, threshold=args.threshold, good=args.good, defective=args.defective,
                              quantile=args.quantile, recall=args.recall, pixel_threshold=args.pixel_threshold,
                              pixel_quantile=args.pixel_quantile, output=args.output, device=args.device,
                              backend=args.backend, executor=args.executor, **decoding(args))  # fmt: skip
    print("\n".join(change.lines()))
    return 0


def info(args: argparse.Namespace) -> int:
    """``padim info``: what a model file holds, from its header alone."""
    from padim.machine import cpu_info
    from padim.modelfile.info import format_info, model_info
    from padim.runtime.executors import expected

    found = model_info(args.model)
    config = found["config"]
    found["cpu"] = cpu_info().describe()
    found["executor"] = expected(config, config.get("backbone_dtype") or "float32").describe()
    print(json.dumps(found, indent=2) if args.json else format_info(found))
    return 0


def serve(args: argparse.Namespace) -> int:
    """``padim serve``: the web service until interrupted (:mod:`padim.serve`)."""
    from padim.serve.run import run

    if args.verdict_log is not None and not args.no_verdict_log:
        check_output_file(args.verdict_log, "--verdict-log")
    run(args.model, host=args.host, port=args.port, workers=args.server_workers, max_upload_mb=args.max_upload_mb,
        threshold=args.threshold, executor=args.executor, verdict_log=None if args.no_verdict_log else args.verdict_log,
        log_max_mb=args.log_max_mb, log_keep=args.log_keep, drift_window=args.drift_window,
        drift_factor=args.drift_factor)  # fmt: skip
    return 0
