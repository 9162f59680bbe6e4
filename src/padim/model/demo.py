"""``padim demo``: a generated inspection set, fitted, evaluated, reported and predicted, offline.

:func:`run_demo` writes into a folder of its own (marked with :data:`DEMO_MARKER`, so that a
later demo may replace its files and never anyone else's): the generated MVTec-style set
(:mod:`padim.io.synthetic`), the model, ``metrics.json``, the HTML report and the overlays of
every test image, and says what it did as it goes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from padim.errors import OutputError
from padim.eval.evaluation import evaluate_model, format_table
from padim.io.files import check_output_folder, write_text
from padim.io.inputs import image_samples
from padim.io.synthetic import make_demo_dataset
from padim.jobs.predict import predict_files
from padim.model.padim import Padim
from padim.report.evaluation_report import write_evaluation_report

#: The file ``padim demo`` leaves in its output folder: only a folder holding it is written over.
DEMO_MARKER = ".padim-demo"


def run_demo(out: str | os.PathLike, *, quiet: bool = False, say: Callable[[str], Any] = print) -> dict:
    """Generate, fit, evaluate, report and predict into ``out``; returns the overall metrics.

    Raises:
        OutputError: when ``out`` holds files the demo did not write.
    """
    out = Path(out)
    check_output_folder(out)
    marker = out / DEMO_MARKER
    if out.is_dir() and any(out.iterdir()) and not marker.is_file():
        raise OutputError(f"-o {out}: folder holds files padim demo did not write; choose an empty or new folder")
    write_text(marker, "written by padim demo: it may replace the files in this folder\n")
    start = time.perf_counter()
    category = make_demo_dataset(out / "data", overwrite=True)
    say(f"generated a synthetic inspection set in {category}")
    model = Padim(image_size=128, seed=0).fit(category, quiet=quiet)
    model_path = model.save(out / "model.padim")
    say(f"fitted {model.n_images_} good images; threshold {model.calibration_.threshold:.4g}; wrote {model_path}")
    predictor = model.predictor()
    evaluation = evaluate_model(predictor, category, quiet=quiet)
    print(format_table(evaluation.metrics))
    write_text(out / "metrics.json", json.dumps(evaluation.metrics, indent=2) + "\n")
    write_evaluation_report(evaluation, predictor.calibration, out / "report", model_path=model_path)
    test_folders = [category / "test" / name for name in sorted(os.listdir(category / "test"))]
    predict_files(predictor, image_samples(test_folders), out / "heatmaps", overlays="all", quiet=True)
    overall = evaluation.metrics["overall"]
    say(f"done in {time.perf_counter() - start:.1f} s: image AUROC {overall['image_auroc']:.3f}, "
        f"pixel AUROC {overall['pixel_auroc']:.3f}; open {out / 'report' / 'index.html'} "
        f"and the overlays in {out / 'heatmaps' / 'overlays'}")  # fmt: skip
    return overall
