"""Fitting on a Ray cluster: shards streamed by tasks, merged as a tree and factored patch by patch on the workers.

A fit on one machine streams every good image into the per-patch statistics of
:mod:`padim.stats.gaussian`; those statistics merge exactly (Chan et al.), and every patch's
Gaussian is independent of the others. So the image list is cut into shards, each Ray task
streams its shard into statistics of its own and hands them on cut into patch ranges (one
object per range); each range's pieces are merged as a tree of tasks (:data:`FAN_IN` pieces per
task, in shard order), and the task at each root factors that range's precisions
(:func:`padim.stats.gaussian.precision_cholesky_from_stats`). The driver receives the means and
the float16 factors (and the merged statistics with ``keep_stats``), concatenates the ranges and
sets the threshold on the held-out images; its work does not grow with the number of shards.

The channel indices, the working size and the hold-out split are chosen on the driver before any
task starts (:func:`padim.model.fitting.prepare`), so the model equals the one-process fit up to
the order of floating-point sums (tests/test_distributed.py). Every task returns values only, so
Ray retries a task whose worker died (or rebuilds a result lost with its node from lineage) and
no image is counted twice. The model's graph record is put in the object store once; images are
read by the workers from their paths, which every node must see.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch

from padim.errors import DataError, OptionError, PadimError
from padim.graph.build import GraphSpec, embedding_runner
from padim.graph.runners import use_onnxruntime
from padim.jobs.ray_cluster import INT8_REFUSAL, connect, shards
from padim.machine import ENV_THREADS
from padim.model import fitting
from padim.model.padim import Padim
from padim.stats.gaussian import GaussianStats, precision_cholesky_from_stats

#: Ray's retries of a task whose worker died (a shard restarts from its first image).
MAX_RETRIES = 3
#: Pieces one merge task takes: a tree of depth log4(shards), each level's merges in parallel.
FAN_IN = 4

#: A patch range's statistics in transit: (count, mean (p, D) float64, packed scatter (p, D(D+1)/2)), or None.
Piece = tuple[int, np.ndarray, np.ndarray] | None


def patch_ranges(n_patches: int, n_ranges: int) -> list[tuple[int, int]]:
    """``n_ranges`` contiguous (start, stop) ranges covering the patches, sizes differing by at most one.

    >>> patch_ranges(10, 3)
    [(0, 4), (4, 7), (7, 10)]
    """
    return [(part[0], part[-1] + 1) for part in shards(range(n_patches), n_ranges)]


def _cut(stats: GaussianStats | None, ranges: list[tuple[int, int]]) -> list[Piece]:
    """The statistics as one piece per patch range (NumPy: read from the object store without a copy)."""
    if stats is None:
        return [None] * len(ranges)
    return [(stats.count, stats.mean[a:b].numpy(), stats.m2[a:b].numpy()) for a, b in ranges]


def _joined(pieces: Sequence[Piece]) -> GaussianStats | None:
    """One patch range's pieces merged in order (Chan et al.'s exact merge); None if none holds images."""
    merged = None
    with warnings.catch_warnings():  # object-store arrays are read-only; the merge never writes its inputs
        warnings.simplefilter("ignore", UserWarning)
        for piece in pieces:
            if piece is not None:
                stats = GaussianStats(piece[0], torch.from_numpy(piece[1]), torch.from_numpy(piece[2]))
                merged = stats if merged is None else merged.merge(stats)
    return merged


def _shard(spec: GraphSpec, run: dict, samples: list, options: dict, threads: int, before: Callable | None,
           ranges: list[tuple[int, int]]) -> tuple:  # fmt: skip
    """Ray task: one shard streamed into fresh statistics; (one piece per patch range..., skipped files)."""
    torch.set_num_threads(threads)
    os.environ[ENV_THREADS] = str(threads)  # onnxruntime's threads (padim.machine.cpu_threads)
    if before is not None:
        before()  # fault injection in tests
    skipped: dict = {}
    embed = embedding_runner(spec, run["device"], run["onnxruntime"])
    stats = fitting.statistics(embed, samples, spec, dtype=run["dtype"], device=run["device"], skipped=skipped,
                               **{**options, "desc": ""})  # fmt: skip
    return (*_cut(stats, ranges), skipped)


def _merge(threads: int, *pieces: Piece) -> Piece:
    """Ray task: a node of the merge tree."""
    torch.set_num_threads(threads)
    merged = _joined(pieces)
    return None if merged is None else _cut(merged, [(0, merged.mean.shape[0])])[0]


def _root(threads: int, eps: float | None, keep: bool, *pieces: Piece) -> tuple | None:
    """Ray task: a patch range's root: merged, then factored (``eps`` None: the merged piece only).

    Returns:
        (count, mean (p, D) float32, packed factors (p, D(D+1)/2) float16, the merged piece or None), or
        (count, None, None, the merged piece) without ``eps``; None when no shard had images.
    """
    torch.set_num_threads(threads)
    merged = _joined(pieces)
    if merged is None:
        return None
    piece = _cut(merged, [(0, merged.mean.shape[0])])[0]
    if eps is None:
        return merged.count, None, None, piece
    factors = precision_cholesky_from_stats(merged, eps, packed=True).numpy()
    return merged.count, merged.mean.float().numpy(), factors, piece if keep else None


def merge_tree(ray: Any, pieces: list[list[Any]], eps: float | None, keep: bool, threads: int = 1) -> list[Any]:
    """Start the merge trees on the workers: one per patch range, the shards' pieces in order at its leaves.

    Args:
        ray: the connected ``ray`` module.
        pieces: per shard, one object reference (or value) per patch range (:func:`_shard`'s results).
        eps: the covariances' ``eps`` (each root factors its range), or None (the merged statistics only).
        keep: with ``eps``, the roots also return the merged statistics (``keep_stats``).
        threads: CPUs per merge task.

    Returns:
        the roots' object references, for :func:`collect`.
    """
    merge = ray.remote(num_cpus=threads, max_retries=MAX_RETRIES)(_merge)
    root = ray.remote(num_cpus=threads, max_retries=MAX_RETRIES)(_root)
    roots = []
    for level in zip(*pieces):
        level = list(level)
        while len(level) > FAN_IN:
            level = [merge.remote(threads, *level[i : i + FAN_IN]) for i in range(0, len(level), FAN_IN)]
        roots.append(root.remote(threads, eps, keep, *level))
    return roots


def collect(ray: Any, roots: list[Any], eps: float | None) -> Any:
    """The ranges' results concatenated: a :class:`padim.model.fitting.Factored` (with ``eps``), else
    :class:`padim.stats.gaussian.GaussianStats`; None when no shard had images."""
    parts = [_unwrapped(ray, ref) for ref in roots]
    if any(part is None for part in parts):
        return None
    with warnings.catch_warnings():  # read-only arrays from the object store, never written
        warnings.simplefilter("ignore", UserWarning)
        count, stats = parts[0][0], None
        if parts[0][3] is not None:
            stats = GaussianStats(count, torch.from_numpy(np.concatenate([p[3][1] for p in parts])),
                                  torch.from_numpy(np.concatenate([p[3][2] for p in parts])))  # fmt: skip
        if eps is None:
            return stats
        mean = torch.from_numpy(np.concatenate([p[1] for p in parts]))
        factors = torch.from_numpy(np.concatenate([p[2] for p in parts]))
    return fitting.Factored(count, mean, factors, eps, stats)


def _unwrapped(ray: Any, ref: Any) -> Any:
    """``ray.get(ref)``; a user's error raised in a task (an unreadable image, too few images) as itself."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as error:
        if isinstance(error.cause, PadimError):  # its one line, not a traceback
            raise error.cause from None
        raise


def shard_statistics(model: Padim, samples: Sequence[Any], options: dict, *, n_shards: int | None = None,
                     threads: int = 1, before_shard: Callable | None = None) -> tuple:  # fmt: skip
    """Statistics of ``samples`` streamed by Ray tasks, merged (and factored) on the workers (a :data:`padim.model.padim.Gather`).

    Args:
        model: a :class:`padim.model.padim.Padim` being fitted (its backbone, channels and working size decided).
        samples: the image files (:class:`padim.io.datasets.Sample`).
        options: decoding options of :func:`padim.io.loading.iter_batches`; ``keep_stats`` (what
            :meth:`padim.model.padim.Padim.fit` adds) asks for the Gaussians factored on the workers.
        n_shards: tasks (None: the cluster's CPUs divided by ``threads``); also the patch ranges.
        threads: CPUs (torch and onnxruntime threads) per task.
        before_shard: called in each task before it streams (tests kill a worker with it).

    Returns:
        (:class:`padim.model.fitting.Factored` when ``options`` has ``keep_stats``, else
        :class:`padim.stats.gaussian.GaussianStats`; skipped files path -> reason).
    """
    if not isinstance(samples, list):
        raise OptionError("a distributed fit reads image files: give a folder or a list of paths")
    ray = connect()
    if n_shards is None:
        n_shards = max(1, int(ray.cluster_resources().get("CPU", 1)) // threads)
    run = dict(device=str(model.device), onnxruntime=use_onnxruntime(model.backend, model.device, model.backbone_dtype),
               dtype=torch.float32 if model.stats_dtype == "float32" else torch.float64)  # fmt: skip
    factored = "keep_stats" in options
    keep = bool(options.get("keep_stats"))
    quiet = options.get("quiet", True)
    # Each shard registers its images to the model's reference (padim.align) as a local fit does.
    options = {k: v for k, v in options.items() if k != "keep_stats"} | {"quiet": True, "workers": 0,
                                                                         "reference": model.alignment_}  # fmt: skip
    spec = model.graph_spec()
    parts = shards(samples, n_shards)
    ranges = patch_ranges(int(np.prod(spec.feature_size)), len(parts))
    task = ray.remote(num_cpus=threads, max_retries=MAX_RETRIES, num_returns=len(ranges) + 1)(_shard)
    spec_ref = ray.put(spec)
    results = [task.remote(spec_ref, run, part, options, threads, before_shard, ranges) for part in parts]
    eps = model.eps if factored else None
    roots = merge_tree(ray, [list(result[:-1]) for result in results], eps, keep, threads)
    skipped: dict = {}
    for result in results:  # in shard order: the first unreadable image is the one a local fit names
        skipped.update(_unwrapped(ray, result[-1]))
    merged = collect(ray, roots, eps)
    if merged is None:
        raise DataError("fitting needs at least 2 good images, got none")
    if not quiet:
        print(f"padim: merged the statistics of {merged.count} images on the workers", file=sys.stderr)
    return merged, skipped


def gather(*, n_shards: int | None = None, threads: int = 1, before_shard: Callable | None = None) -> Callable:
    """A :data:`padim.model.padim.Gather` that shards the images over the connected Ray cluster."""
    return partial(shard_statistics, n_shards=n_shards, threads=threads, before_shard=before_shard)


def fit(model: Padim, data: Any, *, validation: Any = None, n_shards: int | None = None, threads: int = 1,
        batch_size: int | None = None, quiet: bool = True, skip_bad: bool = False, keep_stats: bool = False,
        before_shard: Callable | None = None) -> Padim:  # fmt: skip
    """Fit a :class:`padim.model.padim.Padim` on a Ray cluster (connect first with :func:`padim.jobs.ray_cluster.connect`).

    The result equals ``model.fit(data, validation=..., keep_stats=...)`` on one machine: the same
    channel indices, working size, hold-out split and threshold; the statistics differ only by
    the order of floating-point sums (merged shards instead of one stream).

    Raises:
        OptionError: for an int8 backbone, images that are not files, or a bad argument.
        DataError: as :meth:`padim.model.padim.Padim.fit`.
    """
    if model.backbone_dtype == "int8":
        raise OptionError(INT8_REFUSAL)
    return model.fit(data, validation=validation, batch_size=batch_size, quiet=quiet, skip_bad=skip_bad,
                     keep_stats=keep_stats, gather=gather(n_shards=n_shards, threads=threads, before_shard=before_shard))  # fmt: skip
