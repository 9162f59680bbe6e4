"""The commands that need the training extra (torch): fit, export, demo.

:mod:`padim.cli.main` reaches this module by name, only after :func:`padim.extras.require` has
found the ``train`` extra, so the runtime install answers these commands with one line saying
which extra to install.
"""

from __future__ import annotations

import argparse
import time

from padim.cli.common import decoding, report_skipped, say
from padim.errors import OptionError
from padim.io.files import check_output_file
from padim.model.demo import run_demo
from padim.model.export import export_onnx
from padim.model.incremental import update
from padim.model.padim import Padim
from padim.model.settings import PARAMS


def fit(args: argparse.Namespace) -> int:
    """``padim fit``: a model fitted on good images (or ``--update``: images added to one), saved."""
    check_output_file(args.output)
    if args.weights is not None and args.random_weights:
        raise OptionError("--weights and --random-weights contradict each other: give one")
    params = {name: getattr(args, name) for name in PARAMS if hasattr(args, name)}
    params.update(pretrained=not args.random_weights, layers=None if args.layers is None else
                  [name.strip() for name in args.layers.split(",") if name.strip()])  # fmt: skip
    start, gather = time.perf_counter(), None
    if args.ray is not None:
        from padim.jobs.ray_cluster import INT8_REFUSAL, connect
        from padim.model.distributed import gather as ray_gather

        if args.backbone_dtype == "int8" and args.update is None:  # before starting Ray
            raise OptionError(INT8_REFUSAL)
        connect(args.ray or None)
        gather = ray_gather()
    options = decoding(args)
    if args.update is not None:
        model = update(args.update, args.data, device=args.device, backend=args.backend, gather=gather, **options)
    else:
        options = {k: v for k, v in options.items() if gather is None or k != "workers"}
        model = Padim(**params).fit(args.data, validation=args.validation, keep_stats=args.keep_stats, gather=gather,
                                    **options)  # fmt: skip
    model.save(args.output)
    report_skipped(model.skipped_)
    threshold = "none (no held-out images)" if model.calibration_ is None else f"{model.calibration_.threshold:.4g}"
    say(args, f"fitted {model.n_images_} images in {time.perf_counter() - start:.1f} s ({model.backbone_dtype} "
              f"backbone); threshold {threshold}; wrote {args.output}")  # fmt: skip
    check = model.precision_check_
    if check is not None:
        (f_image, image), (f_pixel, pixel) = check["image_auroc"], check["pixel_auroc"]
        say(args, f"{model.backbone_dtype} against float32 on {check['images']} held-out images with synthetic "
                  f"defects: image AUROC {image:.4f} ({f_image:.4f}), pixel AUROC {pixel:.4f} ({f_pixel:.4f})")  # fmt: skip
    return 0


def export(args: argparse.Namespace) -> int:
    """``padim export``: the whole pipeline written to an ONNX file."""
    check_output_file(args.output)
    model = Padim.load(args.model)
    path = export_onnx(model, args.output, external_data=not args.single_file)
    beside = "" if args.single_file else f" and its tensors {path.name}.data"
    say(args, f"wrote {path}{beside} ({model.backbone_dtype} backbone, as fitted)")
    return 0


def demo(args: argparse.Namespace) -> int:
    """``padim demo``: generate, fit, evaluate, report (:func:`padim.model.demo.run_demo`)."""
    run_demo(args.output, quiet=args.quiet, say=lambda message: say(args, message))
    return 0
