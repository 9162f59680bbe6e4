"""Which approach keeps PaDiM working when parts move a few pixels: measured side by side.

Approaches (each a small class below with ``fit(fit_batch, hold_batch)`` and ``predict(batch)``):

- ``baseline``: today's defaults (efficientnet_lite0, 256 px, d=100, sigma 4), onnxruntime.
- ``reg-T`` / ``reg-R``: every image registered to a reference built from the training images
  (:mod:`registration_opencv`: phase correlation, then ``cv2.findTransformECC`` translation / rigid on
  half-size gray), warped into the reference frame before the backbone; the map warped back
  into the input's coordinates; the image score is the maximum of that map.
- ``nbhd-k``: a patch's distance is its smallest Mahalanobis distance to the Gaussians of the
  k x k positions around it (:class:`NeighbourScorer`, torch, traced to onnxruntime).
- ``aug``: the Gaussians fitted on the training images plus ``copies`` randomly moved copies of
  each (moves in the same range as the test moves), PaDiM's non-aligned protocol.
- combinations: ``reg-R+nbhd3``, ``reg-R+aug`` (small residual moves), ...

Each runs on (i) the data as shipped, (ii) test moved, (iii) train and test moved
(:mod:`moved_dataset`), and reports image AUROC, pixel AUROC and AUPRO in the input images' own
coordinates (working size). Speed: predict throughput from decoded images (pre-processing,
registration and warps included) and fit time, approaches alternating round by round, medians
and per-round ratios to the baseline. Also: registration confidence on good, defective and foreign
inputs (fail closed), and registration accuracy on known moves.

Usage (from the repository root):
    python benchmarks/moved_dataset.py /work/shared/data/mvtec_ad/bottle
    python benchmarks/moved_dataset.py /work/shared/data/hazelnut_toy/hazelnut
    PYTHONPATH=src python benchmarks/alignment_research.py --out benchmarks/results/alignment_research
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).parent))

import registration_opencv as reg  # noqa: E402
from moved_dataset import MAX_ANGLE, MAX_SHIFT, move_image, move_matrix  # noqa: E402
from padim.eval.metrics import image_auroc, pixel_auroc  # noqa: E402
from padim.eval.pro import aupro  # noqa: E402
from padim.graph import build  # noqa: E402
from padim.graph.build import runtime_factors  # noqa: E402
from padim.graph.modules import Pipeline  # noqa: E402
from padim.graph.runners import TorchRunner, make_runner  # noqa: E402
from padim.io.datasets import split_holdout, test_samples, train_samples  # noqa: E402
from padim.io.images import load_image, load_mask, preprocess  # noqa: E402
from padim.maps.anomaly_map import mahalanobis, resize_blur, resize_blur_matrix  # noqa: E402
from padim.model.padim import Padim  # noqa: E402
from padim.runtime.predictor import Predictor  # noqa: E402
from padim.scoring.rules import image_score  # noqa: E402

HERE = Path(__file__).parent
DATASETS = {
    "bottle": Path("/work/shared/data/mvtec_ad/bottle"),
    "hazelnut": Path("/work/shared/data/hazelnut_toy/hazelnut"),
}
MOVED = HERE / "_work" / "moved"
WORK = (256, 256)
SEED = 0
CHUNK = 32


# ---------------------------------------------------------------- neighbourhood scoring (b)


def neighbour_indices(grid: tuple[int, int], k: int) -> tuple[Tensor, Tensor]:
    """Index tables for the k x k neighbourhood minimum on an (H, W) grid, P = H * W patches.

    Returns:
        (source (K * P,) int64: for offset o and Gaussian q, the patch at q + o (clamped to the
        grid); target (P, K) int64: for patch p and offset o, the row q * K + o of the distances,
        q = p - o, or K * P (a row of +inf) where p - o is off the grid).
    """
    h, w = grid
    r = k // 2
    offsets = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]
    ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    ys, xs = ys.ravel(), xs.ravel()
    source = np.stack([np.clip(ys + dy, 0, h - 1) * w + np.clip(xs + dx, 0, w - 1) for dy, dx in offsets])
    n = len(offsets)
    target = np.empty((h * w, n), np.int64)
    for o, (dy, dx) in enumerate(offsets):
        qy, qx = ys - dy, xs - dx
        inside = (qy >= 0) & (qy < h) & (qx >= 0) & (qx < w)
        target[:, o] = np.where(inside, (qy * w + qx) * n + o, n * h * w)
    # source laid out (P, K) so that the gathered patches reshape to (P, K * N, D)
    return torch.from_numpy(source.T.copy().ravel()), torch.from_numpy(target)


def neighbour_distance(patches: Tensor, mean: Tensor, factors: Tensor, source: Tensor, target: Tensor) -> Tensor:
    """(P, N) smallest Mahalanobis distance of each patch to the Gaussians within its k x k neighbourhood.

    One batched matmul for all offsets: the patches are gathered so that Gaussian q meets the
    patches q + o of every offset o, (P, K * N, D) against its factor (P, D, D); the distances
    are then gathered back to the patch they belong to and the minimum taken. No loop over
    patches; the index tables are constants (:func:`neighbour_indices`).
    """
    p, n, d = patches.shape
    k = target.shape[1]
    gathered = patches.index_select(0, source).reshape(p, k * n, d)
    dist = mahalanobis(gathered, mean, factors).reshape(p * k, n)  # row q * K + o
    dist = torch.cat([dist, torch.full((1, n), float("inf"), dtype=dist.dtype)])
    return dist.index_select(0, target.reshape(-1)).reshape(p, k, n).amin(dim=1)


class NeighbourScorer(nn.Module):
    """:class:`padim.graph.modules.Scorer` with the k x k neighbourhood minimum: maps (N, H, W), scores (N,)."""

    def __init__(self, grid, image_size, sigma: float, k: int) -> None:
        super().__init__()
        self.grid = tuple(int(g) for g in grid)
        self.source, self.target = neighbour_indices(self.grid, k)
        for name, size, out in (("a_h", self.grid[0], image_size[0]), ("a_w", self.grid[1], image_size[1])):
            self.register_buffer(name, torch.from_numpy(resize_blur_matrix(size, out, sigma)).float(), persistent=False)

    def forward(self, patches, mean, precision_cholesky, threshold, scale):
        distance = neighbour_distance(patches, mean, precision_cholesky, self.source, self.target)
        maps = resize_blur(distance.T.reshape(-1, *self.grid), self.a_h, self.a_w)
        score = image_score(maps)
        return maps, score, score, score > threshold


def neighbour_predictor(model: Padim, k: int, onnxruntime: bool = True, images_per_run: int = 8) -> Predictor:
    """A predictor of a fitted model with neighbourhood scoring, traced to onnxruntime (or eager torch)."""
    pipeline = Pipeline(
        build.embedder(model.graph_spec()), NeighbourScorer(model.feature_size_, model.image_size_, model.sigma, k)
    )
    example = {"images": torch.zeros(2, 3, *model.image_size_), "mean": model.mean_,
               "precision_cholesky": runtime_factors(model.precision_cholesky_packed_, "float32"),
               "threshold": torch.tensor(1.0), "scale": torch.tensor(1.0)}  # fmt: skip
    outputs = ("anomaly_map", "score", "normalized_score", "label")
    axes = {"images": 0, **dict.fromkeys(outputs, 0)}
    if onnxruntime:
        run = make_runner(pipeline, example, outputs, axes, bound=("mean", "precision_cholesky"), onnxruntime=True)
    else:
        state = {k_: example[k_] for k_ in ("mean", "precision_cholesky")}
        run = TorchRunner(pipeline, list(example), outputs, state)
    return Predictor(run, image_size=model.image_size_, calibration=None, config={}, kind="onnxruntime",
                     run_pixels=images_per_run * WORK[0] * WORK[1])  # fmt: skip


# ---------------------------------------------------------------- warps inside the graph


def pixel_grid(warps: Tensor, size: tuple[int, int]) -> Tensor:
    """(N, H, W, 2) grid for ``F.grid_sample``: output pixel v samples the input at W v (pixels, 2x3 warps (N, 2, 3)).

    Normalised for ``align_corners=False`` (pixel centres at (2x + 1) / size - 1), which is
    OpenCV's pixel convention; traces to ONNX MatMul and arithmetic, no AffineGrid op needed.
    """
    h, w = size
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    points = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1).reshape(1, h * w, 3)
    source = torch.matmul(points, warps.transpose(1, 2))  # (N, HW, 2) input pixels
    scale = torch.tensor([2.0 / w, 2.0 / h])
    return (source * scale + scale / 2 - 1).reshape(-1, h, w, 2)


class GraphWarp(nn.Module):
    """Warp images (N, C, H, W) by 2x3 pixel warps (N, 2, 3) inside the graph: bilinear, border replicated.

    ``warps`` reference -> input warps bring images into the reference frame (as
    ``cv2.warpAffine(..., WARP_INVERSE_MAP)``); their inverses bring maps back (as ``cv2.warpAffine(map, W)``).
    ONNX: GridSample (opset 16+), padding_mode "border".
    """

    def forward(self, images: Tensor, warps: Tensor) -> Tensor:
        grid = pixel_grid(warps, images.shape[-2:])
        return torch.nn.functional.grid_sample(
            images, grid, mode="bilinear", padding_mode="border", align_corners=False
        )


# ---------------------------------------------------------------- approaches


def chunks(batch: np.ndarray, size: int = CHUNK):
    for i in range(0, len(batch), size):
        yield batch[i : i + size]


def random_moves(rng: np.random.Generator, n: int, size: tuple[int, int], max_shift: float, max_angle: float):
    """n random 2x3 moves at ``size`` (h, w): shift uniform within max_shift x side, angle within max_angle."""
    h, w = size
    return [move_matrix(w, h, rng.uniform(-max_shift, max_shift) * w, rng.uniform(-max_shift, max_shift) * h,
                        rng.uniform(-max_angle, max_angle)) for _ in range(n)]  # fmt: skip


def move_batch(batch: np.ndarray, moves) -> np.ndarray:
    """Pre-processed images (N, 3, H, W) moved by 2x3 matrices (bilinear, border replicated)."""
    out = []
    for image, m in zip(batch, moves):
        hwc = np.ascontiguousarray(image.transpose(1, 2, 0))
        moved = cv2.warpAffine(hwc, m, hwc.shape[1::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        out.append(moved.transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(out))


class Baseline:
    """Today's model: Gaussians on the images as given, onnxruntime pipeline."""

    name = "baseline"

    def __init__(self, copies: int = 0, aug_shift: float = MAX_SHIFT, aug_angle: float = MAX_ANGLE, k: int = 0):
        self.copies, self.aug_shift, self.aug_angle, self.k = copies, aug_shift, aug_angle, k

    def training_batches(self, fit: np.ndarray):
        rng = np.random.default_rng(SEED)
        for part in chunks(fit):
            yield part
            for _ in range(self.copies):  # (c): moved copies of every image
                yield move_batch(part, random_moves(rng, len(part), part.shape[2:], self.aug_shift, self.aug_angle))

    def fit(self, fit_images: list, hold_images: list | None = None) -> None:
        """Fit on decoded PIL images (the held-out ones are not needed: no threshold here)."""
        self.fit_batch(preprocess(fit_images, WORK))

    def fit_batch(self, fit: np.ndarray) -> None:
        """Fit on pre-processed images (N, 3, H, W)."""
        self.model = Padim(seed=SEED, align="none").fit(self.training_batches(fit))
        self.predictor = None  # built (traced) on first use: not part of the fit time, as in `padim fit`

    def predict(self, images: list) -> dict:
        return self.predict_batch(preprocess(images, WORK))

    def predict_batch(self, batch: np.ndarray) -> dict:
        if self.predictor is None:
            self.predictor = neighbour_predictor(self.model, self.k) if self.k else self.model.predictor()
        out = self.predictor.predict_batch(batch)
        return dict(maps=out.anomaly_map, score=out.score)


