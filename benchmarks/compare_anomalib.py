"""anomalib 2.7 against padim-toolkit on the same data, backbone weights and channel indices.

Needs the ``bench`` extra (``pip install -e .[bench]``: anomalib 2.7.0). Run from the
repository root:

    python benchmarks/compare_anomalib.py --data ../shared/data/mvtec_ad/bottle --out benchmarks/results/speed

Images are decoded and pre-processed (``padim.io.images.preprocess``) once, before any
timing, into a cache; every measurement then runs in its own subprocess, which reports its
wall time and its peak resident memory (``VmHWM`` of /proc/self/status, i.e. the process's
own high-water mark, so measurements do not leak into each other). Parts:

1. MVTec bottle, EfficientNet-Lite0 (pretrained) layers ``_blocks.2/4/10``, 256 px, d=100:
   fit time and peak RSS, predict throughput (batch 32, after one warm-up batch), the
   largest map difference between anomalib and us, image and pixel AUROC (scikit-learn),
   and PaDiM's own share of predict time (predict minus backbone, over predict). padim runs in
   eager torch, in onnxruntime, and in onnxruntime with the int8 backbone (``backbone_dtype="int8"``,
   calibrated on the first 32 images of the training stream; its calibration is timed apart).
2. Fit peak RSS on N=200 and N=2000 random 128x128 images (generated batch by batch).
3. wide_resnet50_2 with random weights, d=550, on bottle at ``--wrn-size`` px: model file
   size, predict throughput, fit time and peak RSS.

anomalib is driven through its ``PadimModel`` (torch model, no Lightning ``Engine``, which
only adds overhead): ``train()`` + forward per batch fills its memory bank, ``fit()`` fits the
Gaussian, ``eval()`` + forward gives its anomaly maps. Its backbone is the full network with
our weights (an ``nn.Module``, through torchvision's feature extraction), and our channel
indices are copied into its ``idx`` buffer. anomalib adds 1e-5 * I to the covariance on top of
eps = 0.01, so the map comparison runs padim with ``eps=0.01001``; the AUROCs use the default.

Results: ``<out>.md`` and ``<out>.json``. The machine is usually shared: compare ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

LITE0_LAYERS = ["_blocks.2", "_blocks.4", "_blocks.10"]
WRN_LAYERS = ["layer1", "layer2", "layer3"]
ANOMALIB_EPS = 0.01 + 1e-5  # MultiVariateGaussian: 0.01 * I, then + 1e-5 * I "to stabilise"


# --------------------------------------------------------------------------- helpers


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def batches(array: np.ndarray, batch_size: int) -> Iterator[Any]:
    import torch

    for start in range(0, len(array), batch_size):
        yield torch.from_numpy(np.ascontiguousarray(array[start : start + batch_size]))


def random_batches(n_images: int, size: int, batch_size: int, seed: int = 0) -> Iterator[Any]:
    """Random normalised images made batch by batch, so the data set itself takes no memory."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    for start in range(0, n_images, batch_size):
        yield torch.randn(min(batch_size, n_images - start), 3, size, size, generator=generator)


def file_batches(prefix: str, batch_size: int) -> Iterator[Any]:
    """The training set as pre-processed batches read from ``<prefix>_train_<i>.npy`` one at a time.

    As a DataLoader would stream them: the whole set is never in memory at once, so the
    peak RSS of a fit is the library's own, not the data set's.
    """
    import torch

    i = 0
    while Path(f"{prefix}_train_{i}.npy").exists():
        array = np.load(f"{prefix}_train_{i}.npy")
        for start in range(0, len(array), batch_size):
            yield torch.from_numpy(np.ascontiguousarray(array[start : start + batch_size]))
        i += 1


