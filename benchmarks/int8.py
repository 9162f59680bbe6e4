"""int8 against float32: calibration cost against quality, parity, and the whole ``padim`` jobs.

Run from the repository root:

    python benchmarks/int8.py --bottle ../shared/data/mvtec_ad/bottle \\
        --hazelnut ../shared/data/hazelnut_toy/hazelnut --out benchmarks/results/int8

Parts (EfficientNet-Lite0, 256 px, d=100, seed 0, 2 threads):

1. quality: on each data set, float32 and then int8 for every calibration method (MinMax,
   Entropy, Percentile) and number of calibration images (8, 16, 32, 64), plus MinMax on 32
   images with full 8-bit weights: image and pixel AUROC (scikit-learn) on the test images, and
   the cost of calibrating (:func:`padim.graph.quantize.calibrate` alone, median of 3, beside a float32
   embedding of the same images). Models are fitted on all training images, pre-processed once
   and streamed in a seeded random order, so the first N (the calibration set) are a seeded
   random subset, as ``padim fit`` draws them from files.
2. parity: the int8 ``.padim`` model against its ``.onnx`` export on bottle's test images.
3. jobs: ``padim fit DATA -o MODEL [--backbone-dtype int8]`` and ``padim predict MODEL test/* -o OUT``
   as a user runs them (decoding, overlays, CSV; one process per command, imports included),
   float32 and int8 alternating, medians.

The speed of fit and predict on the same tensors, side by side with anomalib 2.7, is measured by
``compare_anomalib.py`` (its ``int8`` row). Results: ``<out>.md`` and ``<out>.json``. The machine
is shared with other jobs: compare within a table, read ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from compare_anomalib import bottle_cache, machine_info  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"
METHODS = ("minmax", "entropy", "percentile")
COUNTS = (8, 16, 32, 64)


def load_cache(prefix: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train in a seeded random order, test, labels, masks) from a :func:`bottle_cache` prefix."""
    parts, i = [], 0
    while Path(f"{prefix}_train_{i}.npy").exists():
        parts.append(np.load(f"{prefix}_train_{i}.npy"))
        i += 1
    train = np.concatenate(parts)
    cached = np.load(prefix + ".npz")
    return train[np.random.default_rng(seed).permutation(len(train))], cached["test"], cached["labels"], cached["masks"]


def histogram_calibrate(method: str):
    """A stand-in for :func:`padim.graph.quantize.calibrate` with onnxruntime's Entropy or Percentile calibrator."""

    def run(graph: bytes, images: np.ndarray, batch_size: int = 8):
        import onnx
        from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod
        from onnxruntime.quantization.calibrate import create_calibrator

        import padim.graph.quantize as q

        model = q.optimized(graph) if isinstance(graph, bytes) else graph
        wanted = sorted(set(q.backbone_activations(model)[1].values()))
        # onnxruntime's histogram collectors stack the batches' arrays: every batch must have one
        # shape, so the largest divisor of the image count up to batch_size.
        batch_size = max(k for k in range(1, batch_size + 1) if len(images) % k == 0)
        batches = iter([images[i : i + batch_size] for i in range(0, len(images), batch_size)])

        class Reader(CalibrationDataReader):
            def get_next(self):
                batch = next(batches, None)
                return None if batch is None else {"images": np.ascontiguousarray(batch, dtype=np.float32)}

        with tempfile.TemporaryDirectory() as tmp:
            onnx.save(model, f"{tmp}/float.onnx")
            calibrator = create_calibrator(
                Path(f"{tmp}/float.onnx"),
                list(q.OP_TYPES),
                augmented_model_path=f"{tmp}/augmented.onnx",
                calibrate_method=CalibrationMethod.Entropy if method == "entropy" else CalibrationMethod.Percentile,
                # Percentile defaults to symmetric ranges: half of uint8 wasted after ReLU6.
                extra_options={"symmetric": False},
            )
            calibrator.collect_data(Reader())
            data = calibrator.compute_data()
        ranges = {q.canonical(n): tuple(float(np.asarray(v).item()) for v in data[n].range_value) for n in wanted}
        return q.Quantization(ranges, method, len(images), q.WEIGHT_BITS)

    return run