class Registered:
    """Registration before the model (``inner``: any approach, fitted on registered training images).

    Pre-processing registers the 8-bit pictures at the working size (:func:`registration.preprocess_registered`);
    the map is warped back into the input's coordinates and the score is its maximum there.
    """

    def __init__(self, inner, motion: str = "rigid", scale: float = 0.5, levels: int = 2, **options) -> None:
        self.inner, self.motion, self.scale, self.levels, self.options = inner, motion, scale, levels, options

    def fit(self, fit_images: list, hold_images: list | None = None) -> None:
        rgb = reg.rgb_batch(fit_images, WORK)
        grays = reg.gray_from_rgb(rgb, reg.reg_size(WORK, self.scale))
        self.reference = reg.build_reference(grays, WORK, self.motion, self.levels, **self.options)
        ref = self.reference
        ok = reg.usable(ref.train_confidence, np.array([reg.coverage(w, WORK) for w in ref.train_warps]))
        warps = np.where(ok[:, None, None], ref.train_warps, np.eye(2, 3)[None])
        self.inner.fit_batch(reg.normalise(reg.warp_rgb_to_reference(rgb, warps)))
        if hold_images:
            _, held = reg.preprocess_registered(ref, hold_images, **self.options)
            self.hold_confidence = held.confidence
            ref.threshold = reg.confidence_threshold(held.confidence)

    def predict(self, images: list) -> dict:
        batch, info = reg.preprocess_registered(self.reference, images, **self.options)
        out = self.inner.predict_batch(batch)
        maps = reg.warp_maps_back(out["maps"], info.applied)
        return dict(maps=maps, score=maps.reshape(len(maps), -1).max(axis=1), score_ref=out["score"],
                    confidence=info.confidence, trusted=info.trusted, warps=info.warps)  # fmt: skip


