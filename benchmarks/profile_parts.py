"""Where PaDiM's time goes, per batch: backbone variants, PaDiM's own part, the Gaussian.

Every variant runs interleaved in one process (round-robin over ``--rounds``), so that load
from other processes on a shared machine hits them alike: read the table as ratios. Prints
the median seconds per batch as a markdown table and the largest differences between
variants that must agree; writes JSON with ``--json``.

Besides the package's current functions it times candidate replacements, defined here:

- ``mahalanobis_copy``: one copy of the embedding into a contiguous per-patch (P, N, D)
  array before the batched matmul (torch's CPU ``bmm`` on the permuted NCHW view is several
  times slower than on a contiguous or channels-last one).
- ``upsample_blur_matmul``: bilinear up-sampling and the reflect-padded Gaussian blur are
  both linear and separable, so together they are one (H_img x h) matrix per axis:
  map = A_h @ distance @ A_w^T.
- ``update_one_copy``: :meth:`GaussianStats.update` writing the float64 rows in one copy.
- ``update_f32_scatter``: the batch scatter in float32, merged into float64 statistics.
- ``precision_triangular``: the precision as W^T W, W = L^-1 by a triangular solve, instead
  of ``torch.cholesky_inverse``.
- ``whitening_factor``: W itself, for Mahalanobis distances as ||W (x - mu)||.

    python benchmarks/profile_parts.py --size 256 --batch 32 --rounds 5 --json benchmarks/results/parts.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from padim.anomaly_map import AnomalyMapGenerator, gaussian_kernel1d
from padim.backbones import FeatureExtractor
from padim.gaussian import GaussianStats, precision_from_stats
from padim.model import embed, select_channels
from padim.onnx_backbone import OnnxEmbedder

# --- candidate replacements -----------------------------------------------------------------


def mahalanobis_copy(embedding: Tensor, mean: Tensor, precision: Tensor) -> Tensor:
    """PaDiM Eq. 2 as :func:`padim.anomaly_map.mahalanobis`, with one copy to (P, N, D) first."""
    n, d, h, w = embedding.shape
    delta = torch.empty(h * w, n, d, dtype=embedding.dtype)
    delta.copy_(embedding.reshape(n, d, h * w).permute(2, 0, 1))
    delta.sub_(mean[:, None, :])
    squared = torch.bmm(delta, precision).mul_(delta).sum(dim=2)  # (P, N)
    return squared.clamp_(min=0).sqrt_().T.reshape(n, h, w)


def mahalanobis_whitened(embedding: Tensor, mean: Tensor, whitening: Tensor) -> Tensor:
    """Eq. 2 as ||W (x - mu)||, W = L^-1 with covariance = L L^T; ``whitening`` holds W^T (P, D, D)."""
    n, d, h, w = embedding.shape
    delta = torch.empty(h * w, n, d, dtype=embedding.dtype)
    delta.copy_(embedding.reshape(n, d, h * w).permute(2, 0, 1))
    delta.sub_(mean[:, None, :])
    return torch.linalg.vector_norm(torch.bmm(delta, whitening), dim=2).T.reshape(n, h, w)


def _reflect_blur_matrix(size: int, sigma: float) -> Tensor:
    """(size, size) matrix of the 1-D Gaussian blur with reflect padding (float64)."""
    kernel = gaussian_kernel1d(sigma, dtype=torch.float64)
    radius = kernel.shape[0] // 2
    rows = torch.arange(size)[:, None] + torch.arange(-radius, radius + 1)[None, :]
    rows = rows.abs()
    rows = torch.where(rows >= size, 2 * (size - 1) - rows, rows)
    matrix = torch.zeros(size, size, dtype=torch.float64)
    matrix.scatter_add_(1, rows, kernel.expand(size, -1).clone())
    return matrix


def _bilinear_matrix(size_out: int, size_in: int) -> Tensor:
    """(size_out, size_in) matrix of 1-D linear resizing, align_corners=False (float64)."""
    eye = torch.eye(size_in, dtype=torch.float64)[:, None, :]
    return F.interpolate(eye, size=size_out, mode="linear", align_corners=False)[:, 0, :].T


def upsample_blur_matrices(grid: tuple[int, int], image_size: tuple[int, int], sigma: float) -> tuple[Tensor, Tensor]:
    """A_h (H_img, h) and A_w (W_img, w) with blur(upsample(x)) = A_h @ x @ A_w^T (float32)."""
    a_h = _reflect_blur_matrix(image_size[0], sigma) @ _bilinear_matrix(image_size[0], grid[0])
    a_w = _reflect_blur_matrix(image_size[1], sigma) @ _bilinear_matrix(image_size[1], grid[1])
    return a_h.float(), a_w.float()


def upsample_blur_matmul(distance: Tensor, a_h: Tensor, a_w: Tensor) -> Tensor:
    """(N, h, w) distances -> (N, H_img, W_img) blurred maps, two matmuls."""
    return a_h @ distance @ a_w.T


def update_one_copy(stats: GaussianStats, samples: Tensor) -> GaussianStats:
    """:meth:`GaussianStats.update`, same arithmetic, with the (P, N + 1, D) float64 rows written in one copy."""
    n_b, n_patches, dim = samples.shape
    rows = torch.empty(n_patches, n_b + 1, dim, dtype=torch.float64)
    x = rows[:, :n_b]
    x.copy_(samples.transpose(0, 1))
    mean_b = x.mean(dim=1)
    x.sub_(mean_b[:, None, :])
    n_a, n = stats.count, stats.count + n_b
    delta = mean_b - stats.mean
    torch.mul(delta, (n_a * n_b / n) ** 0.5, out=rows[:, n_b])
    stats.m2.baddbmm_(rows.transpose(1, 2), rows)
    stats.mean.add_(delta, alpha=n_b / n)
    stats.count = n
    return stats


def update_f32_scatter(stats: GaussianStats, samples: Tensor) -> GaussianStats:
    """Batch scatter by a float32 bmm about the float32-rounded batch mean, merged in float64.

    S(mean) = S(pivot) - N_b shift shift^T (shift = mean - pivot); the merge's between-means
    term w delta delta^T is added in the same rank-2 float64 product.
    """
    n_b, n_patches, dim = samples.shape
    x = torch.empty(n_patches, n_b, dim)
    x.copy_(samples.transpose(0, 1))
    mean_b = x.mean(dim=1, dtype=torch.float64)
    pivot = mean_b.float()
    x.sub_(pivot[:, None, :])
    scatter = torch.bmm(x.transpose(1, 2), x)
    n_a, n = stats.count, stats.count + n_b
    delta = mean_b - stats.mean
    shift = mean_b - pivot.double()
    left = torch.stack([delta * (n_a * n_b / n), -n_b * shift], dim=2)
    right = torch.stack([delta, shift], dim=1)
    stats.m2.add_(scatter).baddbmm_(left, right)
    stats.mean.add_(delta, alpha=n_b / n)
    stats.count = n
    return stats


def precision_triangular(stats: GaussianStats, eps: float = 0.01, chunk_bytes: int = 32 * 2**20) -> Tensor:
    """:func:`padim.gaussian.precision_from_stats` as W^T W with W = L^-1 from a triangular solve.

    ``torch.cholesky_inverse`` (and ``torch.linalg.inv``) on a batch of small matrices run
    many tiny parallel regions: with 2 threads on a loaded 2-core machine they were 20 to 60
    times slower than with 1 thread. The triangular solve and the bmm do not suffer from it.
    Chunks are sized in bytes (each float64 temporary at most ``chunk_bytes``), not in patches:
    512 patches of 550x550 float64 are 1.2 GB per temporary.
    """
    n_patches, dim = stats.mean.shape
    chunk = max(1, chunk_bytes // (dim * dim * 8))
    out = torch.empty(n_patches, dim, dim, dtype=torch.float32, device=stats.m2.device)
    eye = torch.eye(dim, dtype=torch.float64, device=stats.m2.device)
    for start in range(0, n_patches, chunk):
        part = GaussianStats(stats.count, stats.mean[start : start + chunk], stats.m2[start : start + chunk])
        inv_chol = torch.linalg.solve_triangular(torch.linalg.cholesky(part.covariance(eps)), eye, upper=False)
        out[start : start + chunk] = torch.bmm(inv_chol.transpose(1, 2), inv_chol)
    return out


def whitening_factor(stats: GaussianStats, eps: float = 0.01) -> Tensor:
    """W^T (P, D, D) float32 with precision = W^T W, W = L^-1, covariance = L L^T."""
    chol = torch.linalg.cholesky(stats.covariance(eps))
    eye = torch.eye(chol.shape[-1], dtype=chol.dtype).expand_as(chol)
    return torch.linalg.solve_triangular(chol, eye, upper=False).transpose(1, 2).float()


# --- timing ---------------------------------------------------------------------------------


def rel(a: Tensor, b: Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


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
    torch.set_grad_enabled(False)

    extractor = FeatureExtractor(args.backbone, pretrained=not args.random_weights)
    channels = [info.channels for info in extractor.layer_info]
    idx = select_channels(sum(channels), args.n_features, seed=0)
    images = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    extractor_cl = FeatureExtractor(args.backbone, pretrained=not args.random_weights).to(
        memory_format=torch.channels_last
    )
    images_cl = images.contiguous(memory_format=torch.channels_last)
    ort_nchw = OnnxEmbedder(extractor, idx, channels, threads=args.threads, channels_last=False)
    ort_nhwc = OnnxEmbedder(extractor, idx, channels, threads=args.threads, channels_last=True)

    def eager():
        with torch.inference_mode():
            return embed(extractor(images), idx, channels)

    def channels_last():
        with torch.inference_mode():
            return embed(extractor_cl(images_cl), idx, channels)

    embedding = eager()  # (N, D, H, W) contiguous
    embedding_cl = ort_nhwc(images)  # same values, channels-last strides
    n, d, h, w = embedding.shape
    p = h * w
    # A realistic Gaussian: fitted on two batches of real embeddings.
    stats = GaussianStats.empty(p, d).update(embedding.reshape(n, d, p).transpose(1, 2))
    stats.update(ort_nhwc(images.flip(-1)).reshape(n, d, p).transpose(1, 2))
    mean = stats.mean.float()
    precision = precision_from_stats(stats)
    whitening = whitening_factor(stats)
    generator = AnomalyMapGenerator((args.size, args.size), sigma=4)
    a_h, a_w = upsample_blur_matrices((h, w), (args.size, args.size), 4)
    samples = embedding.reshape(n, d, p).transpose(1, 2)
    samples_cl = embedding_cl.reshape(n, d, p).transpose(1, 2)

    def padim_part(emb):
        return lambda: generator(embedding=emb, mean=mean.T, inv_covariance=precision)[:, 0]

    def padim_part_new(emb):
        return lambda: upsample_blur_matmul(mahalanobis_copy(emb, mean, precision), a_h, a_w)

    def padim_part_whitened(emb):
        return lambda: upsample_blur_matmul(mahalanobis_whitened(emb, mean, whitening), a_h, a_w)

    fresh = {}

    def update(fn, x, key):
        def run():
            # Statistics that already hold data, so the between-means term is exercised.
            fresh.setdefault(key, GaussianStats(stats.count, stats.mean.clone(), stats.m2.clone()))
            fn(fresh[key], x)

        return run

    cases = {
        "backbone+embed: eager (N,D,H,W)": eager,
        "backbone+embed: channels_last model": channels_last,
        "backbone+embed: onnxruntime, NCHW output": lambda: ort_nchw(images),
        "backbone+embed: onnxruntime, channels-last output (default)": lambda: ort_nhwc(images),
        "padim part now (AnomalyMapGenerator), NCHW embedding": padim_part(embedding),
        "padim part now (AnomalyMapGenerator), channels-last embedding": padim_part(embedding_cl),
        "padim part: copy + bmm + matmul upsample-blur, NCHW embedding": padim_part_new(embedding),
        "padim part: copy + bmm + matmul upsample-blur, channels-last embedding": padim_part_new(embedding_cl),
        "padim part: whitening bmm + matmul upsample-blur, channels-last": padim_part_whitened(embedding_cl),
        "gaussian update now (float64), NCHW embedding": update(GaussianStats.update, samples, 0),
        "gaussian update now (float64), channels-last embedding": update(GaussianStats.update, samples_cl, 1),
        "gaussian update one copy (float64), channels-last": update(update_one_copy, samples_cl, 2),
        "gaussian update float32 scatter + float64 merge, channels-last": update(update_f32_scatter, samples_cl, 3),
        "precision now (cholesky + cholesky_inverse, float64)": lambda: precision_from_stats(stats),
        "precision as W^T W (cholesky + triangular solve + bmm, float64)": lambda: precision_triangular(stats),
        "whitening factor W (cholesky + triangular solve, float64)": lambda: whitening_factor(stats),
    }
    ref_map = padim_part(embedding)()
    checks = {
        "embedding channels_last model vs eager": rel(channels_last(), embedding),
        "embedding onnxruntime NCHW vs eager": rel(ort_nchw(images), embedding),
        "embedding onnxruntime NHWC vs eager": rel(embedding_cl, embedding),
        "map copy+bmm+matmul vs now": rel(padim_part_new(embedding_cl)(), ref_map),
        "map whitening vs now": rel(padim_part_whitened(embedding_cl)(), ref_map),
        "precision W^T W vs now": rel(precision_triangular(stats), precision),
    }
    for fn in cases.values():  # warm-up, and one update per variant
        fn()
    m2_ref = fresh[0].m2
    checks["m2 update now channels-last vs NCHW"] = rel(fresh[1].m2, m2_ref)
    checks["m2 update one copy vs now"] = rel(fresh[2].m2, m2_ref)
    checks["m2 update float32 scatter vs now"] = rel(fresh[3].m2, m2_ref)

    times = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    rows = {name: {"s_per_batch": statistics.median(t), "all_s": t} for name, t in times.items()}
    header = (
        f"{args.backbone}, {args.size} px, batch {args.batch}, d={d}, P={p}, {args.threads} threads, "
        f"median of {args.rounds} interleaved rounds, {platform.node()}"
    )
    lines = [header, "", "| step | s / batch | images / s |", "|---|---:|---:|"]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['s_per_batch']:.4f} | {args.batch / row['s_per_batch']:.1f} |")
    lines += ["", "| agreement | max relative difference |", "|---|---:|"]
    lines += [f"| {name} | {value:.2e} |" for name, value in checks.items()]
    print("\n".join(lines))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        args.json.write_text(json.dumps({"config": config, "rows": rows, "checks": checks}, indent=1) + "\n")


if __name__ == "__main__":
    main()
