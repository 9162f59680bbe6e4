"""Fit and batch-predict on a Ray cluster: shards of images streamed by workers, statistics merged once.

A fit on one machine streams every good image into the per-patch statistics of
:mod:`padim.gaussian`; those statistics merge exactly (Chan et al.), so the image list is cut
into shards, each Ray task streams its shard into statistics of its own, and the driver merges
them in shard order and factors the precision once. The channel indices, the working size and
the hold-out split are chosen on the driver before any task starts, and the threshold is set
there on the held-out images, so the model equals the one-process fit (tests/test_distributed.py).
A task's result is its shard's statistics and nothing else: a worker that dies is retried by
Ray from the start of its shard, and the lost attempt's images are never counted.

Predict (:func:`predict_files`): Ray Data reads the image files and decodes them in tasks; a
pool of actors (``ray.data.ActorPoolStrategy``) each loads the model once and scores batches;
the driver writes each row and overlay picture as it arrives (:mod:`padim.batch_predict`'s
row and picture code), so the CSV holds the local command's rows, in the order they finish.

What travels: the fitting model (backbone weights, channel indices, working size) is put in
Ray's object store once; the model file's bytes are sent once per predicting actor; images are
read by the workers from their paths, which every node must see (a shared folder or an
object-store URL that Ray Data reads); rows and pictures come back to the driver.
"""

from __future__ import annotations

import copy
import functools
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from padim.errors import DataError, OptionError

#: Ray's retries of a task whose worker died (each retry restarts its shard from the first image).
MAX_RETRIES = 3


def connect(address: str | None = None, num_cpus: int | None = None) -> Any:
    """Connect to the Ray cluster at ``address`` (None: ``RAY_ADDRESS``, else a local one); returns ``ray``.

    Raises:
        OptionError: when Ray is not installed, or the address cannot be reached.
    """
    try:
        import ray
    except ImportError:
        raise OptionError("--ray needs Ray: pip install 'padim-toolkit[ray]'") from None
    if not ray.is_initialized():
        try:
            ray.init(address=address, num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)  # fmt: skip
        except (ConnectionError, ValueError, RuntimeError) as error:
            where = address or os.environ.get("RAY_ADDRESS") or "a local cluster"
            raise OptionError(f"--ray {where}: cannot start or reach Ray ({str(error).splitlines()[0]})") from None
    return ray


def shards(items: Sequence[Any], n_shards: int) -> list[list[Any]]:
    """``items`` cut into ``n_shards`` contiguous shards of sizes differing by at most one (none empty).

    >>> shards(list("abcde"), 2)
    [['a', 'b', 'c'], ['d', 'e']]
    """
    n_shards = max(1, min(n_shards, len(items)))
    size, extra = divmod(len(items), n_shards)
    bounds = [i * size + min(i, extra) for i in range(n_shards + 1)]
    return [list(items[bounds[i] : bounds[i + 1]]) for i in range(n_shards)]


def _shard_statistics(model: Any, samples: list, options: dict, threads: int, before: Callable | None) -> tuple:
    """Ray task: one shard streamed into fresh statistics; returns (statistics, skipped files)."""
    import torch

    torch.set_num_threads(threads)
    os.environ["PADIM_THREADS"] = str(threads)  # onnxruntime's threads (padim.runtime.cpu_threads)
    if before is not None:
        before()  # fault injection in tests
    model = copy.copy(model)  # the object-store copy is shared and read-only
    model.__dict__.pop("stats_", None)
    model.skipped_ = {}
    model._accumulate(samples, desc="", **options)
    return model.__dict__.get("stats_"), model.skipped_


def shard_statistics(model: Any, samples: Sequence[Any], *, n_shards: int | None = None, threads: int = 1,
                     options: dict | None = None, before_shard: Callable | None = None) -> tuple:  # fmt: skip
    """Per-patch statistics of ``samples`` streamed by Ray tasks, merged in shard order.

    Args:
        model: a :class:`padim.model.Padim` prepared to fit (backbone, channels and working size set).
        samples: the image files (:class:`padim.datasets.Sample`).
        n_shards: tasks (None: the cluster's CPUs divided by ``threads``).
        threads: CPUs (torch and onnxruntime threads) per task.
        options: decoding options of :func:`padim.loading.iter_batches` (``workers``: decoding threads).
        before_shard: called in each task before it streams (tests kill a worker with it).

    Returns:
        (:class:`padim.gaussian.GaussianStats` or None, skipped files path -> reason).
    """
    ray = connect()
    if n_shards is None:
        n_shards = max(1, int(ray.cluster_resources().get("CPU", 1)) // threads)
    shell = copy.copy(model)
    shell.__dict__.pop("_runners", None)  # executors are rebuilt in each worker
    shell.__dict__.pop("stats_", None)
    ref = ray.put(shell)
    task = ray.remote(num_cpus=threads, max_retries=MAX_RETRIES)(_shard_statistics)
    options = {**(options or {}), "quiet": True}
    futures = [task.remote(ref, part, options, threads, before_shard) for part in shards(list(samples), n_shards)]
    results = ray.get(futures)  # in shard order, whatever order they finish in
    parts = [stats for stats, _ in results if stats is not None]
    skipped = {path: reason for _, part in results for path, reason in part.items()}
    return (functools.reduce(lambda a, b: a.merge(b), parts) if parts else None), skipped


def fit(model: Any, data: Any, *, validation: Any = None, n_shards: int | None = None, threads: int = 1,
        batch_size: int | None = None, quiet: bool = True, skip_bad: bool = False, keep_stats: bool = False,
        before_shard: Callable | None = None) -> Any:  # fmt: skip
    """Fit a :class:`padim.model.Padim` on a Ray cluster (connect first with :func:`connect`); returns the model.

    The result equals ``model.fit(data, validation=..., keep_stats=...)`` on one machine: the same
    channel indices, working size, hold-out split and threshold; the statistics differ only by
    the order of floating-point sums (merged shards instead of one stream).

    Args:
        model: an unfitted (or to be refitted) :class:`padim.model.Padim`; float32 backbone.
        data: good image files: a folder (an MVTec category's ``train/good``), or a list of paths.
        validation, batch_size, skip_bad, keep_stats: as :meth:`padim.model.Padim.fit`.
        n_shards, threads, before_shard: as :func:`shard_statistics`.
        quiet: no messages.

    Raises:
        OptionError: for an int8 backbone, images that are not files, or a bad argument.
        DataError: as :meth:`padim.model.Padim.fit`.
    """
    if model.backbone_dtype == "int8":
        raise OptionError("--ray fits a float32 backbone only; fit an int8 model without --ray")
    source, validation, options = model._start(data, validation, batch_size, 0, quiet, skip_bad)
    if not isinstance(source, list):
        raise OptionError("a distributed fit reads image files: give a folder or a list of paths")
    stats, skipped = shard_statistics(model, source, n_shards=n_shards, threads=threads,
                                      options={**options, "workers": 0}, before_shard=before_shard)  # fmt: skip
    model.skipped_.update(skipped)
    if stats is None:
        raise DataError("fitting needs at least 2 good images, got none")
    if not quiet:
        print(f"padim: merged the statistics of {stats.count} images", file=sys.stderr)
    model.stats_ = stats
    model._finish(keep_stats)
    if validation is not None:
        model.calibrate(validation, compact=True, **{**options, "workers": None})
    model.__dict__.get("_runners", {}).pop("embed", None)
    return model