def make_approach(name: str):
    """An approach by name: baseline, nbhd3, nbhd5, aug, reg-T, reg-R, reg-R+nbhd3, reg-R+aug, aug+nbhd3, ..."""
    parts = name.split("+")
    motion = {"reg-T": "translation", "reg-R": "rigid", "reg-R5": "rigid"}.get(parts[0])
    reg_options = {"max_angle": 5.0} if parts[0] == "reg-R5" else {}
    rest = parts[1:] if motion else parts
    options = {}
    for part in rest:
        if part.startswith("nbhd"):
            options["k"] = int(part[4:])
        elif part == "aug":  # full range, 3 copies; after registration only residual moves (1/4 range)
            options.update(
                copies=3, aug_shift=MAX_SHIFT / (4 if motion else 1), aug_angle=MAX_ANGLE / (4 if motion else 1)
            )
        elif part != "baseline":
            raise ValueError(f"unknown approach part {part!r}")
    inner = Baseline(**options)
    approach = Registered(inner, motion, **reg_options) if motion else inner
    approach.name = name
    return approach


# ---------------------------------------------------------------- data


def category_paths(dataset: str, variant: str) -> tuple[Path, Path]:
    """(train category folder, test category folder) for a variant: shipped, test_moved, all_moved."""
    source = DATASETS[dataset]
    name = source.name
    return {
        "shipped": (source, source),
        "test_moved": (source, MOVED / f"{name}_test" / name),
        "all_moved": (MOVED / f"{name}_all" / name, MOVED / f"{name}_all" / name),
    }[variant]


def load_train(category: Path) -> tuple[list, list]:
    """Decoded PIL images of the fit split and the held-out split (the library's 10 %, seed 0)."""
    fit, held = split_holdout(train_samples(category), 0.1, SEED)
    return [load_image(s.path) for s in fit], [load_image(s.path) for s in held]


def load_test(category: Path) -> dict:
    samples = test_samples(category)
    images = [load_image(s.path) for s in samples]
    masks = np.stack([load_mask(s.mask_path, WORK)[0] if s.mask_path else np.zeros(WORK, np.uint8) for s in samples])
    return dict(images=images, labels=np.array([s.label for s in samples]), masks=masks.astype(bool),
                types=[s.defect_type for s in samples], paths=[str(s.path) for s in samples])  # fmt: skip


