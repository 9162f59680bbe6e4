"""Where PaDiM's time goes, per batch: backbone variants, PaDiM's own part, the Gaussian update.

All variants run interleaved in one process (round-robin over ``--rounds``), so that load
from other processes on a shared machine hits them alike; compare them as ratios. Reports
the median seconds per batch and images per second, as a markdown table and JSON.

    python benchmarks/profile_parts.py --size 256 --batch 32 --rounds 5 --json benchmarks/results/parts.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from padim.anomaly_map import AnomalyMapGenerator
from padim.backbones import FeatureExtractor
from padim.gaussian import GaussianStats
from padim.model import embed, select_channels
from padim.onnx_backbone import OnnxEmbedder, gaussian_update_f32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--n-features", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    extractor = FeatureExtractor(args.backbone, pretrained=not args.random_weights)
    channels = [info.channels for info in extractor.layer_info]
    idx = select_channels(sum(channels), args.n_features, seed=0)
    images = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))

    def eager():
        with torch.inference_mode():
            return embed(extractor(images), idx, channels)

    extractor_cl = FeatureExtractor(args.backbone, pretrained=not args.random_weights).to(memory_format=torch.channels_last)
    images_cl = images.contiguous(memory_format=torch.channels_last)

    def channels_last():
        with torch.inference_mode():
            return embed(extractor_cl(images_cl), idx, channels).contiguous()

    onnx_embed = OnnxEmbedder(extractor, idx, channels, threads=args.threads)

    def onnxruntime():
        return onnx_embed(images)

    embedding = eager()
    n, d, h, w = embedding.shape
    rng = torch.Generator().manual_seed(1)
    a = torch.randn(h * w, d, d, generator=rng) / d**0.5
    precision = (a @ a.transpose(1, 2) + torch.eye(d)).float()
    mean = embedding.mean(0).reshape(d, h * w)
    generator = AnomalyMapGenerator((args.size, args.size), sigma=4)
    samples = embedding.reshape(n, d, h * w).transpose(1, 2)

    def padim_part():
        with torch.inference_mode():
            return generator(embedding=embedding, mean=mean, inv_covariance=precision)

    stats64 = GaussianStats.empty(h * w, d)
    stats32 = GaussianStats.empty(h * w, d)

    def update_f64():
        stats64.update(samples)

    def update_f32():
        gaussian_update_f32(stats32, samples)

    cases = {
        "backbone+embed eager": eager,
        "backbone+embed channels_last": channels_last,
        "backbone+embed onnxruntime": onnxruntime,
        "padim part (mahalanobis+upsample+blur)": padim_part,
        "gaussian update float64 (GaussianStats.update)": update_f64,
        "gaussian update float32 scatter, float64 merge": update_f32,
    }
    ref = eager()
    diffs = {
        "channels_last": ((channels_last() - ref).abs().max() / ref.abs().max()).item(),
        "onnxruntime": ((onnxruntime() - ref).abs().max() / ref.abs().max()).item(),
    }
    for fn in cases.values():  # warm-up
        fn()
    times = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    rows = {
        name: {"s_per_batch": statistics.median(t), "images_per_s": args.batch / statistics.median(t), "all_s": t}
        for name, t in times.items()
    }
    base = rows["backbone+embed eager"]["s_per_batch"]
    print(f"{args.backbone} {args.size}px batch {args.batch} d={d} P={h * w} threads {args.threads}")
    print("| step | s / batch | images / s | vs eager backbone |")
    print("|---|---:|---:|---:|")
    for name, row in rows.items():
        print(f"| {name} | {row['s_per_batch']:.3f} | {row['images_per_s']:.1f} | {base / row['s_per_batch']:.2f}x |")
    print("max relative embedding difference vs eager:", diffs)
    s64 = stats64.m2 / stats64.count
    s32 = stats32.m2 / stats32.count
    print("float32 vs float64 update, max relative m2 difference:", ((s32 - s64).abs().max() / s64.abs().max()).item())
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"config": {k: str(v) for k, v in vars(args).items()}, "rows": rows, "diffs": diffs}, indent=1))


if __name__ == "__main__":
    main()