def bottle_cache(data: Path, size: int, cache: Path, chunk: int = 32) -> str:
    """Decode and pre-process the MVTec category once, at ``size``; returns the cache prefix.

    Writes ``<prefix>.npz`` (test images, labels and masks) and the training images in files
    of ``chunk`` images, ``<prefix>_train_<i>.npy``.
    """
    prefix = str(cache / f"{data.name}_{size}")
    if Path(prefix + ".npz").exists():
        return prefix
    from padim.io.datasets import mvtec_samples
    from padim.io.images import load_image, load_mask, preprocess

    train = mvtec_samples(data, "train")
    test = mvtec_samples(data, "test")
    masks = np.stack(
        [load_mask(s.mask_path, size)[0] if s.mask_path else np.zeros((size, size), np.uint8) for s in test]
    )
    cache.mkdir(parents=True, exist_ok=True)
    for i, start in enumerate(range(0, len(train), chunk)):
        np.save(f"{prefix}_train_{i}.npy", preprocess([load_image(s.path) for s in train[start : start + chunk]], size))
    np.savez(
        prefix + ".npz",
        test=preprocess([load_image(s.path) for s in test], size),
        labels=np.array([s.label for s in test], np.int64),
        masks=masks,
    )
    return prefix


# --------------------------------------------------------------------------- model builders


def channel_indices(backbone: str, layers: list[str], n_features: int, seed: int):
    from padim.features.backbones import resolve_layers
    from padim.features.embedding import select_channels

    return select_channels(sum(info.channels for info in resolve_layers(backbone, layers)), n_features, seed)


def make_padim(cfg: dict, backend: str, eps: float = 0.01, precision: str = "float32"):
    """A padim model for ``cfg`` run by ``backend`` ("torch" or "onnxruntime"), in ``precision``."""
    from padim.model.padim import Padim

    return Padim(
        backbone=cfg["backbone"],
        layers=cfg["layers"],
        n_features=cfg["n_features"],
        image_size=cfg["size"],
        pretrained=cfg["pretrained"],
        seed=0,
        eps=eps,
        backend=backend,
        backbone_dtype=precision,
    )


def load_padim(path: Path, backend: str):
    from padim.model.padim import Padim

    return Padim.load(path, backend=backend)


