"""Native resolution and aspect ratio: accuracy, fit memory and model size by working size.

Each measurement runs in its own Python process and reports its own peak resident memory
(``VmHWM``), as ``padim fit`` and ``padim evaluate`` run for a user:

- ``targets``: bottle at the default working size (256), 512x512 and 768x768, hazelnut at its
  default: fit peak RSS, the fit's own printed estimate, the model file's size, and the
  metrics of ``padim evaluate``; with ``--baseline SRC`` the same fits with another source tree
  (``/work/main/src``: the code before this change) side by side;
- ``rule``: the working size the default rule picks for bottle, hazelnut and a generated
  elongated set (parts of 2048x110 pixels, as in anomalib issue #2532);
- ``elongated``: that set fitted squashed into 256x256, with the default rule (short side
  256) and at its native short side (112): metrics, fit peak RSS, model size;
- ``float16``: the packed float16 precision factors against float32 ones on bottle and
  hazelnut (256): largest map difference over the test set, and the change of each metric;
- ``tiling``: tiled against untiled backbone features on bottle test images at 1024x1024
  (1024 px of real EfficientNet-Lite0, 512-px tiles), and bottle fitted at 512x512 with
  256-px tiles against untiled: metrics;
- ``speed``: with ``--baseline``, fit times of the code before and after, alternating, bottle at
  256 (three rounds) and 512x512 (one round), on this (shared, noisy) machine: medians and ratios;
- ``large``: a model fitted at 3008x4000 (a multiple of the grid stride; tiles, Gaussian grid stride 32) on generated
  4000x3000 images, and the default bottle model: ``padim predict`` of one 4000x3000 image,
  peak RSS above the loaded model (VmHWM reset after loading through ``/proc/self/clear_refs``).

    python benchmarks/native_resolution.py --baseline /work/main/src
    python benchmarks/native_resolution.py --only float16 tiling
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
BOTTLE = Path("/work/shared/data/mvtec_ad/bottle")
HAZELNUT = Path("/work/shared/data/hazelnut_toy/hazelnut")
PARTS = ("rule", "targets", "elongated", "float16", "tiling", "large", "speed")
METRICS = ("image_auroc", "pixel_auroc", "aupro", "image_f1_max")


# --- child processes -------------------------------------------------------------------------


def status(key: str) -> int:
    """A ``/proc/self/status`` entry in bytes (``VmHWM``, ``VmRSS``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def child_cli(argv: list[str]) -> dict:
    """Run one ``padim`` command in this process; its stderr, wall time and peak RSS."""
    from padim.cli.main import main

    err = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stderr(err):
        rc = main(argv)
    return {"rc": rc, "seconds": time.perf_counter() - start, "peak_rss": status("VmHWM"), "stderr": err.getvalue()}


def child_predict_one(model: str, image: str, out: str) -> dict:
    """Open a model, then ``padim predict``'s job on one image; peak RSS above the loaded model."""
    from padim.io.inputs import image_samples
    from padim.jobs.predict import predict_files
    from padim.runtime.opening import open_model

    start = time.perf_counter()
    predictor = open_model(model)
    loaded_seconds = time.perf_counter() - start
    loaded = status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    start = time.perf_counter()
    summary = predict_files(predictor, image_samples([image]), out, overlays="all", batch_size=1)
    return {
        "loaded_rss": loaded,
        "load_seconds": loaded_seconds,
        "predict_seconds": time.perf_counter() - start,
        "peak_rss": status("VmHWM"),
        "above_loaded": status("VmHWM") - loaded,
        "n_images": summary.n_images,
        "image_size": list(predictor.image_size),
    }


def child_float16(data: str) -> dict:
    """Packed float16 factors against float32 ones: map difference and metric changes."""
    import torch

    from padim.eval.evaluation import evaluate_model
    from padim.graph import build
    from padim.graph.modules import OUTPUTS
    from padim.graph.runners import make_runner
    from padim.model.padim import Padim
    from padim.runtime.predictor import Predictor
    from padim.stats.gaussian import precision_cholesky_from_stats

    model = Padim().fit(data, keep_stats=True)
    exact = precision_cholesky_from_stats(model.stats_, model.eps)  # float32, never rounded
    example = {"images": torch.zeros(2, 3, *model.image_size_), "mean": model.mean_, "precision_cholesky": exact,
               "threshold": torch.tensor(1.0), "scale": torch.tensor(1.0)}  # fmt: skip
    runner = make_runner(build.pipeline(model.graph_spec()), example, OUTPUTS, {"images": 0, **dict.fromkeys(OUTPUTS, 0)},
                         bound=("mean", "precision_cholesky"), onnxruntime=True)  # fmt: skip
    reference = Predictor(runner, image_size=model.image_size_, calibration=model.calibration_,
                          config=model.config(), kind="onnxruntime")  # fmt: skip
    a, b = evaluate_model(model.predictor(), data), evaluate_model(reference, data)
    diff = np.abs(a.maps.astype(np.float64) - b.maps)
    return {
        "map_max_abs_diff_rel_to_max": float(diff.max() / np.abs(b.maps).max()),
        "map_max_rel_elementwise": float((diff / np.maximum(np.abs(b.maps), 1e-12)).max()),
        "float32": {k: b.metrics["overall"][k] for k in METRICS},
        "float16": {k: a.metrics["overall"][k] for k in METRICS},
        "labels_identical": bool(np.array_equal(a.scores >= a.threshold, b.scores >= b.threshold)),
        "factor_bytes": {
            "float32_full": exact.numel() * 4,
            "float16_packed": model.precision_cholesky_packed_.numel() * 2,
        },
    }


def child_tile_features(data: str, size: int, tile: int) -> dict:
    """Tiled against untiled EfficientNet-Lite0 features (chosen channels) on test images at size x size."""
    import torch

    from padim.features.backbones import FeatureExtractor
    from padim.features.embedding import select, select_channels, split_channels
    from padim.features.tiling import TilePlan, tiled_features
    from padim.io.datasets import test_samples
    from padim.io.images import load_image, preprocess

    extractor = FeatureExtractor("efficientnet_lite0")
    layer_idx = split_channels(select_channels(176, 100, 0), [i.channels for i in extractor.layer_info])
    plan = TilePlan.make((size, size), tile, extractor.layer_info[-1].stride)
    samples = test_samples(data)[::10]
    worst, far = [], []
    with torch.inference_mode():
        for sample in samples:
            images = torch.from_numpy(preprocess(load_image(sample.path), size))
            whole = select(extractor(images), layer_idx)
            tiled = tiled_features(extractor, images, layer_idx, plan.rows, plan.cols)
            for info, a, b in zip(extractor.layer_info, whole, tiled):
                scale = float(a.abs().max())
                diff = (a - b).abs().amax(dim=(0, 1))  # (H_l, W_l)
                worst.append(float(diff.max()) / scale)
                # cells farther than one margin from every seam between tiles
                seams = [s.core_start for s in plan.rows[1:]]
                cells = torch.arange(diff.shape[0]) * info.stride
                near = torch.zeros(diff.shape[0], dtype=torch.bool)
                for seam in seams:
                    near |= (cells - seam).abs() < plan.margin
                keep = ~near[:, None] & ~near[None, :]
                far.append(float(diff[keep].max()) / scale)
    return {"images": len(samples), "size": size, "tile": tile, "margin": plan.margin, "tiles": len(plan),
            "max_diff_rel_to_layer_max": max(worst), "max_diff_away_from_seams": max(far)}  # fmt: skip


def run_child(kind: str, args: list, src: Path = SRC, timeout: int = 7200) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    command = [sys.executable, __file__, "--child", kind, json.dumps(args)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- parts ---------------------------------------------------------------------------------------


def fit_and_evaluate(data: Path, image_size: str | None, work: Path, name: str, src: Path = SRC,
                     extra: tuple = (), evaluate: bool = True) -> dict:  # fmt: skip
    model = work / f"{name}.padim"
    argv = ["fit", str(data), "-o", str(model), *(["--image-size", image_size] if image_size else []), *extra]
    fit = run_child("cli", argv, src)
    row = {"name": name, "data": data.name, "image_size": image_size or "default", "fit_seconds": fit["seconds"],
           "fit_peak_rss": fit["peak_rss"], "model_bytes": model.stat().st_size,
           "estimate": next((ln for ln in fit["stderr"].splitlines() if "expected peak" in ln), "")}  # fmt: skip
    if evaluate:
        metrics = work / f"{name}.json"
        ev = run_child("cli", ["evaluate", str(model), str(data), "--json", str(metrics)], src)
        overall = json.loads(metrics.read_text())["overall"]
        row.update({k: overall[k] for k in METRICS}, evaluate_peak_rss=ev["peak_rss"], evaluate_seconds=ev["seconds"])
    print(json.dumps({k: v for k, v in row.items() if k != "estimate"}), flush=True)
    return row


def part_rule(work: Path) -> list[dict]:
    from padim.io.datasets import train_samples
    from padim.io.synthetic import make_demo_dataset
    from padim.model.working_size import working_size

    elongated = make_demo_dataset(work / "elongated", 30, 10, 20, size=(110, 2048), name="parts", overwrite=True)
    rows = []
    for data in (BOTTLE, HAZELNUT, elongated):
        paths = [s.path for s in train_samples(data)]
        for short in (256, 112):
            size, reason = working_size(short, paths, 16)
            rows.append({"data": data.name, "image_size": short, "working_size": list(size), "reason": reason})
    return rows


def part_targets(work: Path, baseline: Path | None) -> list[dict]:
    rows = []
    for src, label in [(SRC, "new")] + ([(baseline, "before")] if baseline else []):
        for data, size in ((BOTTLE, None), (BOTTLE, "512x512"), (BOTTLE, "768x768"), (HAZELNUT, None)):
            name = f"{label}-{data.name}-{size or 'default'}"
            rows.append({**fit_and_evaluate(data, size, work, name, src), "code": label})
            (work / f"{name}.padim").unlink()
    return rows


def part_elongated(work: Path) -> list[dict]:
    from padim.io.synthetic import make_demo_dataset

    data = make_demo_dataset(work / "elongated", 30, 10, 20, size=(110, 2048), name="parts", overwrite=True)
    rows = []
    for size in ("256x256", None, "112"):
        rows.append(fit_and_evaluate(data, size, work, f"parts-{size or 'default'}"))
    return rows


def part_large(work: Path) -> list[dict]:
    from PIL import Image

    from padim.io.synthetic import make_demo_dataset

    data = make_demo_dataset(work / "large", 6, 1, 2, size=(3000, 4000), name="large", overwrite=True)
    image = next((data / "test" / "spot").glob("*.png"))
    rows = []
    fit = fit_and_evaluate(data, "3008x4000", work, "large", extra=("--grid-stride", "32", "--holdout", "0"),
                           evaluate=False)  # fmt: skip
    rows.append({**fit, **run_child("predict_one", [str(work / "large.padim"), str(image), str(work / "out-large")])})
    bottle_image = work / "bottle_4000x3000.png"
    Image.open(next((BOTTLE / "test" / "broken_large").glob("*.png"))).convert("RGB").resize((4000, 3000)).save(
        bottle_image
    )
    fit = fit_and_evaluate(BOTTLE, None, work, "bottle-default", evaluate=False)
    rows.append({**fit, **run_child("predict_one", [str(work / "bottle-default.padim"), str(bottle_image),
                                                     str(work / "out-bottle")])})  # fmt: skip
    return rows


def part_speed(work: Path, baseline: Path) -> dict:
    times: dict[str, list[float]] = {}
    for size, rounds in ((None, 3), ("512x512", 1)):
        for _ in range(rounds):
            for src, label in ((baseline, "before"), (SRC, "new")):
                argv = ["fit", str(BOTTLE), "-o", str(work / "speed.padim"), "--quiet"] + (
                    ["--image-size", size] if size else []
                )
                times.setdefault(f"{label}-{size or 256}", []).append(run_child("cli", argv, src)["seconds"])
    result = {key: {"seconds": values, "median": float(np.median(values))} for key, values in times.items()}
    for size in ("256", "512x512"):
        result[f"ratio-{size}"] = result[f"new-{size}"]["median"] / result[f"before-{size}"]["median"]
    return result


def part_tiling(work: Path) -> dict:
    features = run_child("tile_features", [str(BOTTLE), 1024, 512])
    untiled = fit_and_evaluate(BOTTLE, "512x512", work, "bottle-512-untiled", extra=("--tile-size", "0"))
    tiled = fit_and_evaluate(BOTTLE, "512x512", work, "bottle-512-tiled", extra=("--tile-size", "256"))
    return {"features": features, "untiled_512": untiled, "tiled_512_tile256": tiled}


# --- report ------------------------------------------------------------------------------------------


def mb(n: float) -> str:
    return f"{n / 2**20:.0f}"


def markdown(results: dict) -> str:
    lines = ["# Native resolution and aspect ratio", "", f"Machine: {results['machine']}", ""]
    if "rule" in results:
        lines += ["## Working size chosen by the default rule", "", "| data | image_size | working size (HxW) | why |",
                  "|---|---:|---|---|"]  # fmt: skip
        lines += [f"| {r['data']} | {r['image_size']} | {r['working_size'][0]}x{r['working_size'][1]} | {r['reason']} |"
                  for r in results["rule"]]  # fmt: skip
        lines.append("")
    for key, title in (("targets", "Bottle and hazelnut by working size"), ("elongated", "Elongated parts (110x2048)")):
        if key not in results:
            continue
        lines += [f"## {title}", "", "| code | data | --image-size | image AUROC | pixel AUROC | AUPRO | fit s | "
                  "fit peak RSS MiB | model file MiB | evaluate peak RSS MiB |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for r in results[key]:
            cells = [r.get("code", "new"), r["data"], r["image_size"]] + [
                "-" if r.get(k) is None else f"{r[k]:.3f}" for k in ("image_auroc", "pixel_auroc", "aupro")
            ]
            cells += [
                f"{r['fit_seconds']:.0f}",
                mb(r["fit_peak_rss"]),
                mb(r["model_bytes"]),
                mb(r.get("evaluate_peak_rss", 0)),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines += [""] + [f"- {r['name']}: {r['estimate']}" for r in results[key] if r.get("estimate")] + [""]
    if "float16" in results:
        lines += ["## Packed float16 precision factors against float32", "",
                  "| data | map max diff / map max | image AUROC change | pixel AUROC change | AUPRO change | labels identical |",
                  "|---|---:|---:|---:|---:|---|"]  # fmt: skip
        for name, r in results["float16"].items():
            d = {k: r["float16"][k] - r["float32"][k] for k in METRICS}
            lines.append(f"| {name} | {r['map_max_abs_diff_rel_to_max']:.1e} | {d['image_auroc']:+.1e} | "
                         f"{d['pixel_auroc']:+.1e} | {d['aupro']:+.1e} | {r['labels_identical']} |")  # fmt: skip
        lines.append("")
    if "tiling" in results:
        t = results["tiling"]
        f = t["features"]
        lines += ["## Tiling", "",
                  f"Features of {f['images']} bottle test images at {f['size']}x{f['size']} in {f['tiles']} tiles of "
                  f"{f['tile']} px (margin {f['margin']}): largest difference to the untiled features "
                  f"{f['max_diff_rel_to_layer_max']:.2e} of the layer's maximum, {f['max_diff_away_from_seams']:.2e} "
                  "farther than one margin from the seams.", "",
                  "| bottle 512x512 | image AUROC | pixel AUROC | AUPRO | fit peak RSS MiB |", "|---|---:|---:|---:|---:|"]  # fmt: skip
        for name in ("untiled_512", "tiled_512_tile256"):
            r = t[name]
            lines.append(
                f"| {name} | {r['image_auroc']:.3f} | {r['pixel_auroc']:.3f} | {r['aupro']:.3f} | {mb(r['fit_peak_rss'])} |"
            )
        lines.append("")
    if "speed" in results:
        sp = results["speed"]
        lines += ["## Fit time, code before and after, alternating (shared machine: ratios, not absolute times)", "",
                  "| working size | before s (median) | new s (median) | new / before |", "|---|---:|---:|---:|"]  # fmt: skip
        for size in ("256", "512x512"):
            lines.append(f"| {size} | {sp[f'before-{size}']['median']:.0f} | {sp[f'new-{size}']['median']:.0f} | "
                         f"{sp[f'ratio-{size}']:.2f} |")  # fmt: skip
        lines.append("")
    if "large" in results:
        lines += ["## One 4000x3000 image through `padim predict` (with its overlay)", "",
                  "| model | working size | model file MiB | RSS after loading MiB | peak above loaded MiB | predict s |",
                  "|---|---|---:|---:|---:|---:|"]  # fmt: skip
        for r in results["large"]:
            lines.append(f"| {r['name']} | {r['image_size'][0]}x{r['image_size'][1]} | {mb(r['model_bytes'])} | "
                         f"{mb(r['loaded_rss'])} | {mb(r['above_loaded'])} | {r['predict_seconds']:.1f} |")  # fmt: skip
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--baseline", type=Path, help="another source tree to run the 'targets' fits with")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "native_resolution")
    parser.add_argument("--work", type=Path, help="folder for models and generated data (default: a temporary one)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, child_args = args.child[0], json.loads(args.child[1])
        jobs = {"cli": lambda a: child_cli(a), "predict_one": lambda a: child_predict_one(*a),
                "float16": lambda a: child_float16(*a), "tile_features": lambda a: child_tile_features(*a)}  # fmt: skip
        print(json.dumps(jobs[kind](child_args)))
        return

    work = args.work or Path(tempfile.mkdtemp(prefix="padim-native-"))
    work.mkdir(parents=True, exist_ok=True)
    json_path = args.out.with_suffix(".json")
    results = json.loads(json_path.read_text()) if json_path.exists() else {}
    results["machine"] = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    for part in args.only:
        print(f"== {part}", flush=True)
        if part == "rule":
            results["rule"] = part_rule(work)
        elif part == "targets":
            results["targets"] = part_targets(work, args.baseline)
        elif part == "elongated":
            results["elongated"] = part_elongated(work)
        elif part == "float16":
            results["float16"] = {d.name: run_child("float16", [str(d)]) for d in (BOTTLE, HAZELNUT)}
        elif part == "tiling":
            results["tiling"] = part_tiling(work)
        elif part == "large":
            results["large"] = part_large(work)
        elif part == "speed" and args.baseline:
            results["speed"] = part_speed(work, args.baseline)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(markdown(results) + "\n")
    print(markdown(results))


if __name__ == "__main__":
    main()
