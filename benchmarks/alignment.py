"""Parts that move: the package's alignment (``--align``) against none, on real parts as shipped and moved.

For each data set (MVTec bottle, the hazelnut set) and variant (as shipped; test parts moved;
training and test parts moved: ``benchmarks/moved_dataset.py``, seeded, up to 24/900 of the side and
3 degrees), a model is fitted with today's defaults and ``align`` none, translate and rigid, and
evaluated on the variant's test split (image AUROC, pixel AUROC, AUPRO, with the maps in the images'
own coordinates): the fit's wall time, how many test images were not trusted (of them good), and
the metrics. Speed, side by side in one run, rounds alternating, medians of per-round ratios to
``none``: the model on decoded test tensors (registration and both warps included), and the whole
command, ``padim predict MODEL.onnx TEST -r -o OUT``. Fail closed: the share of foreign inputs
(empty frames, noise, the other data set's parts) that are trusted.

Usage (the moved copies first):

    python benchmarks/moved_dataset.py ../shared/data/mvtec_ad/bottle --seed 0
    python benchmarks/moved_dataset.py ../shared/data/hazelnut_toy/hazelnut --seed 0
    python benchmarks/alignment.py --out benchmarks/results/alignment
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from padim.eval.evaluation import evaluate_model
from padim.io.datasets import test_samples
from padim.io.images import load_image, preprocess
from padim.machine import cpu_info
from padim.model.export import export_onnx
from padim.model.padim import Padim

HERE = Path(__file__).parent
SHARED = HERE.parent.parent / "shared" / "data"
DATASETS = {"bottle": SHARED / "mvtec_ad" / "bottle", "hazelnut": SHARED / "hazelnut_toy" / "hazelnut"}
ALIGNS = ("none", "translate", "rigid")


def variant_path(name: str, variant: str) -> Path:
    if variant == "shipped":
        return DATASETS[name]
    suffix = {"test_moved": "test", "all_moved": "all"}[variant]
    path = HERE / "_work" / "moved" / f"{DATASETS[name].name}_{suffix}" / DATASETS[name].name
    if not path.is_dir():
        sys.exit(f"{path}: missing; run benchmarks/moved_dataset.py {DATASETS[name]} first")
    return path


def quality(name: str, variant: str, align: str) -> dict:
    category = variant_path(name, variant)
    start = time.perf_counter()
    model = Padim(seed=0, align=align).fit(category)
    fit_s = time.perf_counter() - start
    predictor = model.predictor()
    evaluation = evaluate_model(predictor, category)
    overall = evaluation.metrics["overall"]
    untrusted = good_untrusted = 0
    if model.alignment_ is not None:
        for samples in chunks(evaluation.samples, 16):
            found = predictor.predict_batch(preprocess([load_image(s.path) for s in samples], model.image_size_))
            untrusted += int((~found.registration.trusted).sum())
            good_untrusted += int(sum(1 for s, t in zip(samples, found.registration.trusted) if not t and not s.label))
    return dict(data=name, variant=variant, align=align, fit_s=fit_s, image_auroc=overall["image_auroc"],
                pixel_auroc=overall["pixel_auroc"], aupro=overall["aupro"], untrusted=untrusted,
                good_untrusted=good_untrusted,
                threshold=None if model.alignment_ is None else model.alignment_.threshold)  # fmt: skip


def chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def speed(name: str, rounds: int, work: Path) -> dict:
    """Model on decoded tensors and the whole command, align none / translate / rigid, alternating rounds."""
    category = variant_path(name, "test_moved")
    models = {align: Padim(seed=0, align=align).fit(category) for align in ALIGNS}
    images = [load_image(s.path) for s in test_samples(category)]
    batch = preprocess(images, models["none"].image_size_)
    predictors = {align: model.predictor() for align, model in models.items()}
    files = {}
    for align, model in models.items():
        files[align] = export_onnx(model, work / f"{name}_{align}.onnx")
    tensors: dict[str, list] = {a: [] for a in ALIGNS}
    command: dict[str, list] = {a: [] for a in ALIGNS}
    for _ in range(rounds):
        for align in ALIGNS:
            start = time.perf_counter()
            for part in chunks(list(range(len(batch))), 16):
                predictors[align].predict_batch(batch[part[0] : part[-1] + 1])
            tensors[align].append(len(batch) / (time.perf_counter() - start))
            out = work / f"out_{align}"
            shutil.rmtree(out, ignore_errors=True)
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "padim.cli", "predict", str(files[align]), str(category / "test"),
                            "-r", "-o", str(out), "--quiet"], check=True)  # fmt: skip
            command[align].append(len(batch) / (time.perf_counter() - start))

    def ratios(per: dict) -> dict:
        base = np.array(per["none"])
        return {
            a: dict(median_per_s=float(np.median(v)), ratio=float(np.median(np.array(v) / base)))
            for a, v in per.items()
        }

    return dict(data=name, images=len(batch), rounds=rounds, tensors=ratios(tensors), command=ratios(command))


def foreign(name: str, other: str) -> dict:
    """Trusted share of inputs that are not the part: empty frames, noise, the other data set's good parts."""
    model = Padim(seed=0, align="translate").fit(DATASETS[name])
    size = model.image_size_
    rng = np.random.default_rng(0)
    inputs = {
        "empty frames": [Image.new("RGB", (size[1], size[0]), (v, v, v)) for v in (0, 128, 255)],
        "noise": [Image.fromarray(rng.integers(0, 256, (size[0], size[1], 3), dtype=np.uint8)) for _ in range(4)],
        f"{other} parts": [load_image(s.path) for s in test_samples(DATASETS[other]) if not s.label][:8],
        "own good parts": [load_image(s.path) for s in test_samples(DATASETS[name]) if not s.label][:8],
    }
    out = {}
    for kind, images in inputs.items():
        found = model.predictor().predict_batch(preprocess(images, size)).registration
        out[kind] = dict(n=len(images), trusted=int(found.trusted.sum()),
                         confidence=[round(float(c), 4) for c in found.confidence])  # fmt: skip
    return dict(data=name, threshold=model.alignment_.threshold, inputs=out)


def fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def write(result: dict, out: Path) -> None:
    lines = ["# Alignment: the package's registration on moved parts", "",
             f"{result['cpu']}, {result['date']}; `benchmarks/alignment.py` (load at start: {result['load']}). "
             "Metrics in the images' own coordinates; *fit ×*: wall time against `--align none` on the same data "
             "(one fit each); *untrusted (good)*: test images whose registration is not trusted, labelled anomalous.",
             "", "| data set | variant | align | image AUROC | pixel AUROC | AUPRO | fit s | fit × | untrusted (good) |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    base = {(r["data"], r["variant"]): r["fit_s"] for r in result["quality"] if r["align"] == "none"}
    for r in result["quality"]:
        ratio = r["fit_s"] / base[(r["data"], r["variant"])] if (r["data"], r["variant"]) in base else None
        untrusted = "" if r["align"] == "none" else f"{r['untrusted']} ({r['good_untrusted']})"
        lines.append(f"| {r['data']} | {r['variant']} | {r['align']} | {fmt(r['image_auroc'])} | {fmt(r['pixel_auroc'])} "
                     f"| {fmt(r['aupro'])} | {r['fit_s']:.1f} | {fmt(ratio)} | {untrusted} |")  # fmt: skip
    for s in result["speed"]:
        lines += ["", f"## Speed, {s['data']} ({s['images']} moved test images, {s['rounds']} alternating rounds)", "",
                  "| align | model on tensors, images/s | × none | `padim predict` whole command, images/s | × none |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for align in ALIGNS:
            t, c = s["tensors"][align], s["command"][align]
            lines.append(
                f"| {align} | {t['median_per_s']:.1f} | {t['ratio']:.2f} | {c['median_per_s']:.1f} | {c['ratio']:.2f} |"
            )
    for f in result["foreign"]:
        lines += ["", f"## Fail closed, {f['data']} (`--align translate`, trust threshold {f['threshold']:.4f})", "",
                  "| inputs | n | trusted | confidences |", "|---|---|---|---|"]  # fmt: skip
        for kind, v in f["inputs"].items():
            lines.append(f"| {kind} | {v['n']} | {v['trusted']} | {', '.join(map(str, v['confidence']))} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--variants", nargs="+", default=["shipped", "test_moved", "all_moved"])
    parser.add_argument("--aligns", nargs="+", default=list(ALIGNS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip", nargs="*", default=[], choices=["quality", "speed", "foreign"])
    parser.add_argument("--out", type=Path, default=HERE / "results" / "alignment")
    args = parser.parse_args()
    info = cpu_info()
    result = dict(cpu=f"{info.model} ({', '.join(sorted(info.flags))})",
                  date=datetime.date.today().isoformat(), load=open("/proc/loadavg").read().split()[0],
                  quality=[], speed=[], foreign=[])  # fmt: skip
    if "quality" not in args.skip:
        for name in args.datasets:
            for variant in args.variants:
                for align in args.aligns:
                    result["quality"].append(quality(name, variant, align))
                    print(json.dumps(result["quality"][-1]), file=sys.stderr, flush=True)
    if "speed" not in args.skip:
        with tempfile.TemporaryDirectory() as work:
            for name in args.datasets:
                result["speed"].append(speed(name, args.rounds, Path(work)))
                print(json.dumps(result["speed"][-1]), file=sys.stderr, flush=True)
    if "foreign" not in args.skip:
        for name, other in zip(args.datasets, args.datasets[::-1]):
            result["foreign"].append(foreign(name, other))
    write(result, args.out)


if __name__ == "__main__":
    main()