def full_backbone(cfg: dict):
    """The whole network (as anomalib wants it) with exactly the weights padim uses."""
    import torch

    from padim.features.backbones import FeatureExtractor, get_spec

    extractor = FeatureExtractor(cfg["backbone"], cfg["layers"], pretrained=cfg["pretrained"], seed=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        network = get_spec(cfg["backbone"]).build()
    missing, unexpected = network.load_state_dict(extractor.body.state_dict(), strict=False)
    assert not unexpected, unexpected
    return network.eval()


def make_anomalib(cfg: dict):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from anomalib.models.image.padim.torch_model import PadimModel

        model = PadimModel(
            backbone=full_backbone(cfg), layers=cfg["layers"], pre_trained=False, n_features=cfg["n_features"]
        )
    idx = channel_indices(cfg["backbone"], cfg["layers"], cfg["n_features"], 0)
    model.idx.copy_(idx)
    return model


# --------------------------------------------------------------------------- workers (one per subprocess)


def worker_anomalib_fit(cfg: dict, job: dict) -> dict:
    import torch

    model = make_anomalib(cfg)
    if job.get("single_thread_inverse"):
        # torch.linalg.inv on a batch of 550x550 float32 matrices fails with more than one
        # thread here (MKL: "Parameter 6 was incorrect on entry to SLASWP", then lu_solve
        # raises); with one thread it works. anomalib's fit calls it once, at the end.
        inverse = torch.linalg.inv

        def inv_one_thread(a, *args, **kwargs):
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                return inverse(a, *args, **kwargs)
            finally:
                torch.set_num_threads(threads)

        torch.linalg.inv = inv_one_thread
    base = current_rss_mb()
    model.train()
    start = time.perf_counter()
    source = (
        file_batches(job["data"], cfg["batch"])
        if job.get("data")
        else random_batches(job["n"], cfg["size"], cfg["batch"])
    )
    for batch in source:
        model(batch)
    embedded = time.perf_counter()
    model.fit()
    end = time.perf_counter()
    result = dict(
        fit_s=end - start,
        embed_s=embedded - start,
        gaussian_s=end - embedded,
        rss_before_mb=base,
        peak_rss_mb=peak_rss_mb(),
    )
    if job.get("save"):
        torch.save({"mean": model.gaussian.mean, "inv_covariance": model.gaussian.inv_covariance}, job["save"])
        state = job["save"] + ".state_dict.pt"
        torch.save(model.state_dict(), state)
        result["model_file_mb"] = os.path.getsize(state) / 2**20
        os.remove(state)
    return result


def worker_anomalib_predict(cfg: dict, job: dict) -> dict:
    import torch

    model = make_anomalib(cfg)
    stats = torch.load(job["stats"], weights_only=True)
    model.gaussian.mean = stats["mean"]
    model.gaussian.inv_covariance = stats["inv_covariance"]
    model.eval()
    test = np.load(job["data"] + ".npz")["test"]

    def predict():
        return [model(b).anomaly_map[:, 0] for b in batches(test, cfg["batch"])]

    def backbone():
        with torch.no_grad():
            for b in batches(test, cfg["batch"]):
                model.generate_embedding(model.feature_extractor(b))

    model(torch.from_numpy(test[: cfg["batch"]]))  # warm-up
    predict_s, backbone_s = [], []
    for _ in range(job["rounds"]):
        start = time.perf_counter()
        maps = predict()
        predict_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        backbone()
        backbone_s.append(time.perf_counter() - start)
    np.save(job["maps"], torch.cat(maps).numpy())
    return timing(len(test), predict_s, backbone_s)


def worker_padim_fit(cfg: dict, job: dict) -> dict:
    import padim.model.fitting

    model = make_padim(cfg, job["backend"], job.get("eps", 0.01), job.get("precision", "float32"))
    base = current_rss_mb()
    timers = {"embed_s": 0.0, "calibrate_s": 0.0}
    embed, calibrate_model = model.embed, padim.model.fitting.int8_calibration

    def timed(function, key):
        def run(*args, **kwargs):
            start = time.perf_counter()
            out = function(*args, **kwargs)
            timers[key] += time.perf_counter() - start
            return out

        return run

    model.embed = timed(embed, "embed_s")
    # int8: calibrating the backbone and quantising its graph (before the first embedding).
    padim.model.fitting.int8_calibration = timed(calibrate_model, "calibrate_s")
    source = (
        file_batches(job["data"], cfg["batch"])
        if job.get("data")
        else random_batches(job["n"], cfg["size"], cfg["batch"])
    )
    start = time.perf_counter()
    model.fit(source)
    fit_s = time.perf_counter() - start
    result = dict(
        fit_s=fit_s,
        embed_s=timers["embed_s"],
        calibrate_s=timers["calibrate_s"],
        gaussian_s=fit_s - timers["embed_s"] - timers["calibrate_s"],
        rss_before_mb=base,
        peak_rss_mb=peak_rss_mb(),  # before saving, which is not part of fitting
    )
    if job.get("save"):
        model.save(job["save"])
        result["model_file_mb"] = os.path.getsize(job["save"]) / 2**20
    return result


def worker_padim_predict(cfg: dict, job: dict) -> dict:
    model = load_padim(Path(job["model"]), job["backend"])
    loaded = np.load(job["data"] + ".npz")
    test = loaded["test"]
    batch_size = job.get("batch", cfg["batch"])

    def predict():
        return [model.predict(b).anomaly_map for b in batches(test, batch_size)]

    def backbone():
        for b in batches(test, batch_size):
            model.embed(b)

    predict()  # warm-up (one pass: onnxruntime tunes itself on the first calls)
    predict_s, backbone_s = [], []
    for _ in range(job["rounds"]):
        start = time.perf_counter()
        maps = predict()
        predict_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        backbone()
        backbone_s.append(time.perf_counter() - start)
    maps = np.concatenate(maps)
    if job.get("maps"):
        np.save(job["maps"], maps)
    result = timing(len(test), predict_s, backbone_s)
    if job.get("auroc"):
        from sklearn.metrics import roc_auc_score

        labels, masks = loaded["labels"], loaded["masks"]
        result["image_auroc"] = float(roc_auc_score(labels, maps.reshape(len(maps), -1).max(1)))
        result["pixel_auroc"] = float(roc_auc_score(masks.ravel(), maps.ravel()))
    return result


def timing(n_images: int, predict_s: list[float], backbone_s: list[float]) -> dict:
    p, b = statistics.median(predict_s), statistics.median(backbone_s)
    return dict(
        images=n_images,
        predict_s=p,
        backbone_s=b,
        images_per_s=n_images / p,
        backbone_images_per_s=n_images / b,
        overhead_fraction=(p - b) / p,
        predict_s_all=predict_s,
        backbone_s_all=backbone_s,
    )


WORKERS = {
    "anomalib_fit": worker_anomalib_fit,
    "anomalib_predict": worker_anomalib_predict,
    "padim_fit": worker_padim_fit,
    "padim_predict": worker_padim_predict,
}


def run_worker(argv: list[str]) -> None:
    name, cfg, job = argv[0], json.loads(argv[1]), json.loads(argv[2])
    import torch

    torch.set_num_threads(cfg["threads"])
    torch.set_grad_enabled(False)
    result = WORKERS[name](cfg, job)
    result.setdefault("peak_rss_mb", peak_rss_mb())
    result["process_peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(result), flush=True)


# --------------------------------------------------------------------------- orchestration


def spawn(name: str, cfg: dict, job: dict, log: list) -> dict:
    """Run one worker in a fresh Python process; return its result dict."""
    label = (
        f"{name} {cfg['tag']} "
        f"{', '.join(f'{k}={v}' for k, v in job.items() if k in ('backend', 'precision', 'n', 'eps', 'batch'))}"
    )
    print(f"... {label}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", name, json.dumps(cfg), json.dumps(job)],
        capture_output=True,
        text=True,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        error = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"    FAILED ({proc.returncode}): {error}", file=sys.stderr, flush=True)
        log.append({"worker": name, "config": cfg, "job": job, "error": error, "stderr_tail": proc.stderr[-3000:]})
        return {"error": error}
    result = json.loads(lines[-1][len("RESULT ") :])
    result["process_s"] = time.perf_counter() - start
    print(f"    {json.dumps({k: v for k, v in result.items() if not k.endswith('_all')})}", file=sys.stderr, flush=True)
    log.append({"worker": name, "config": cfg, "job": job, "result": result})
    return result


def medians(results: list[dict]) -> dict:
    """Key by key, the median of the numbers over several runs (the first run's value otherwise)."""
    good = [r for r in results if "error" not in r] or results[:1]
    out = dict(good[0])
    for key, value in good[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = statistics.median(r[key] for r in good if key in r)
    out["runs"] = len(good)
    return out


def map_difference(reference: np.ndarray | str, other: np.ndarray | str) -> dict:
    """Largest differences of ``other`` from ``reference`` (arrays or .npy paths; an error entry if one is missing)."""
    try:
        reference = np.load(reference) if isinstance(reference, str) else reference
        other = np.load(other) if isinstance(other, str) else other
    except OSError as error:
        return {"error": str(error)}
    diff = np.abs(reference.astype(np.float64) - other)
    scale = np.abs(reference).max()
    per_image = diff.reshape(len(diff), -1).max(1) / np.abs(reference).reshape(len(diff), -1).max(1)
    return dict(
        max_abs=float(diff.max()),
        max_relative_to_max=float(diff.max() / scale),
        max_relative_per_image=float(per_image.max()),
        max_relative_elementwise=float((diff / np.maximum(np.abs(reference), 1e-12)).max()),
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        run_worker(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/mvtec_ad/bottle"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/speed"))
    parser.add_argument("--cache", type=Path, default=Path("/tmp/padim_bench_cache"))
    parser.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 2))
    parser.add_argument("--rounds", type=int, default=3, help="timed predict passes over the test set (median)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating fit+predict runs per library (median)")
    parser.add_argument("--wrn-size", type=int, default=128, help="image size for wide_resnet50_2 (memory: P * d^2)")
    parser.add_argument("--synthetic", type=int, nargs=2, default=[200, 2000], metavar=("N_SMALL", "N_LARGE"))
    parser.add_argument("--skip", nargs="*", default=[], choices=["lite0", "memory", "wrn", "anomalib-2000", "sweep"])
    parser.add_argument(
        "--padim",
        nargs="*",
        default=["torch", "onnxruntime", "int8"],
        choices=["torch", "onnxruntime", "int8"],
        help="padim variants in the EfficientNet-Lite0 part (default: all three)",
    )
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    log: list = []
    report: dict = {"machine": machine_info(args.threads), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    backends = ["torch", "onnxruntime"]
    variants = [("torch", "torch"), ("onnxruntime", "onnxruntime")]  # (label, backend)
    # int8 (padim.graph.quantize): only in the EfficientNet-Lite0 part, which it was made for; its maps
    # are not anomalib's to 1e-4 (the features are quantised), so it has no map-difference row.
    precisions = {"int8": "int8"}

    lite0 = dict(
        tag="lite0",
        backbone="efficientnet_lite0",
        layers=LITE0_LAYERS,
        n_features=100,
        size=256,
        pretrained=True,
        batch=32,
        threads=args.threads,
    )
    if "lite0" not in args.skip:
        data = str(bottle_cache(args.data, 256, args.cache))
        c = str(args.cache)
        part: dict = {"anomalib": {}, "padim": {}}
        # Alternate the libraries, each measurement in its own process, and keep the medians:
        # the machine is shared, and a slow minute then hits both sides alike.
        lite0_variants = [(label, backend) for label, backend in [*variants, ("int8", "onnxruntime")]
                          if label in args.padim]  # fmt: skip
        runs: dict = {"anomalib": [], **{label: [] for label, _ in lite0_variants}}
        for _ in range(args.repeats):
            fit = spawn("anomalib_fit", lite0, dict(data=data, save=f"{c}/anomalib_lite0.pt"), log)
            predict = spawn(
                "anomalib_predict",
                lite0,
                dict(
                    data=data, stats=f"{c}/anomalib_lite0.pt", maps=f"{c}/maps_anomalib_lite0.npy", rounds=args.rounds
                ),
                log,
            )
            runs["anomalib"].append((fit, predict))
            for label, backend in lite0_variants:
                model = f"{c}/padim_lite0_{label}.safetensors"
                job = dict(data=data, backend=backend, precision=precisions.get(label, "float32"))
                fit = spawn("padim_fit", lite0, dict(job, save=model), log)
                predict = spawn("padim_predict", lite0, dict(job, model=model, rounds=args.rounds, auroc=True), log)
                runs[label].append((fit, predict))
        part["anomalib"] = {"fit": medians([f for f, _ in runs["anomalib"]]),
                            "predict": medians([p for _, p in runs["anomalib"]])}  # fmt: skip
        for label, _ in lite0_variants:
            part["padim"][label] = {"fit": medians([f for f, _ in runs[label]]),
                                    "predict": medians([p for _, p in runs[label]])}  # fmt: skip
        anomalib_maps = f"{c}/maps_anomalib_lite0.npy"
        # Same model as anomalib's (its covariance gets 0.01 + 1e-5): the map comparison.
        model = f"{c}/padim_lite0_eps.safetensors"
        spawn("padim_fit", lite0, dict(data=data, backend="onnxruntime", save=model, eps=ANOMALIB_EPS), log)
        part["map_difference"] = {}
        float_variants = [(label, backend) for label, backend in variants if label in args.padim]
        for label, backend in float_variants:
            maps = f"{c}/maps_padim_lite0_{backend}.npy"
            spawn("padim_predict", lite0, dict(data=data, backend=backend, model=model, rounds=1, maps=maps), log)
            part["map_difference"][label] = map_difference(anomalib_maps, maps)
        if len(float_variants) == 2:
            part["map_difference"]["onnxruntime_vs_torch"] = map_difference(
                f"{c}/maps_padim_lite0_torch.npy", f"{c}/maps_padim_lite0_onnxruntime.npy"
            )
        report["lite0"] = part
        if "sweep" not in args.skip:  # batch size for onnxruntime predict
            report["batch_sweep"] = {
                b: spawn(
                    "padim_predict",
                    lite0,
                    dict(
                        data=data,
                        backend="onnxruntime",
                        model=f"{c}/padim_lite0_onnxruntime.safetensors",
                        rounds=args.rounds,
                        batch=b,
                    ),
                    log,
                )
                for b in (1, 8, 16, 32, 64)
            }

    if "memory" not in args.skip:
        small = dict(lite0, tag="lite0-128", size=128)
        memory: dict = {}
        for n in args.synthetic:
            for backend in backends:
                memory[f"padim {backend} N={n}"] = spawn("padim_fit", small, dict(backend=backend, n=n), log)
            if n == min(args.synthetic) or "anomalib-2000" not in args.skip:
                memory[f"anomalib N={n}"] = spawn("anomalib_fit", small, dict(n=n), log)
        report["memory"] = memory

    if "wrn" not in args.skip:
        size = args.wrn_size
        wrn = dict(
            tag=f"wrn-{size}",
            backbone="wide_resnet50_2",
            layers=WRN_LAYERS,
            n_features=550,
            size=size,
            pretrained=False,
            batch=32,
            threads=args.threads,
        )
        data = str(bottle_cache(args.data, size, args.cache))
        c = str(args.cache)
        part = {"anomalib": {}, "padim": {}}
        part["anomalib"]["fit"] = spawn(
            "anomalib_fit", wrn, dict(data=data, save=f"{c}/anomalib_wrn.pt", single_thread_inverse=True), log
        )
        part["anomalib"]["predict"] = spawn(
            "anomalib_predict",
            wrn,
            dict(data=data, stats=f"{c}/anomalib_wrn.pt", maps=f"{c}/maps_anomalib_wrn.npy", rounds=args.rounds),
            log,
        )
        part["map_difference"] = {}
        for label, backend in variants:
            model = f"{c}/padim_wrn_{backend}.safetensors"
            maps = f"{c}/maps_padim_wrn_{backend}.npy"
            job = dict(data=data, backend=backend)
            fit = spawn("padim_fit", wrn, dict(job, save=model, eps=ANOMALIB_EPS), log)
            predict = spawn("padim_predict", wrn, dict(job, model=model, rounds=args.rounds, maps=maps), log)
            part["padim"][label] = {"fit": fit, "predict": predict}
            part["map_difference"][label] = map_difference(f"{c}/maps_anomalib_wrn.npy", maps)
        report["wrn"] = part

    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    report["load_average_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    report["runs"] = log
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(render(report, args))
    print(args.out.with_suffix(".md").read_text())


def machine_info(threads: int) -> dict:
    import onnxruntime
    import torch

    try:
        import anomalib

        anomalib_version = anomalib.__version__
    except ImportError:
        anomalib_version = None
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return dict(
        cpu_count=os.cpu_count(),
        threads=threads,
        load_average_at_start=load,
        python=platform.python_version(),
        torch=torch.__version__,
        onnxruntime=onnxruntime.__version__,
        anomalib=anomalib_version,
        node=platform.node(),
    )


# --------------------------------------------------------------------------- report


def render(report: dict, args) -> str:
    m = report["machine"]
    out = [
        "# Speed: padim-toolkit against anomalib 2.7",
        "",
        f"Written by `benchmarks/compare_anomalib.py` ({report['started']} to {report['finished']}). "
        f"Machine: {m['cpu_count']} CPU cores, {m['threads']} threads per process, torch {m['torch']}, onnxruntime "
        f"{m['onnxruntime']}, anomalib {m['anomalib']}; load average at start {fmt_load(m['load_average_at_start'])}, "
        f"at the end {fmt_load(report.get('load_average_at_end'))}. "
        "**The machine is shared with other jobs**, so absolute numbers are noisy: read the ratios "
        "(anomalib and padim measured minutes apart in the same run). Every measurement ran in its own "
        "process; peak RSS is that process's VmHWM (imports and the model included, saving the model "
        "excluded; the training images are read from disk one batch at a time, as a data loader would). Images were decoded and "
        "pre-processed before timing, and both libraries got the same tensors. Predict: batch 32, "
        f"median of {args.rounds} passes over the test images after a warm-up pass. anomalib runs as its "
        "`PadimModel` torch module (no Lightning `Engine`), with our backbone weights and channel indices.",
        "",
    ]
    if "lite0" in report:
        p = report["lite0"]
        a_fit, a_pred = p["anomalib"]["fit"], p["anomalib"]["predict"]
        out += [
            "## MVTec bottle, EfficientNet-Lite0, 256 px, d=100 (209 train, 83 test images)",
            "",
            "| | fit s (backbone / rest) | fit peak RSS MiB | predict images/s | backbone images/s | PaDiM's share of predict | image AUROC | pixel AUROC |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
            f"| anomalib 2.7 | {fit_cell(a_fit)} | {g(a_fit, 'peak_rss_mb', '.0f')} | {g(a_pred, 'images_per_s', '.1f')} | "
            f"{g(a_pred, 'backbone_images_per_s', '.1f')} | {g(a_pred, 'overhead_fraction', '.0%')} | | |",
        ]
        for label, r in p["padim"].items():
            f, q = r["fit"], r["predict"]
            out.append(
                f"| padim, {label} | {fit_cell(f)} | {g(f, 'peak_rss_mb', '.0f')} | {g(q, 'images_per_s', '.1f')} | "
                f"{g(q, 'backbone_images_per_s', '.1f')} | {g(q, 'overhead_fraction', '.0%')} | "
                f"{g(q, 'image_auroc', '.4f')} | {g(q, 'pixel_auroc', '.4f')} |"
            )
        out += [
            "",
            "Ratios to anomalib, and the targets: predict throughput ≥ 5×, fit time ≤ 1/5, fit peak RSS ≤ 1/2, "
            "PaDiM's share of predict ≤ 15%; image AUROC ≥ 0.995 and pixel AUROC ≥ 0.978. int8 (the backbone "
            "quantised, calibrated on the first 32 training images, `padim.graph.quantize`): predict ≥ 12×, fit "
            "(calibration included) ≤ 0.3, AUROCs within 0.005 of float32.",
            "",
            "| padim | predict throughput | fit time | fit peak RSS | PaDiM's share |",
            "|---|---:|---:|---:|---:|",
        ]
        for label, r in p["padim"].items():
            f, q = r["fit"], r["predict"]
            out.append(
                f"| {label} | {ratio(q, a_pred, 'images_per_s', '.2f', '×')} | {ratio(f, a_fit, 'fit_s', '.2f')} "
                f"| {ratio(f, a_fit, 'peak_rss_mb', '.2f')} | {g(q, 'overhead_fraction', '.0%')} |"
            )
        out += [
            "",
            "Largest anomaly-map difference to anomalib on the 83 test images: padim fitted with eps = 0.01 + 1e-5 "
            "(anomalib's effective value), same weights, channel indices and input tensors. Columns: max |Δ| over "
            "all maps; that over the largest map value (the issue's measure, target 1e-4); the worst image's "
            "max |Δ| over its own max; the worst pixel's |Δ| over its own value.",
            "",
            "| padim | max \\|Δ\\| | max \\|Δ\\| / max map | worst image | worst pixel |",
            "|---|---:|---:|---:|---:|",
        ]
        for label, d in p["map_difference"].items():
            out.append(
                f"| {label.replace('_vs_', ' vs ')} | {g(d, 'max_abs', '.3g')} | {g(d, 'max_relative_to_max', '.2e')} | "
                f"{g(d, 'max_relative_per_image', '.2e')} | {g(d, 'max_relative_elementwise', '.2e')} |"
            )
        out.append("")
    if "batch_sweep" in report:
        out += [
            "Batch size for predict, onnxruntime (same model and test images):",
            "",
            "| batch | images/s | backbone images/s | PaDiM's share | peak RSS MiB |",
            "|---:|---:|---:|---:|---:|",
        ]
        out += [
            f"| {b} | {g(r, 'images_per_s', '.1f')} | {g(r, 'backbone_images_per_s', '.1f')} | "
            f"{g(r, 'overhead_fraction', '.0%')} | {g(r, 'peak_rss_mb', '.0f')} |"
            for b, r in report["batch_sweep"].items()
        ]
        out.append("")
    if "memory" in report:
        lo, hi = args.synthetic
        out += [
            "## Fit peak memory against N (random 128×128 images, EfficientNet-Lite0, d=100, batches of 32)",
            "",
            "| run | fit s | RSS before fit MiB | fit peak RSS MiB |",
            "|---|---:|---:|---:|",
        ]
        out += [
            f"| {k} | {g(r, 'fit_s', '.1f')} | {g(r, 'rss_before_mb', '.0f')} | {g(r, 'peak_rss_mb', '.0f')} |"
            for k, r in report["memory"].items()
        ]
        out += ["", f"Peak RSS at N={hi} over N={lo} (target: within 10%):", ""]
        for who in ("padim torch", "padim onnxruntime", "anomalib"):
            a, b = report["memory"].get(f"{who} N={lo}", {}), report["memory"].get(f"{who} N={hi}", {})
            if "peak_rss_mb" in a and "peak_rss_mb" in b:
                out.append(
                    f"- {who}: {b['peak_rss_mb'] / a['peak_rss_mb']:.3f} ({(b['peak_rss_mb'] / a['peak_rss_mb'] - 1) * 100:+.1f}%)"
                )
        out.append("")
    if "wrn" in report:
        p = report["wrn"]
        size = args.wrn_size
        a_fit, a_pred = p["anomalib"]["fit"], p["anomalib"]["predict"]
        out += [
            f"## wide_resnet50_2, random weights, d=550, {size} px (bottle images; a 550×550 covariance per patch)",
            "",
            f"At {size} px there are {(size // 4) ** 2} patches. At 256 px (4096 patches) the float32 precision alone "
            "would take 4096 × 550² × 4 B = 5 GB and our float64 fitting statistics twice that: too much for this "
            "shared 24 GB machine. anomalib's `torch.linalg.inv` of the 550×550 covariances fails here with 2 "
            "threads (MKL SLASWP error, then `lu_solve` raises), so its inverse ran with 1 thread (the rest with 2). "
            "padim here uses eps = 0.01001 to match anomalib's maps. Model size: padim's `.safetensors` file "
            "(backbone weights up to layer3, mean, precision); anomalib: its `state_dict` saved with `torch.save`.",
            "",
            "| | model file MiB | fit s (backbone / rest) | fit peak RSS MiB | predict images/s | PaDiM's share of predict | map max \\|Δ\\| / max map |",
            "|---|---:|---:|---:|---:|---:|---:|",
            f"| anomalib 2.7 | {g(a_fit, 'model_file_mb', '.0f')} | {fit_cell(a_fit)} | {g(a_fit, 'peak_rss_mb', '.0f')} | "
            f"{g(a_pred, 'images_per_s', '.1f')} | {g(a_pred, 'overhead_fraction', '.0%')} | |",
        ]
        for label, r in p["padim"].items():
            f, q = r["fit"], r["predict"]
            out.append(
                f"| padim, {label} | {g(f, 'model_file_mb', '.0f')} | {fit_cell(f)} | {g(f, 'peak_rss_mb', '.0f')} | "
                f"{g(q, 'images_per_s', '.1f')} | {g(q, 'overhead_fraction', '.0%')} | "
                f"{g(p['map_difference'].get(label, {}), 'max_relative_to_max', '.2e')} |"
            )
        out += [
            "",
            "| padim | predict throughput vs anomalib | fit time vs anomalib | fit peak RSS vs anomalib |",
            "|---|---:|---:|---:|",
        ]
        for label, r in p["padim"].items():
            f, q = r["fit"], r["predict"]
            out.append(
                f"| {label} | {ratio(q, a_pred, 'images_per_s', '.2f', '×')} | {ratio(f, a_fit, 'fit_s', '.2f')} | "
                f"{ratio(f, a_fit, 'peak_rss_mb', '.2f')} |"
            )
        out.append("")
    return "\n".join(out) + "\n"


def g(result: dict, key: str, spec: str) -> str:
    """One number of a result, or why it is missing."""
    if key in result:
        return format(result[key], spec)
    return "failed" if "error" in result else "–"


def ratio(ours: dict, theirs: dict, key: str, spec: str, unit: str = "") -> str:
    if key in ours and key in theirs:
        return format(ours[key] / theirs[key], spec) + unit
    return "–"


def fit_cell(r: dict) -> str:
    if "fit_s" not in r:
        return g(r, "fit_s", ".1f")
    calibration = f" + int8 calibration {r['calibrate_s']:.1f}" if r.get("calibrate_s") else ""
    return f"{r['fit_s']:.1f} ({r['embed_s']:.1f} / {r['gaussian_s']:.1f}{calibration})"


def pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def fmt_load(load) -> str:
    return "n/a" if load is None else " / ".join(f"{v:.1f}" for v in load)


if __name__ == "__main__":
    main()