def calibration(method: str):
    """The calibration function for ``method``: padim's own (MinMax) or onnxruntime's."""
    import padim.graph.quantize

    return padim.graph.quantize.calibrate if method == "minmax" else histogram_calibrate(method)


def fit_and_score(train, test, labels, masks, precision="float32", method="minmax", n_images=32, weight_bits=7):
    """Fit on the stream of ``train``; AUROCs on ``test``; returns a result dict and the model."""
    from sklearn.metrics import roc_auc_score

    import padim.graph.quantize
    import padim.model.fitting
    from padim.model.padim import Padim

    saved = padim.model.fitting.int8_calibration, padim.graph.quantize.calibrate
    padim.model.fitting.int8_calibration = partial(saved[0], n_images=n_images)
    padim.graph.quantize.calibrate, padim.graph.quantize.WEIGHT_BITS = calibration(method), weight_bits
    try:
        start = time.perf_counter()
        model = Padim(backbone_dtype=precision).fit(train[i : i + 32] for i in range(0, len(train), 32))
        fit_s = time.perf_counter() - start
    finally:
        (padim.model.fitting.int8_calibration, padim.graph.quantize.calibrate), padim.graph.quantize.WEIGHT_BITS = (
            saved,
            7,
        )
    maps = np.concatenate([model.predict(test[i : i + 32]).anomaly_map for i in range(0, len(test), 32)])
    result = dict(
        backbone_dtype=precision,
        image_auroc=float(roc_auc_score(labels, maps.reshape(len(maps), -1).max(1))),
        pixel_auroc=float(roc_auc_score(masks.ravel() > 0, maps.ravel())),
        fit_s=fit_s,
    )
    if precision == "int8":
        result.update(method=method, n_images=model.quantization_.n_images, weight_bits=weight_bits)
    return result, model


def calibration_cost(model, train, method: str, n_images: int, rounds: int = 3) -> dict:
    """Seconds to calibrate on ``n_images`` (median), and to embed them in float32, in this process."""
    import torch

    from padim.graph.modules import Embedder
    from padim.graph.trace import onnx_bytes
    from padim.runtime.ort import OrtRunner

    graph = onnx_bytes(
        Embedder(model.extractor_, model.channel_idx_),
        {"images": torch.zeros(2, 3, *model.image_size_)},
        ["patches"],
        {"images": 0, "patches": 1},
    )
    images, runner = train[:n_images], OrtRunner(graph)
    runner(images=images[:8])
    calibrate_s, embed_s = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        calibration(method)(graph, images)
        calibrate_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        for i in range(0, len(images), 8):
            runner(images=images[i : i + 8])
        embed_s.append(time.perf_counter() - start)
    return dict(calibrate_s=statistics.median(calibrate_s), float_embed_s=statistics.median(embed_s))


def quality(name: str, prefix: str) -> dict:
    train, test, labels, masks = load_cache(prefix)
    print(f"... {name}: float32", file=sys.stderr, flush=True)
    reference, model = fit_and_score(train, test, labels, masks)
    rows = []
    for method in METHODS:
        # onnxruntime's histogram calibrators cost several times MinMax: fewer sizes for them.
        for n in sorted({min(n, len(train)) for n in (COUNTS if method == "minmax" else (8, 32))}):
            print(f"... {name}: int8 {method} {n}", file=sys.stderr, flush=True)
            result, _ = fit_and_score(train, test, labels, masks, "int8", method, n)
            result.update(calibration_cost(model, train, method, n))
            rows.append(result)
            print(f"    {json.dumps(result)}", file=sys.stderr, flush=True)
    print(f"... {name}: int8 minmax 32, 8-bit weights", file=sys.stderr, flush=True)
    result, _ = fit_and_score(train, test, labels, masks, "int8", "minmax", 32, weight_bits=8)
    rows.append(result)
    return dict(float32=reference, int8=rows, n_train=len(train), n_test=len(test))


