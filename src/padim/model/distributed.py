"""Fitting on a Ray cluster: shards of images streamed by workers, statistics merged once.

A fit on one machine streams every good image into the per-patch statistics of
:mod:`padim.stats.gaussian`; those statistics merge exactly (Chan et al.), so the image list is cut
into shards, each Ray task streams its shard into statistics of its own, and the driver merges
them in shard order. The channel indices, the working size and the hold-out split are chosen on
the driver before any task starts (:func:`padim.model.fitting.prepare`), and the threshold is set
there on the held-out images, so the model equals the one-process fit (tests/test_distributed.py).
A task's result is its shard's statistics and nothing else: a worker that dies is retried by
Ray from the start of its shard, and the lost attempt's images are never counted.

What travels: the model's graph record (backbone weights, channel indices, working size) is put
in Ray's object store once; images are read by the workers from their paths.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch

from padim.errors import DataError, OptionError, PadimError
from padim.graph.build import GraphSpec, embedding_runner
from padim.graph.runners import use_onnxruntime
from padim.jobs.ray_cluster import INT8_REFUSAL, connect, shards
from padim.machine import ENV_THREADS
from padim.model import fitting
from padim.model.padim import Padim

#: Ray's retries of a task whose worker died (each retry restarts its shard from the first image).
MAX_RETRIES = 3


def _shard_statistics(spec: GraphSpec, run: dict, samples: list, options: dict, threads: int,
                      before: Callable | None) -> tuple:  # fmt: skip
    """Ray task: one shard streamed into fresh statistics; returns (statistics, skipped files)."""
    torch.set_num_threads(threads)
    os.environ[ENV_THREADS] = str(threads)  # onnxruntime's threads (padim.machine.cpu_threads)
    if before is not None:
        before()  # fault injection in tests
    skipped: dict = {}
    embed = embedding_runner(spec, run["device"], run["onnxruntime"])
    stats = fitting.statistics(embed, samples, spec, dtype=run["dtype"], device=run["device"], skipped=skipped,
                               **{**options, "desc": ""})  # fmt: skip
    return stats, skipped


def shard_statistics(model: Padim, samples: Sequence[Any], options: dict, *, n_shards: int | None = None,
                     threads: int = 1, before_shard: Callable | None = None) -> tuple:  # fmt: skip
    """Per-patch statistics of ``samples`` streamed by Ray tasks, merged in shard order (a :data:`padim.model.padim.Gather`).

    Args:
        model: a :class:`padim.model.padim.Padim` being fitted (its backbone, channels and working size decided).
        samples: the image files (:class:`padim.io.datasets.Sample`).
        options: decoding options of :func:`padim.io.loading.iter_batches`.
        n_shards: tasks (None: the cluster's CPUs divided by ``threads``).
        threads: CPUs (torch and onnxruntime threads) per task.
        before_shard: called in each task before it streams (tests kill a worker with it).

    Returns:
        (:class:`padim.stats.gaussian.GaussianStats` or None, skipped files path -> reason).
    """
    if not isinstance(samples, list):
        raise OptionError("a distributed fit reads image files: give a folder or a list of paths")
    ray = connect()
    if n_shards is None:
        n_shards = max(1, int(ray.cluster_resources().get("CPU", 1)) // threads)
    run = dict(device=str(model.device), onnxruntime=use_onnxruntime(model.backend, model.device, model.backbone_dtype),
               dtype=torch.float32 if model.stats_dtype == "float32" else torch.float64)  # fmt: skip
    spec = ray.put(model.graph_spec())
    task = ray.remote(num_cpus=threads, max_retries=MAX_RETRIES)(_shard_statistics)
    quiet, options = options.get("quiet", True), {**options, "quiet": True, "workers": 0}
    futures = [task.remote(spec, run, part, options, threads, before_shard) for part in shards(samples, n_shards)]
    merged, skipped = None, {}
    while futures:  # merged in shard order (the same sums every run), one shard's statistics held at a time
        try:
            stats, part = ray.get(futures.pop(0))
        except ray.exceptions.RayTaskError as error:
            if isinstance(error.cause, PadimError):  # an unreadable image: its one line, not a traceback
                raise error.cause from None
            raise
        skipped.update(part)
        merged = stats if merged is None else (merged if stats is None else merged.merge(stats))
    if merged is None:
        raise DataError("fitting needs at least 2 good images, got none")
    if not quiet:
        print(f"padim: merged the statistics of {merged.count} images", file=sys.stderr)
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