def predict_all(approach, batch: np.ndarray) -> dict:
    parts = [approach.predict(part) for part in chunks(batch)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def metrics(test: dict, out: dict) -> dict:
    labels, masks, maps = test["labels"], test["masks"], out["maps"]
    row = dict(image_auroc=image_auroc(labels, out["score"]), pixel_auroc=pixel_auroc(masks, maps),
               aupro=aupro(masks, maps))  # fmt: skip
    if "score_ref" in out:
        row["image_auroc_ref_frame_score"] = image_auroc(labels, out["score_ref"])
        row["untrusted"] = int((~out["trusted"]).sum())
        row["untrusted_good"] = int((~out["trusted"] & (labels == 0)).sum())
        failed_closed = np.where(out["trusted"], out["score"], np.inf)  # untrusted: reported as anomalous
        row["image_auroc_fail_closed"] = image_auroc(labels, np.nan_to_num(failed_closed, posinf=1e30))
        row["confidence_min_good"] = float(out["confidence"][labels == 0].min())
        row["confidence_min_defective"] = float(out["confidence"][labels == 1].min())
    return row


# ---------------------------------------------------------------- quality


def run_quality(datasets, approaches, variants, log) -> list[dict]:
    rows = []
    for dataset in datasets:
        for train_variant in ("shipped", "all_moved"):
            tests = [v for v in variants if category_paths(dataset, v)[0] == category_paths(dataset, train_variant)[0]]
            if not tests:
                continue
            fit_pil, hold_pil = load_train(category_paths(dataset, train_variant)[0])
            test_data = {v: load_test(category_paths(dataset, v)[1]) for v in tests}
            for name in approaches:
                approach = make_approach(name)
                start = time.perf_counter()
                approach.fit(fit_pil, hold_pil)
                fit_s = time.perf_counter() - start
                for v in tests:
                    start = time.perf_counter()
                    out = predict_all(approach, test_data[v]["images"])
                    predict_s = time.perf_counter() - start
                    row = dict(dataset=dataset, variant=v, approach=name, **metrics(test_data[v], out),
                               fit_s_single=fit_s, predict_s_single=predict_s)  # fmt: skip
                    rows.append(row)
                    log(f"{dataset:8s} {v:10s} {name:14s} image {row['image_auroc']:.4f} pixel "
                        f"{row['pixel_auroc']:.4f} aupro {row['aupro']:.4f}  fit {fit_s:.1f}s predict {predict_s:.1f}s"
                        + (f"  untrusted {row['untrusted']}" if "untrusted" in row else ""))  # fmt: skip
                del approach
                gc.collect()
    return rows


# ---------------------------------------------------------------- speed


FIT_TIMED = ("baseline", "reg-T", "reg-R", "aug")


def _timed_fits(names: list[str], rounds: int, fit_pil: list, hold_pil: list, log, label: str) -> tuple[dict, dict]:
    """Wall and CPU seconds of whole fits per approach, alternating (order reversed every other round)."""
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            approach = make_approach(name)
            gc.collect()
            w0, c0 = _clock()
            approach.fit(fit_pil, hold_pil)
            w1, c1 = _clock()
            wall[name].append(w1 - w0)
            cpu[name].append(c1 - c0)
            log(f"{label} round {r} {name}: wall {w1 - w0:.1f}s cpu {c1 - c0:.1f}s")
            del approach
    return wall, cpu


def _clock() -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds over all its threads)."""
    return time.perf_counter(), time.process_time()


def _ratios(base: np.ndarray, other: np.ndarray) -> dict:
    """Median of per-round ratios base / other (a throughput ratio when the arrays are times)."""
    ratios = base / other
    return dict(median=float(np.median(ratios)), q25=float(np.quantile(ratios, 0.25)),
                q75=float(np.quantile(ratios, 0.75)), n=int(len(ratios)))  # fmt: skip


def run_speed(dataset: str, approaches, rounds: int, log, fit_rounds: int) -> dict:
    """Predict throughput and fit time, wall and CPU, approaches interleaved; medians of per-round ratios.

    The machine is shared, so: predict alternates the approaches chunk by chunk (32 decoded images
    each, the order rotating every round), ``rounds`` passes over the moved test images; fit
    alternates whole fits (order reversed every other round) for the approaches whose fit differs
    (:data:`FIT_TIMED`; neighbourhood scoring fits exactly as the baseline does, its graph is
    built at first predict). CPU time (``time.process_time``, all threads of this process) is far
    less disturbed by other jobs than wall time; on a saturated two-core line PC throughput goes
    with CPU time.
    """
    fit_pil, hold_pil = load_train(category_paths(dataset, "shipped")[0])
    test = load_test(category_paths(dataset, "test_moved")[1])["images"]
    timed_fits = [n for n in approaches if n in FIT_TIMED]
    fit_wall, fit_cpu = _timed_fits(timed_fits, fit_rounds, fit_pil, hold_pil, log, f"speed {dataset} fit")
    fitted = {}
    for name in approaches:
        fitted[name] = make_approach(name)
        fitted[name].fit(fit_pil, hold_pil)
        predict_all(fitted[name], test[:4])  # warm-up: graph building, arenas
    chunks_ = [test[i : i + CHUNK] for i in range(0, len(test), CHUNK)]
    wall = {name: np.zeros(rounds) for name in approaches}
    cpu = {name: np.zeros(rounds) for name in approaches}
    for r in range(rounds):
        for j, chunk in enumerate(chunks_):
            order = approaches[(r + j) % len(approaches) :] + approaches[: (r + j) % len(approaches)]
            for name in order:  # from decoded images: pre-processing, registration, warps included
                w0, c0 = _clock()
                fitted[name].predict(chunk)
                w1, c1 = _clock()
                wall[name][r] += w1 - w0
                cpu[name][r] += c1 - c0
        log(
            f"speed {dataset} predict pass {r}: "
            + ", ".join(f"{n} {wall[n][r]:.2f}s/{cpu[n][r]:.2f}cpu" for n in approaches)
        )
    n = len(test)
    out = {}
    for name in approaches:
        fit_name = (
            name
            if name in FIT_TIMED
            else ("aug" if "aug" in name else "reg-R" if name.startswith("reg") else "baseline")
        )
        out[name] = dict(
            images_per_s_wall=float(n / np.median(wall[name])),
            cpu_ms_per_image=float(np.median(cpu[name]) / n * 1e3),
            predict_ratio_wall=_ratios(wall["baseline"], wall[name]),
            predict_ratio_cpu=_ratios(cpu["baseline"], cpu[name]),
        )
        if fit_rounds:
            out[name].update(fit_as=fit_name, fit_s_wall=float(np.median(fit_wall[fit_name])),
                             fit_s_cpu=float(np.median(fit_cpu[fit_name])),
                             fit_ratio_wall=_ratios(np.array(fit_wall[fit_name]), np.array(fit_wall["baseline"])),
                             fit_ratio_cpu=_ratios(np.array(fit_cpu[fit_name]), np.array(fit_cpu["baseline"])))  # fmt: skip
    out["_n_images"], out["_n_fit_images"], out["_rounds"], out["_fit_rounds"] = n, len(fit_pil), rounds, fit_rounds
    return out


def run_fit_cost(dataset: str, approaches, rounds: int, log) -> dict:
    """Whole fits from decoded images, alternating, CPU time of this process (run with ``--threads 1``).

    On this shared two-core machine multi-threaded fits spin while they wait for a core, so their
    CPU time doubled from one round to the next; one thread (torch and onnxruntime) measures the
    work itself. Fit = pre-processing, (registration: reference, training warps, held-out
    confidences), backbone, statistics, precisions; the predictor's graph is not built.
    """
    fit_pil, hold_pil = load_train(category_paths(dataset, "shipped")[0])
    names = [n for n in approaches if n in FIT_TIMED]
    wall, cpu = _timed_fits(names, rounds, fit_pil, hold_pil, log, f"fit cost {dataset}")
    out = {}
    for name in approaches:
        fit_name = (
            name
            if name in FIT_TIMED
            else ("aug" if "aug" in name else "reg-R" if name.startswith("reg") else "baseline")
        )
        out[name] = dict(fit_as=fit_name, cpu_s=float(np.median(cpu[fit_name])), wall_s=float(np.median(wall[fit_name])),
                         ratio_cpu=_ratios(np.array(cpu[fit_name]), np.array(cpu["baseline"])),
                         ratio_wall=_ratios(np.array(wall[fit_name]), np.array(wall["baseline"])),
                         cpu_rounds=np.round(cpu[fit_name], 2).tolist())  # fmt: skip
    out["_n_fit_images"], out["_rounds"], out["_threads"] = len(fit_pil), rounds, torch.get_num_threads()
    return out


def stage_costs(dataset: str, log, repeats: int = 5) -> dict:
    """ms per image of each stage, wall (median of ``repeats`` passes over the moved test images).

    ``resize`` and ``normalise`` are today's pre-processing (Pillow resize, ImageNet normalisation);
    ``gray``, ``estimate`` (phase correlation + ECC), ``warp_in`` (uint8) and ``warp_back`` (map) are
    what registration adds, single-threaded.
    """
    fit_pil, _ = load_train(category_paths(dataset, "shipped")[0])
    test = load_test(category_paths(dataset, "test_moved")[1])["images"]
    fit_rgb = reg.rgb_batch(fit_pil, WORK)
    size = reg.reg_size(WORK, 0.5)
    out = {}
    for motion in ("translation", "rigid"):
        start = time.perf_counter()
        reference = reg.build_reference(reg.gray_from_rgb(fit_rgb, size), WORK, motion)
        out[f"{motion}_build_reference_s"] = time.perf_counter() - start
        times = {k: [] for k in ("resize", "gray", "estimate", "warp_in", "normalise", "warp_back")}
        for _ in range(repeats):
            t = [time.perf_counter()]
            rgb = reg.rgb_batch(test, WORK)
            t.append(time.perf_counter())
            grays = reg.gray_from_rgb(rgb, size)
            t.append(time.perf_counter())
            warps, _, _ = reg.register_grays(reference, grays)
            t.append(time.perf_counter())
            warped = reg.warp_rgb_to_reference(rgb, warps)
            t.append(time.perf_counter())
            batch = reg.normalise(warped)
            t.append(time.perf_counter())
            reg.warp_maps_back(batch[:, 0], warps)
            t.append(time.perf_counter())
            for key, a, b in zip(times, t, t[1:]):
                times[key].append((b - a) / len(test) * 1e3)
        out[motion] = {k: float(np.median(v)) for k, v in times.items()}
        log(f"stage costs {dataset} {motion} (ms/img): " + ", ".join(f"{k} {v:.2f}" for k, v in out[motion].items()))
    return out


# ---------------------------------------------------------------- confidence (fail closed)


def foreign_inputs(dataset: str, good: list) -> dict[str, list]:
    """Inputs registration must not trust: flat frames, noise, the other category, parts moved far."""
    rng = np.random.default_rng(7)
    w, h = good[0].size
    other = next(d for d in DATASETS if d != dataset)
    other_images = [load_image(s.path) for s in train_samples(DATASETS[other])[:8]]
    far = {}
    for label, (shift, angle) in {"shift 3x range": (3 * MAX_SHIFT, 0), "shift 8x range": (8 * MAX_SHIFT, 0),
                                  "rotate 15 deg": (0, 15), "rotate 45 deg": (0, 45),
                                  "rotate 90 deg": (0, 90)}.items():  # fmt: skip
        images = []
        for image in good[:8]:
            sign = rng.choice([-1, 1], size=2)
            m = move_matrix(w, h, sign[0] * shift * w, sign[1] * shift * h, angle * rng.choice([-1, 1]))
            images.append(Image.fromarray(move_image(np.asarray(image), m)))
        far[label] = images
    return {
        "white frame": [Image.new("RGB", (w, h), (255, 255, 255))],
        "black frame": [Image.new("RGB", (w, h), (0, 0, 0))],
        "gray frame": [Image.new("RGB", (w, h), (128, 128, 128))],
        "uniform noise": [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for _ in range(4)],
        f"{other} images": other_images,
        **far,
    }


def run_confidence(dataset: str, log) -> dict:
    """ECC coefficient, phase response, coverage and the trust decision per group of inputs."""
    out = {}
    for train_variant in ("shipped", "all_moved"):
        fit_pil, hold_pil = load_train(category_paths(dataset, train_variant)[0])
        fit = reg.rgb_batch(fit_pil, WORK)
        test = load_test(category_paths(dataset, "test_moved")[1])
        shipped_good = [load_image(s.path) for s in test_samples(DATASETS[dataset]) if s.label == 0]
        for motion in ("translation", "rigid"):
            size = reg.reg_size(WORK, 0.5)
            reference = reg.build_reference(reg.gray_from_rgb(fit, size), WORK, motion)
            _, held = reg.preprocess_registered(reference, hold_pil)
            reference.threshold = reg.confidence_threshold(held.confidence)
            groups = {
                "train (fit split, in the reference)": fit,
                "held-out train (sets the rule)": hold_pil,
                "good test (moved)": [i for i, y in zip(test["images"], test["labels"]) if y == 0],
                "defective test (moved)": [i for i, y in zip(test["images"], test["labels"]) if y == 1],
                **foreign_inputs(dataset, shipped_good),
            }
            rows = {}
            for group, images in groups.items():
                rgb = images if isinstance(images, np.ndarray) else reg.rgb_batch(images, WORK)
                _, info = reg.register_rgb(reference, rgb)
                batch = rgb
                params = np.array([reg.warp_params(w, WORK) for w in info.warps])
                rows[group] = dict(n=len(batch), confidence_min=float(info.confidence.min()),
                                   confidence_median=float(np.median(info.confidence)),
                                   confidence_max=float(info.confidence.max()),
                                   response_min=float(info.response.min()),
                                   response_median=float(np.median(info.response)),
                                   coverage_min=float(info.valid.min()),
                                   shift_max_px=float(np.hypot(params[:, 0], params[:, 1]).max()),
                                   angle_max_deg=float(np.abs(params[:, 2]).max()),
                                   usable=int(reg.usable(info.confidence, info.valid).sum()),
                                   trusted=int(info.trusted.sum()))  # fmt: skip
            key = f"{train_variant}/{motion}"
            out[key] = dict(threshold=reference.threshold, held_out=held.confidence.round(4).tolist(), groups=rows)
            log(f"confidence {dataset} {key}: threshold {reference.threshold:.4f}")
            for group, r in rows.items():
                log(f"   {group:36s} n {r['n']:3d} cc min {r['confidence_min']:.4f} med {r['confidence_median']:.4f} "
                    f"resp med {r['response_median']:.3f} cover min {r['coverage_min']:.2f} usable {r['usable']} "
                    f"trusted {r['trusted']}/{r['n']}")  # fmt: skip
    return out


# ---------------------------------------------------------------- accuracy on known moves


def run_accuracy(dataset: str, log, moves_per_image: int = 8, settings=None) -> dict:
    """Known moves (within the range) of good images; the registered move against the true one.

    The estimated move is W_moved o W_original^-1 (both registered to the same reference), so an
    offset of the unmoved image itself cancels. Errors in the original image's pixels: the shift
    error at the centre, the largest displacement error over the four corners; the angle error.
    """
    fit_pil, hold_pil = load_train(category_paths(dataset, "shipped")[0])
    fit = reg.rgb_batch(fit_pil, WORK)
    good = [load_image(s.path) for s in test_samples(DATASETS[dataset]) if s.label == 0] + hold_pil
    rng = np.random.default_rng(11)
    settings = settings or {
        "rigid, 64+128 px, 15+5 iterations, eps 1e-4 (default)": dict(motion="rigid"),
        "rigid, 64+128 px, 30+10 iterations, eps 1e-4": dict(motion="rigid", iterations=(30, 10)),
        "rigid, 64+128 px, 100+15 iterations, eps 1e-5": dict(motion="rigid", iterations=(100, 15), eps=1e-5),
        "rigid, 64+128+256 px, 100+15+10 iterations, eps 1e-5": dict(motion="rigid", scale=1.0, levels=3,
                                                                    iterations=(100, 15, 10), eps=1e-5),
        "translation (default; shift-only moves)": dict(motion="translation"),
    }  # fmt: skip
    out = {}
    cases = []
    for image in good:
        arr = np.asarray(image)
        h, w = arr.shape[:2]
        truths = random_moves(rng, moves_per_image, (h, w), MAX_SHIFT, MAX_ANGLE)
        cases.append((arr, truths))
    for label, s in settings.items():
        s = dict(s)
        motion, scale, levels = s.pop("motion"), s.pop("scale", 0.5), s.pop("levels", 2)
        size = reg.reg_size(WORK, scale)
        reference = reg.build_reference(reg.gray_from_rgb(fit, size), WORK, motion, levels, **s)
        centre_err, corner_err, angle_err, seconds = [], [], [], 0.0
        for arr, truths in cases:
            h, w = arr.shape[:2]
            if motion == "translation":
                truths = [np.hstack([np.eye(2), t[:, 2:] + (t[:, :2] - np.eye(2)) @ [[(w - 1) / 2], [(h - 1) / 2]]])
                          for t in truths]  # the same shift at the centre, no rotation  # fmt: skip
            images = [arr] + [move_image(arr, t) for t in truths]
            rgb = reg.rgb_batch([Image.fromarray(i) for i in images], WORK)
            start = time.perf_counter()
            warps, _, _ = reg.register_grays(reference, reg.gray_from_rgb(rgb, size), **s)
            seconds += time.perf_counter() - start
            base = reg.invert(warps[0])
            for truth, warp in zip(truths, warps[1:]):
                est = reg.rescale_warp(reg.compose(warp, base), WORK, (h, w))  # original px: original -> moved
                pts = np.array(
                    [[0, 0, 1], [w - 1, 0, 1], [0, h - 1, 1], [w - 1, h - 1, 1], [(w - 1) / 2, (h - 1) / 2, 1]]
                ).T
                d = np.linalg.norm(est @ pts - truth @ pts, axis=0)
                centre_err.append(d[4])
                corner_err.append(d[:4].max())
                angle_err.append(abs(reg.warp_params(est, (h, w))[2] - reg.warp_params(truth, (h, w))[2]))
        c, k, a = np.array(centre_err), np.array(corner_err), np.array(angle_err)
        px = arr.shape[1] / WORK[1]  # original pixels per working pixel
        out[label] = dict(
            n_moves=len(c), original_side_px=int(arr.shape[1]),
            centre_shift_error_px=dict(median=float(np.median(c)), p95=float(np.quantile(c, 0.95)), max=float(c.max())),
            corner_error_px=dict(median=float(np.median(k)), p95=float(np.quantile(k, 0.95)), max=float(k.max())),
            angle_error_deg=dict(median=float(np.median(a)), p95=float(np.quantile(a, 0.95)), max=float(a.max())),
            within_0_5px_centre=float((c <= 0.5).mean()), within_0_2deg=float((a <= 0.2).mean()),
            working_px_per_original_px=1 / px,
            ms_per_image=seconds / (len(cases) * (moves_per_image + 1)) * 1e3,
        )  # fmt: skip
        r = out[label]
        log(f"accuracy {dataset} {label}: centre med {r['centre_shift_error_px']['median']:.3f} max "
            f"{r['centre_shift_error_px']['max']:.3f} px; corners med {r['corner_error_px']['median']:.2f} max "
            f"{r['corner_error_px']['max']:.2f} px; angle med {r['angle_error_deg']['median']:.3f} max "
            f"{r['angle_error_deg']['max']:.3f} deg; within 0.5 px {r['within_0_5px_centre']:.2f}, within 0.2 deg "
            f"{r['within_0_2deg']:.2f}; {r['ms_per_image']:.1f} ms/img")  # fmt: skip
    return out


# ---------------------------------------------------------------- parity


def run_parity(dataset: str, log) -> dict:
    """Neighbourhood scoring (k = 3) and the in-graph warp: eager torch against onnxruntime; cv2 against the graph."""
    fit_pil, _ = load_train(category_paths(dataset, "shipped")[0])
    model = Padim(seed=SEED, align="none").fit(preprocess(fit_pil[:40], WORK))
    batch = preprocess(load_test(category_paths(dataset, "test_moved")[1])["images"][:6], WORK)
    a = neighbour_predictor(model, 3, onnxruntime=True).predict_batch(batch)
    b = neighbour_predictor(model, 3, onnxruntime=False).predict_batch(batch)
    out = dict(nbhd3_max_abs_map=float(np.abs(a.anomaly_map - b.anomaly_map).max()),
               nbhd3_max_rel_score=float(np.abs(a.score - b.score).max() / np.abs(b.score).max()))  # fmt: skip
    # The warp in the graph (GridSample) against cv2.warpAffine, and torch against onnxruntime.
    rng = np.random.default_rng(3)
    warps = np.stack([move_matrix(WORK[1], WORK[0], *rng.uniform(-7, 7, 2), rng.uniform(-3, 3)) for _ in batch])
    by_cv2 = reg.warp_batch_to_reference(batch, warps)
    images, theta = torch.from_numpy(batch), torch.from_numpy(warps).float()
    with torch.no_grad():
        by_torch = GraphWarp()(images, theta).numpy()
    run = make_runner(GraphWarp(), {"images": images, "warps": theta}, ["warped"], {"images": 0, "warps": 0, "warped": 0},
                      onnxruntime=True)  # fmt: skip
    by_ort = run(images=batch, warps=warps.astype(np.float32))["warped"]
    inner = (slice(None), slice(None), slice(12, -12), slice(12, -12))
    out.update(warp_cv2_vs_torch_max_abs=float(np.abs(by_cv2 - by_torch).max()),
               warp_cv2_vs_torch_max_abs_inside=float(np.abs(by_cv2 - by_torch)[inner].max()),
               warp_cv2_vs_torch_mean_abs=float(np.abs(by_cv2 - by_torch).mean()),
               warp_torch_vs_onnxruntime_max_abs=float(np.abs(by_torch - by_ort).max()),
               image_value_range=float(batch.max() - batch.min()))  # fmt: skip
    log(f"parity: {out}")
    return out


# ---------------------------------------------------------------- report


def fmt(x, digits=4):
    return "" if x is None else (f"{x:.{digits}f}" if isinstance(x, float) else str(x))


def write_report(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    lines = ["# Alignment: PaDiM with moved parts\n", f"{result['machine']}, {result['date']}. "
             "Produced by `benchmarks/alignment.py`; see `benchmarks/README.md`.\n"]  # fmt: skip
    speed = result.get("speed", {})
    fit_cost = result.get("fit_cost", {})
    lines += ["Speed columns: CPU-time ratios to the baseline measured in the same run, per data set (see Speed and Fit "
              "cost below). "
              "*untrusted*: test images whose registration is not trusted (of them good), which must fail closed; "
              "*fail closed*: image AUROC with those reported anomalous.\n",
              "| data set | variant | approach | image AUROC | pixel AUROC | AUPRO | predict throughput × | fit time × | "
              "untrusted (good) | image AUROC, fail closed |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in result.get("quality", []):
        s = speed.get(row["dataset"], {}).get(row["approach"], {})
        f = fit_cost.get(row["dataset"], {}).get(row["approach"], {})
        fit_ratio = (
            f["ratio_cpu"]["median"] if f else (s["fit_ratio_cpu"]["median"] if s and "fit_ratio_cpu" in s else None)
        )
        lines.append(f"| {row['dataset']} | {row['variant']} | {row['approach']} | {fmt(row['image_auroc'])} | "
                     f"{fmt(row['pixel_auroc'])} | {fmt(row['aupro'])} | "
                     f"{fmt(s['predict_ratio_cpu']['median'] if s else None, 2)} | "
                     f"{fmt(fit_ratio, 2)} | "
                     + (f"{row['untrusted']} ({row['untrusted_good']})" if "untrusted" in row else "")
                     + f" | {fmt(row.get('image_auroc_fail_closed'))} |")  # fmt: skip
    for dataset, s in speed.items():
        lines += [f"\n## Predict speed, {dataset} ({s['_n_images']} moved test images from decoded pictures, "
                  f"{s['_rounds']} passes, approaches interleaved chunk by chunk)\n",
                  "Pre-processing, registration and warps included. Ratio: median over passes of the per-pass "
                  "throughput ratio to the baseline [quartiles]; > 1 is faster. Registration runs on one thread "
                  "beside onnxruntime's two, so the wall ratio of a lone stream is lower than the CPU ratio, which is "
                  "what a saturated line PC (or registration in the decoding threads) sees.\n",
                  "| approach | images/s (wall) | CPU ms/image | throughput × (CPU) | throughput × (wall) |",
                  "|---|---|---|---|---|"]  # fmt: skip
        q = lambda r: f"{r['median']:.2f} [{r['q25']:.2f}, {r['q75']:.2f}]"  # noqa: E731
        for name, v in s.items():
            if name.startswith("_"):
                continue
            lines.append(f"| {name} | {v['images_per_s_wall']:.1f} | {v['cpu_ms_per_image']:.1f} | "
                         f"{q(v['predict_ratio_cpu'])} | {q(v['predict_ratio_wall'])} |")  # fmt: skip
    for dataset, f in fit_cost.items():
        lines += [
            f"\n## Fit cost, {dataset} ({f['_n_fit_images']} images from decoded pictures, {f['_rounds']} alternating "
            f"rounds, {f['_threads']} thread)\n",
            "Whole fits, one thread for torch and onnxruntime (multi-threaded fits on this shared machine spin "
            "while waiting for a core: their CPU time doubled from round to round). Ratio: median of per-round "
            "ratios to the baseline [quartiles]; > 1 is slower.\n",
            "| approach | fit CPU s | fit × (CPU) | fit × (wall) | CPU s per round |",
            "|---|---|---|---|---|",
        ]
        q = lambda r: f"{r['median']:.2f} [{r['q25']:.2f}, {r['q75']:.2f}]"  # noqa: E731
        for name, v in f.items():
            if name.startswith("_"):
                continue
            note = "" if v["fit_as"] == name else f" (fit as {v['fit_as']})"
            lines.append(f"| {name} | {v['cpu_s']:.1f}{note} | {q(v['ratio_cpu'])} | {q(v['ratio_wall'])} | "
                         f"{v['cpu_rounds']} |")  # fmt: skip
    for dataset, c in result.get("confidence", {}).items():
        for key, v in c.items():
            lines += [f"\n## Registration confidence, {dataset}, {key} (threshold {v['threshold']:.4f})\n",
                      "| inputs | n | ECC cc min | median | phase resp. median | coverage min | max shift px | "
                      "max angle ° | usable | trusted |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
            for group, r in v["groups"].items():
                lines.append(f"| {group} | {r['n']} | {r['confidence_min']:.4f} | {r['confidence_median']:.4f} | "
                             f"{r['response_median']:.3f} | {r['coverage_min']:.2f} | {r['shift_max_px']:.1f} | "
                             f"{r['angle_max_deg']:.2f} | {r['usable']}/{r['n']} | {r['trusted']}/{r['n']} |")  # fmt: skip
    for dataset, a in result.get("accuracy", {}).items():
        lines += [
            f"\n## Registration accuracy on known moves, {dataset} (original pixels)\n",
            "| setting | moves | centre shift error med / p95 / max px | corner error med / p95 / max px | "
            "angle error med / p95 / max ° | ≤0.5 px | ≤0.2° | ms/img |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for label, r in a.items():
            c, k, g = r["centre_shift_error_px"], r["corner_error_px"], r["angle_error_deg"]
            lines.append(f"| {label} | {r['n_moves']} | {c['median']:.3f} / {c['p95']:.3f} / {c['max']:.3f} | "
                         f"{k['median']:.2f} / {k['p95']:.2f} / {k['max']:.2f} | {g['median']:.3f} / {g['p95']:.3f} / "
                         f"{g['max']:.3f} | {r['within_0_5px_centre']:.2f} | {r['within_0_2deg']:.2f} | "
                         f"{r['ms_per_image']:.1f} |")  # fmt: skip
    if "parity" in result:
        p = result["parity"]
        lines += [
            "\n## Parity\n",
            "| what | max abs difference |",
            "|---|---|",
            f"| nbhd3 maps, eager torch vs onnxruntime | {p['nbhd3_max_abs_map']:.2g} (score rel. "
            f"{p['nbhd3_max_rel_score']:.2g}) |",
            f"| image warp, cv2.warpAffine vs GridSample in torch (normalised images, range "
            f"{p['image_value_range']:.1f}) | {p['warp_cv2_vs_torch_max_abs']:.2g} |",
            f"| image warp, GridSample torch vs onnxruntime | {p['warp_torch_vs_onnxruntime_max_abs']:.2g} |",
        ]
    for dataset, st in result.get("stage_costs_ms", {}).items():
        lines += [f"\n## Stage costs, {dataset} (wall ms per image, one thread for registration)\n",
                  "| motion | resize | gray | estimate | warp in | normalise | warp back | build reference s |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for motion in ("translation", "rigid"):
            v = st[motion]
            lines.append(
                f"| {motion} | {v['resize']:.2f} | {v['gray']:.2f} | {v['estimate']:.2f} | {v['warp_in']:.2f} | "
                f"{v['normalise']:.2f} | {v['warp_back']:.2f} | {st[motion + '_build_reference_s']:.1f} |"
            )
    if "notes" in result:
        lines += ["", *result["notes"]]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument(
        "--approaches",
        nargs="+",
        default=["baseline", "reg-T", "reg-R", "nbhd3", "nbhd5", "aug", "reg-R+nbhd3", "reg-R+aug"],
    )
    parser.add_argument("--variants", nargs="+", default=["shipped", "test_moved", "all_moved"])
    parser.add_argument("--speed-approaches", nargs="+", default=None, help="default: --approaches")
    parser.add_argument("--rounds", type=int, default=5, help="predict timing rounds")
    parser.add_argument(
        "--fit-rounds", type=int, default=3, help="fit cost rounds (and fit rounds inside speed when --fit-in-speed)"
    )
    parser.add_argument("--fit-in-speed", action="store_true", help="also time whole fits inside the speed section")
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["quality", "speed", "fitcost", "confidence", "accuracy", "parity", "stages"],
    )
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime threads (fit cost: 1)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "alignment_research")
    parser.add_argument("--merge", action="store_true", help="keep the sections of an existing --out .json not run now")
    parser.add_argument("--report-only", action="store_true", help="rewrite --out .md from its .json (with --notes)")
    parser.add_argument("--notes", type=Path, help="a markdown file stored as the report's closing notes")
    args = parser.parse_args()
    if args.report_only:
        result = json.loads(args.out.with_suffix(".json").read_text())
        if args.notes:
            result["notes"] = args.notes.read_text().splitlines()
        write_report(result, args.out)
        return
    torch.set_num_threads(args.threads)
    __import__("os").environ["PADIM_THREADS"] = str(args.threads)  # onnxruntime's intra-op threads
    started = time.perf_counter()

    def log(text: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f}s] {text}", flush=True)

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    result = dict(machine=f"{cpu}, {len(__import__('os').sched_getaffinity(0))} CPUs, torch {torch.__version__}, "
                          f"OpenCV {cv2.__version__}", date=datetime.date.today().isoformat(),
                  args={k: str(v) for k, v in vars(args).items()})  # fmt: skip
    if args.merge and args.out.with_suffix(".json").is_file():
        kept = json.loads(args.out.with_suffix(".json").read_text())
        runs = kept.pop("runs", []) + ([dict(date=kept.get("date"), args=kept.pop("args"))] if "args" in kept else [])
        result = {**kept, **result}
        runs.append(dict(date=result["date"], args=result.pop("args")))
        result["runs"] = runs
        if args.notes:
            result["notes"] = args.notes.read_text().splitlines()
    partial = HERE / "_work" / (args.out.name + "-partial")  # intermediate reports, git-ignored
    if "parity" not in args.skip:
        result["parity"] = run_parity("bottle", log)
    if "accuracy" not in args.skip:
        result["accuracy"] = {d: run_accuracy(d, log) for d in args.datasets}
        write_report(result, partial)
    if "confidence" not in args.skip:
        result["confidence"] = {d: run_confidence(d, log) for d in args.datasets}
        write_report(result, partial)
    if "stages" not in args.skip:
        result["stage_costs_ms"] = {d: stage_costs(d, log) for d in args.datasets}
    if "quality" not in args.skip:
        result["quality"] = run_quality(args.datasets, args.approaches, args.variants, log)
        write_report(result, partial)
    if "speed" not in args.skip:
        names = args.speed_approaches or args.approaches
        names = ["baseline"] + [n for n in names if n != "baseline"]
        fit_rounds = args.fit_rounds if args.fit_in_speed else 0
        result["speed"] = {d: run_speed(d, names, args.rounds, log, fit_rounds) for d in args.datasets}
    if "fitcost" not in args.skip:
        names = ["baseline"] + [n for n in args.approaches if n != "baseline"]
        result["fit_cost"] = {d: run_fit_cost(d, names, args.fit_rounds, log) for d in args.datasets}
    write_report(result, args.out)
    log(f"written {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