def parity(prefix: str, workdir: Path) -> dict:
    from padim.model.export import export_onnx
    from padim.runtime.opening import open_model

    train, test, _, _ = load_cache(prefix)
    _, model = fit_and_score(train, test[:1], np.array([0]), np.zeros((1, 256, 256)), "int8")
    padim_file, onnx_file = model.save(workdir / "parity.padim"), export_onnx(model, workdir / "parity.onnx")
    a, b = open_model(padim_file).predict(test), open_model(onnx_file).predict(test)
    return dict(
        max_abs=float(np.abs(a.anomaly_map - b.anomaly_map).max()),
        max_relative_to_max=float(np.abs(a.anomaly_map - b.anomaly_map).max() / np.abs(a.anomaly_map).max()),
        labels_equal=(a.label is None) == (b.label is None) and (a.label is None or bool((a.label == b.label).all())),
        n_images=len(test),
    )


def run_command(args: list[str]) -> float:
    """Wall seconds of ``python -m padim.cli.main ARGS`` in a fresh process (imports included)."""
    env = dict(os.environ, PYTHONPATH=str(SRC))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "padim.cli.main", *args], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"padim {' '.join(args)} failed: {done.stderr.strip().splitlines()[-1:]}")
    return seconds


def jobs(data: Path, workdir: Path, fit_rounds: int, predict_rounds: int) -> dict:
    """The padim command as a user runs it, float32 and int8 alternating."""
    from padim.model.export import export_onnx

    models = {p: workdir / f"{p}.padim" for p in ("float32", "int8")}
    fit: dict = {p: [] for p in models}
    for _ in range(fit_rounds):
        for precision, path in models.items():
            print(f"... padim fit --backbone-dtype {precision}", file=sys.stderr, flush=True)
            fit[precision].append(
                run_command(["fit", str(data), "-o", str(path), "--backbone-dtype", precision, "--quiet"])
            )
    files = {f"{p} .padim": path for p, path in models.items()}
    files.update({f"{p} .onnx": export_onnx(path, path.with_suffix(".onnx")) for p, path in models.items()})
    inputs = sorted(str(d) for d in (data / "test").iterdir() if d.is_dir())
    n_images = sum(len([f for f in Path(d).iterdir() if f.suffix.lower() in (".png", ".jpg")]) for d in inputs)
    predict: dict = {k: [] for k in files}
    for _ in range(predict_rounds):
        for label, path in files.items():
            print(f"... padim predict {label}", file=sys.stderr, flush=True)
            out = workdir / f"out-{label.replace(' ', '')}"
            predict[label].append(run_command(["predict", str(path), *inputs, "-o", str(out), "--quiet"]))
    return dict(
        n_images=n_images,
        fit_s={k: statistics.median(v) for k, v in fit.items()},
        fit_s_all=fit,
        predict_s={k: statistics.median(v) for k, v in predict.items()},
        predict_s_all=predict,
    )


