"""Ray scaling on this machine: fit and predict throughput with 1 and 2 workers of one thread, and the merge's cost.

Run from the repository root:

    PYTHONPATH=src python benchmarks/ray_scaling.py --data ../shared/data/mvtec_ad/bottle \\
        --out benchmarks/results/ray_scaling

A local Ray cluster with 2 CPUs. Each worker (a fit task, a predict actor) is held to one
thread (torch, onnxruntime, decoding in its own thread: :mod:`padim.model.distributed`).

1. fit: the shards' statistics (:func:`padim.model.distributed.shard_statistics`: decoding, the
   backbone traced for onnxruntime in each task, the streamed updates) of ``--fit-images``
   bottle training images at 256 px (efficientnet_lite0, d=100), as 1 shard on 1 worker and 2
   shards on 2 workers; then the whole ``distributed.fit`` once each way, for the record;
2. predict: :func:`padim.jobs.ray_predict.predict_files` of the bottle test images and some training
   images (CSV rows and the default JPEG overlays of anomalous images) on 1 and 2 actors,
   the actors' start (the model opened, its graph traced) included;
3. merge: merging k shards' statistics of this model's size (random values; P = 4096 patches,
   D = 100, float32 scatter matrices) for k = 1 ... 64, against factoring the precision once.

Rounds alternate 1 and 2 workers; medians are reported. The machine is shared with other jobs:
compare the ratios, measured side by side.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from padim.io.datasets import train_samples
from padim.io.inputs import image_samples
from padim.jobs import ray_cluster, ray_predict
from padim.model import distributed, fitting
from padim.model.padim import Padim
from padim.stats.gaussian import GaussianStats, precision_cholesky_from_stats


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def fit_rounds(data: Path, n_images: int, rounds: int) -> dict:
    samples = train_samples(data)[:n_images]
    unfitted = Padim(image_size=256, seed=0)
    setup = fitting.prepare(unfitted, samples, None, workers=0)  # channels, working size: as a fit sets them
    model = Padim.from_fitted(setup.fitted, **unfitted.get_params())
    options = {"batch_size": 8, "workers": 0, "quiet": True, "skip_bad": False}
    distributed.shard_statistics(model, samples[:4], options, n_shards=2)  # start the worker processes
    times: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(rounds):
        for workers in (1, 2):
            times[workers].append(
                timed(lambda w=workers: distributed.shard_statistics(model, samples, options, n_shards=w))
            )
            print(f"fit {workers} worker(s): {times[workers][-1]:.1f} s", file=sys.stderr)
    whole = {}
    for workers in (1, 2):
        whole[workers] = timed(lambda w=workers: distributed.fit(Padim(image_size=256, seed=0), samples, n_shards=w))
    return summarise(times, len(samples), whole)


def predict_rounds(model_path: Path, samples: list, rounds: int) -> dict:
    times: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(rounds):
        for workers in (1, 2):
            with tempfile.TemporaryDirectory() as out:
                times[workers].append(
                    timed(lambda w=workers, o=out: ray_predict.predict_files(model_path, samples, o, n_actors=w))
                )
            print(f"predict {workers} actor(s): {times[workers][-1]:.1f} s", file=sys.stderr)
    return summarise(times, len(samples))


@functools.cache
def _spin_task():
    import ray

    @ray.remote(num_cpus=1)
    def spin(seconds_of_work: int) -> float:
        start, total = time.process_time(), 0
        for i in range(seconds_of_work * 10**7):
            total += i
        return time.process_time() - start

    return spin


def control_rounds(rounds: int) -> dict:
    """The machine's own ceiling: a pure-Python loop (no padim, no I/O) as 1 task and as 2."""
    import ray

    spin = _spin_task()
    times: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(rounds):
        for workers in (1, 2):
            times[workers].append(timed(lambda w=workers: ray.get([spin.remote(1) for _ in range(w)])) / workers)
    median = {w: statistics.median(t) for w, t in times.items()}
    return {"seconds_per_task": times, "speedup_2_vs_1": median[1] / median[2]}


def summarise(times: dict, n_images: int, whole: dict | None = None) -> dict:
    median = {w: statistics.median(t) for w, t in times.items()}
    result = {
        "images": n_images,
        "seconds": times,
        "median_s": median,
        "images_per_s": {w: n_images / s for w, s in median.items()},
        "speedup_2_vs_1": median[1] / median[2],
    }
    if whole is not None:
        result["whole_fit_s"] = whole
    return result


