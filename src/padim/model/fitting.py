"""The steps of a fit, as functions: set-up, int8 calibration, streamed statistics, Gaussians.

PaDiM (Defard et al. 2020, https://arxiv.org/abs/2011.08785): embed each patch with several
backbone layers (Sec. 3.1), fit one Gaussian per patch position (Sec. 3.2), score by the
Mahalanobis distance (Sec. 3.3). A fit here streams sufficient statistics
(:mod:`padim.stats.gaussian`), so its memory does not grow with the number of images.

Each step returns what it decided; none writes a model's attributes. :class:`Fitted` is the
whole of a fitted model's state: :meth:`padim.model.padim.Padim.fit` builds one with these
functions, :func:`padim.model.files.load` reads one from a file, and the Ray fit
(:mod:`padim.model.distributed`) and the update (:mod:`padim.model.incremental`) gather the
statistics their own way; a model adopts a :class:`Fitted` whole.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from padim.align.reference import Reference, aligned
from padim.align.reference import build as build_reference
from padim.errors import DataError
from padim.features.backbones import FeatureExtractor
from padim.features.embedding import select_channels
from padim.graph.build import GraphSpec, embedding_graph
from padim.graph.quantize import DEFAULT_IMAGES, Quantization, calibrate, optimized, quantize
from padim.io.datasets import split_holdout
from padim.io.loading import FIT_PIXELS, as_batches, default_batch_size, images_per_run, to_samples
from padim.machine import return_large_blocks
from padim.model import memory
from padim.model.settings import resolve
from padim.model.working_size import checked_plan
from padim.runtime.ort import OrtRunner
from padim.scoring.calibration import Calibration
from padim.stats.gaussian import GaussianStats, precision_cholesky_from_stats, stream

#: Good images the alignment reference is built from (:func:`alignment`).
REFERENCE_IMAGES = 32


@dataclass
class Fitted:
    """A fitted model's state: what ``fit`` decided and computed (each is the model's attribute of the same name + ``_``).

    Attributes:
        layers: the backbone layers used.
        image_size: the working size (H, W).
        grid_stride: pixels per Gaussian.
        tile_size: the backbone's tile side (0: whole images).
        feature_size: the Gaussians' grid (H, W); P = H * W.
        extractor: the cut backbone.
        channel_idx: (D,) kept channels.
        mean: (P, D) float32 means, None before the statistics are in.
        precision_cholesky_packed: (P, D(D+1)/2) float16 packed factors C of the precisions C C^T.
        n_images: images in the Gaussians.
        calibration: the thresholds, or None.
        quantization: the int8 backbone's ranges, or None (float32).
        alignment: the reference parts are registered to (:mod:`padim.align`), or None.
        stats: the streamed statistics, kept when they may be added to (``keep_stats``).
        holdout_paths: the good images that set the threshold (for updates).
        skipped: unreadable files left out, path -> reason.
        precision_check: a reduced precision's AUROCs against float32 (:mod:`padim.model.quality`), or None.
    """

    layers: tuple[str, ...]
    image_size: tuple[int, int]
    grid_stride: int
    tile_size: int
    feature_size: tuple[int, int]
    extractor: FeatureExtractor
    channel_idx: Tensor
    mean: Tensor | None = None
    precision_cholesky_packed: Tensor | None = None
    n_images: int = 0
    calibration: Calibration | None = None
    quantization: Quantization | None = None
    alignment: Reference | None = None
    stats: GaussianStats | None = None
    holdout_paths: list[Path] = field(default_factory=list)
    skipped: dict[Path, str] = field(default_factory=dict)
    precision_check: dict | None = None


@dataclass
class Setup:
    """A fit's start: the state decided before any image is embedded, and what to stream.

    Attributes:
        fitted: backbone, channels, working size, grid and tiles (no Gaussians yet).
        source: the training images (samples of files, or the data as given).
        validation: the images that set the threshold, or None.
        options: decoding options (batch size, workers, quiet, skip_bad).
    """

    fitted: Fitted
    source: Any
    validation: Any
    options: dict


def prepare(model: Any, data: Any, validation: Any, *, batch_size: int | None = None, workers: int | None = None,
            quiet: bool = True, skip_bad: bool = False) -> Setup:  # fmt: skip
    """A fit's first steps from a model's arguments: backbone, channels, working size, hold-out split.

    Args:
        model: an estimator whose constructor arguments are set (:data:`padim.model.settings.PARAMS`).
        data, validation: as :meth:`padim.model.padim.Padim.fit`.
        batch_size, workers, quiet, skip_bad: decoding (:func:`padim.io.loading.iter_batches`).

    Raises:
        OptionError: for a bad argument, or a fit larger than this machine's memory.
        DataError: for a missing or empty folder.
    """
    resolved = resolve(model)
    extractor = FeatureExtractor(model.backbone, resolved.layers, pretrained=model.pretrained, weights=model.weights,
                                 seed=model.seed).to(model.device)  # fmt: skip
    total = sum(info.channels for info in resolved.layer_info)
    channel_idx = select_channels(total, resolved.n_features, model.seed)
    samples = to_samples(data, folder="good")
    weights = sum(t.numel() * t.element_size() for t in extractor.body.state_dict().values())
    paths = None if samples is None else [s.path for s in samples]
    plan = checked_plan(model, resolved, weights, paths, batch_size, quiet)
    if math.prod(plan.image_size) > memory.SMALL_FIT_PIXELS:  # fragments matter (padim.machine.return_large_blocks)
        return_large_blocks()
    if samples is not None and validation is None:
        samples, held = split_holdout(samples, model.holdout, model.seed)
        validation = held or None
    named = None if validation is None else to_samples(validation, folder="good")
    fitted = Fitted(resolved.layers, plan.image_size, plan.grid_stride, plan.tile, plan.estimate.grid, extractor,
                    channel_idx, holdout_paths=[] if named is None else [s.path for s in named])  # fmt: skip
    batch_size = default_batch_size(plan.image_size) if batch_size is None else batch_size
    options = dict(batch_size=batch_size, workers=workers, quiet=quiet, skip_bad=skip_bad)
    return Setup(fitted, samples if samples is not None else data, validation, options)


def calibration_first(samples: list, n_images: int, seed: int) -> list:
    """``samples`` with ``n_images`` of them, drawn from ``seed``, moved to the front (order kept).

    Fitting streams the images once; putting the calibration subset first lets the same decoded
    batches calibrate the backbone and then enter the Gaussians.

    >>> calibration_first(list("abcdef"), 2, seed=0)
    ['c', 'd', 'a', 'b', 'e', 'f']
    """
    chosen = set(np.random.default_rng(seed).permutation(len(samples))[:n_images].tolist())
    return [s for i, s in enumerate(samples) if i in chosen] + [s for i, s in enumerate(samples) if i not in chosen]


def split_first(batches: Iterator[Any], n_images: int) -> tuple[np.ndarray, Iterator[Any]]:
    """The first ``n_images`` images of a stream of batches, and the whole stream again.

    Returns:
        ((n, 3, H, W) float32 array with n <= ``n_images``, an iterator over every batch,
        the ones read here included).
    """
    taken, count = [], 0
    for batch in batches:
        taken.append(batch)
        count += len(batch)
        if count >= n_images:
            break
    arrays = [np.asarray(b.detach().cpu() if hasattr(b, "detach") else b, dtype=np.float32) for b in taken]
    first = np.concatenate(arrays)[:n_images] if arrays else np.zeros((0, 3, 1, 1), np.float32)
    return first, chain(taken, batches)


def alignment(motion: str, image_size: tuple[int, int], data: Any, skipped: dict, *, n_images: int = REFERENCE_IMAGES,
              **options: Any) -> tuple[Reference, Any]:  # fmt: skip
    """The reference parts are registered to (:mod:`padim.align`), built from the first training images.

    Image files are read again from the start afterwards (the first ``n_images`` are decoded twice);
    other forms are read once, the first images kept for the stream.

    Returns:
        (the reference, the training images for the stream, as given or as batches).

    Raises:
        DataError: for fewer than 2 images.
    """
    samples = to_samples(data, folder="good")
    if samples is not None:
        first = list(as_batches(samples[:n_images], image_size, folder="good", skipped=skipped,
                                **{**options, "quiet": True}))  # fmt: skip
    else:
        images, data = split_first(iter(as_batches(data, image_size, folder="good", desc="fit", skipped=skipped,
                                                   **options)), n_images)  # fmt: skip
        first = [images]
    if sum(len(b) for b in first) < 2:
        raise DataError(f"fitting needs at least 2 good images, got {sum(len(b) for b in first)}")
    return build_reference(first, image_size, motion), data


def int8_calibration(spec: GraphSpec, data: Any, seed: int, skipped: dict, *, n_images: int = DEFAULT_IMAGES,
                     reference: Reference | None = None, **options: Any) -> tuple[Quantization, Any, Iterator[Any]]:  # fmt: skip
    """Calibrate an int8 backbone on the first training images (:mod:`padim.graph.quantize`).

    Image files are streamed with a seeded subset of ``n_images`` first (:func:`calibration_first`);
    other forms calibrate on their first ``n_images``. The embedding is traced once from
    ``spec`` (:func:`padim.graph.build.embedding_graph`: the Gaussian grid and tiles included)
    and that graph, quantised, is the fit's embedding executor: tracing it again would cost as
    much as calibrating.

    Returns:
        (the ranges, the int8 embedding's executor, every training batch, the calibration images included).

    Raises:
        DataError: for fewer than 2 images.
    """
    samples = to_samples(data, folder="good")
    if samples is not None:
        data = calibration_first(samples, n_images, seed)
    batches = as_batches(data, spec.image_size, folder="good", desc="fit", skipped=skipped, **options)
    images, batches = split_first(iter(batches), n_images)
    if len(images) < 2:
        raise DataError(f"fitting needs at least 2 good images, got {len(images)}")
    if reference is not None:  # calibrated on what the backbone will see
        images = aligned(reference, images)
    graph = optimized(embedding_graph(spec))
    quantization = calibrate(graph, images)
    return quantization, OrtRunner(quantize(graph, quantization)), batches


def statistics(embed: Any, data: Any, spec: GraphSpec, *, stats: GaussianStats | None = None,
               dtype: torch.dtype = torch.float32, device: Any = "cpu", skipped: dict | None = None,
               reference: Reference | None = None, desc: str = "fit", **options: Any) -> GaussianStats | None:  # fmt: skip
    """Stream good images into per-patch statistics (Sec. 3.2), the backbone a few images at a time.

    Args:
        embed: the embedding's executor (``embed(images=...)["patches"]`` -> (P, n, D)).
        data: images in any form of :func:`padim.io.loading.as_batches`.
        spec: the model's graph record (working size and grid).
        stats: statistics to add to (None: new ones).
        dtype: the scatter matrices' type. device: where they live.
        skipped: a dict unreadable files are added to. desc, options: decoding.
        reference: register each image to it first (:func:`padim.align.reference.aligned`), or None.

    Returns:
        The statistics (None if there were no images and none were given).
    """
    step = images_per_run(spec.image_size, FIT_PIXELS)
    batches = as_batches(data, spec.image_size, folder="good", desc=desc, skipped=skipped, **options)
    if reference is not None:
        batches = (aligned(reference, np.asarray(b.detach().cpu() if hasattr(b, "detach") else b)) for b in batches)
    blocks: Iterable[Tensor] = (
        torch.as_tensor(embed(images=b[i : i + step])["patches"]).to(device) for b in batches
        for i in range(0, len(b), step)
    )  # fmt: skip
    group = memory.update_bytes(math.prod(spec.feature_size), len(spec.channel_idx))
    stats = stream(stats, blocks, dtype, group)
    if stats is not None and stats.mean.shape[0] != math.prod(spec.feature_size):
        raise RuntimeError(f"{stats.mean.shape[0]} patches, expected the grid {spec.feature_size}")
    return stats


@dataclass
class Factored:
    """Gaussians factored where the statistics were merged (a Ray fit's workers, :mod:`padim.model.distributed`).

    Attributes:
        count: images counted. mean: (P, D) float32. precision_cholesky_packed: (P, D(D+1)/2) float16.
        eps: the ``eps`` they were factored with. stats: the merged statistics, when they are kept (else None).
    """

    count: int
    mean: Tensor
    precision_cholesky_packed: Tensor
    eps: float
    stats: GaussianStats | None = None


def gaussians(stats: GaussianStats | Factored | None, eps: float) -> tuple[int, Tensor, Tensor]:
    """(images counted, means (P, D) float32, packed precision factors (P, D(D+1)/2) float16) of the statistics.

    Raises:
        DataError: with fewer than 2 images.
    """
    if isinstance(stats, Factored):
        if stats.eps == eps:
            return stats.count, stats.mean, stats.precision_cholesky_packed
        stats = stats.stats
    if stats is None:
        raise DataError("fitting needs at least 2 good images, got none")
    return stats.count, stats.mean.float(), precision_cholesky_from_stats(stats, eps, packed=True)


def kept(stats: GaussianStats | Factored | None) -> GaussianStats | None:
    """The statistics to keep in a model (``keep_stats``): ``stats`` itself, or those a :class:`Factored` carries."""
    return stats.stats if isinstance(stats, Factored) else stats