def render(report: dict) -> str:
    m = report["machine"]
    out = [
        "# int8 against float32",
        "",
        f"Written by `benchmarks/int8.py` ({report['started']} to {report['finished']}); {m['cpu_count']} CPU cores, "
        f"{m['threads']} threads, onnxruntime {m['onnxruntime']}, torch {m['torch']}; load average at start "
        f"{' / '.join(f'{v:.1f}' for v in m['load_average_at_start'])}. The machine is shared: compare within a "
        "table. EfficientNet-Lite0, 256 px, d=100, seed 0; int8 = QDQ, per-channel int8 weights (7-bit range unless "
        "said), uint8 activations, the backbone's Conv/Clip/Add quantised, PaDiM's head in float32.",
        "",
    ]
    for name, q in report.get("quality", {}).items():
        ref = q["float32"]
        out += [
            f"## {name}: calibration against quality ({q['n_train']} training, {q['n_test']} test images)",
            "",
            f"float32: image AUROC {ref['image_auroc']:.4f}, pixel AUROC {ref['pixel_auroc']:.4f}.",
            "",
            "| method | images | weights | image AUROC | Δ | pixel AUROC | Δ | calibration s | float32 embedding of "
            "the same images s |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in q["int8"]:
            cost = (f"{r['calibrate_s']:.2f} | {r['float_embed_s']:.2f}") if "calibrate_s" in r else "– | –"
            out.append(
                f"| {r['method']} | {r['n_images']} | {r['weight_bits']}-bit | {r['image_auroc']:.4f} | "
                f"{r['image_auroc'] - ref['image_auroc']:+.4f} | {r['pixel_auroc']:.4f} | "
                f"{r['pixel_auroc'] - ref['pixel_auroc']:+.4f} | {cost} |"
            )
        out.append("")
    if "parity" in report:
        p = report["parity"]
        out += [
            "## Parity: the int8 .padim model against its .onnx export (bottle test images)",
            "",
            f"max |Δ| = {p['max_abs']:.3g}, {p['max_relative_to_max']:.2e} of the map maximum (target 1e-4); "
            f"labels equal: {p['labels_equal']} ({p['n_images']} images).",
            "",
        ]
    if "jobs" in report:
        j = report["jobs"]
        out += [
            f"## The whole job on bottle ({j['n_images']} test images; one process per command, imports included)",
            "",
            "`padim fit ../shared/data/mvtec_ad/bottle -o MODEL [--backbone-dtype int8]` (decoding 209 PNGs, "
            "hold-out threshold):",
            "",
            "| backbone | fit s (median) | runs |",
            "|---|---:|---|",
            *[f"| {k} | {v:.1f} | {', '.join(f'{x:.1f}' for x in j['fit_s_all'][k])} |" for k, v in j["fit_s"].items()],
            "",
            "`padim predict MODEL test/broken_large test/broken_small test/contamination test/good -o OUT` "
            "(decoding, maps, overlays, CSV):",
            "",
            "| model | predict s (median) | images/s | runs |",
            "|---|---:|---:|---|",
            *[
                f"| {k} | {v:.1f} | {j['n_images'] / v:.1f} | {', '.join(f'{x:.1f}' for x in j['predict_s_all'][k])} |"
                for k, v in j["predict_s"].items()
            ],
            "",
        ]
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bottle", type=Path, default=Path("../shared/data/mvtec_ad/bottle"))
    parser.add_argument("--hazelnut", type=Path, default=Path("../shared/data/hazelnut_toy/hazelnut"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/int8"))
    parser.add_argument("--cache", type=Path, default=Path("/tmp/padim_bench_cache"))
    parser.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 2))
    parser.add_argument("--fit-rounds", type=int, default=2)
    parser.add_argument("--predict-rounds", type=int, default=3)
    parser.add_argument("--skip", nargs="*", default=[], choices=["quality", "parity", "jobs"])
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    report: dict = {"machine": machine_info(args.threads), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    prefixes = {name: bottle_cache(path, 256, args.cache) for name, path in
                (("MVTec bottle", args.bottle), ("hazelnut toy", args.hazelnut))}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="padim-int8-bench-") as tmp:
        if "quality" not in args.skip:
            report["quality"] = {}
            for name, prefix in prefixes.items():  # each data set's result kept, so a rerun resumes
                done = args.out.parent / f".{args.out.name}-quality-{name.replace(' ', '_')}.json"
                if not done.exists():
                    done.parent.mkdir(parents=True, exist_ok=True)
                    done.write_text(json.dumps(quality(name, prefix)))
                report["quality"][name] = json.loads(done.read_text())
        if "parity" not in args.skip:
            report["parity"] = parity(prefixes["MVTec bottle"], Path(tmp))
        if "jobs" not in args.skip:
            report["jobs"] = jobs(args.bottle, Path(tmp), args.fit_rounds, args.predict_rounds)
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(render(report))
    print(render(report))


if __name__ == "__main__":
    main()