def merge_costs(shards: tuple[int, ...] = (1, 2, 4, 8, 16, 32), patches: int = 4096, dim: int = 100) -> dict:
    generator = torch.Generator().manual_seed(0)
    parts = []  # four shards' statistics, reused: a merge's cost does not depend on the values
    for _ in range(4):
        stats = GaussianStats.empty(patches, dim, dtype=torch.float32)
        stats.update(torch.randn(patches, 3, dim, generator=generator))
        parts.append(stats)
    rows = {}
    for k in shards:
        seconds = timed(functools.partial(functools.reduce, lambda a, b: a.merge(b), [parts[i % 4] for i in range(k)]))
        rows[k] = {"merge_s": seconds, "bytes_received": k * (parts[0].mean.nbytes + parts[0].m2.nbytes)}
    merged = functools.reduce(lambda a, b: a.merge(b), parts)
    factor_s = timed(lambda: precision_cholesky_from_stats(merged, 0.01, packed=True))
    return {"patches": patches, "dim": dim, "per_shard": rows, "precision_once_s": factor_s}


def markdown(result: dict) -> str:
    fit, predict, merge = result["fit"], result["predict"], result["merge"]
    lines = [
        "# Ray scaling: 1 and 2 workers of one thread each, on this machine",
        "",
        f"`{result['command']}`",
        "",
        f"Machine: {result['machine']}. Local Ray cluster, 2 CPUs; medians of {result['rounds']} alternating rounds.",
        "",
        "| job | images | 1 worker (s) | 2 workers (s) | 1 worker (img/s) | 2 workers (img/s) | speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, part in (("fit (shards' statistics)", fit), ("predict (CSV + overlays)", predict)):
        lines.append(
            f"| {name} | {part['images']} | {part['median_s'][1]:.1f} | {part['median_s'][2]:.1f} | "
            f"{part['images_per_s'][1]:.2f} | {part['images_per_s'][2]:.2f} | {part['speedup_2_vs_1']:.2f}x |"
        )
    lines += [
        "",
        f"Control, the machine's ceiling (a pure-Python loop as 1 task and as 2 tasks, same work each): "
        f"{result['control']['speedup_2_vs_1']:.2f}x. Other jobs share these 2 cores; a ratio near the "
        "control's means the workers scale as far as the free cores let them.",
        "",
        f"Whole `distributed.fit` (driver's set-up, shards, merge, precision, threshold on the held-out "
        f"images), once each: 1 worker {fit['whole_fit_s'][1]:.1f} s, 2 workers {fit['whole_fit_s'][2]:.1f} s.",
        "",
        f"## The merge (P = {merge['patches']}, D = {merge['dim']}, float32 scatter matrices)",
        "",
        "| shards | merge (s) | statistics received by the driver (MB) |",
        "|---|---|---|",
    ]
    for k, row in merge["per_shard"].items():
        lines.append(f"| {k} | {row['merge_s']:.3f} | {row['bytes_received'] / 1e6:.0f} |")
    lines += ["", f"Factoring the precision once, for comparison: {merge['precision_once_s']:.2f} s.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="an MVTec category (bottle)")
    parser.add_argument("--out", type=Path, required=True, help="results path without suffix")
    parser.add_argument("--fit-images", type=int, default=128)
    parser.add_argument("--predict-train-images", type=int, default=60, help="training images added to the test set")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ray_cluster.connect(num_cpus=2)
    result = {
        "command": "PYTHONPATH=src python benchmarks/ray_scaling.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} CPUs",
        "rounds": args.rounds,
        "merge": merge_costs(),
    }
    result["control"] = control_rounds(args.rounds)
    result["fit"] = fit_rounds(args.data, args.fit_images, args.rounds)
    with tempfile.TemporaryDirectory() as folder:
        model_path = Padim(image_size=256, seed=0).fit(train_samples(args.data)[:32]).save(Path(folder) / "m.padim")
        samples = image_samples(args.data / "test", recursive=True)
        samples += train_samples(args.data)[-args.predict_train_images :]
        result["predict"] = predict_rounds(model_path, samples, args.rounds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
