"""Fit and batch-predict on a Ray cluster: shards of images streamed by workers, statistics merged once.

A fit on one machine streams every good image into the per-patch statistics of
:mod:`padim.stats.gaussian`; those statistics merge exactly (Chan et al.), so the image list is cut
into shards, each Ray task streams its shard into statistics of its own, and the driver merges
them in shard order and factors the precision once. The channel indices, the working size and
the hold-out split are chosen on the driver before any task starts, and the threshold is set
there on the held-out images, so the model equals the one-process fit (tests/test_distributed.py).
A task's result is its shard's statistics and nothing else: a worker that dies is retried by
Ray from the start of its shard, and the lost attempt's images are never counted.

Predict (:func:`predict_files`): Ray Data reads the image files and decodes them in tasks; a
pool of actors (``ray.data.ActorPoolStrategy``) each loads the model once and scores batches;
the driver writes each row and overlay picture as it arrives (:mod:`padim.jobs.predict`'s
row and picture code), so the CSV holds the local command's rows, in the order they finish.

What travels: the fitting model (backbone weights, channel indices, working size) is put in
Ray's object store once; the model file's bytes are sent once per predicting actor; images are
read by the workers from their paths, which every node must see (a shared folder or an
object-store URL that Ray Data reads); rows and pictures come back to the driver.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from padim.errors import DataError, OptionError, PadimError

#: int8 backbones are calibrated on the first images of one stream; a sharded fit does not do that.
INT8_REFUSAL = "--ray fits a float32 backbone only; fit an int8 model without --ray (--backbone-dtype int8)"
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
    os.environ["PADIM_THREADS"] = str(threads)  # onnxruntime's threads (padim.runtime.predictor.cpu_threads)
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
        model: a :class:`padim.model.padim.Padim` prepared to fit (backbone, channels and working size set).
        samples: the image files (:class:`padim.io.datasets.Sample`).
        n_shards: tasks (None: the cluster's CPUs divided by ``threads``).
        threads: CPUs (torch and onnxruntime threads) per task.
        options: decoding options of :func:`padim.io.loading.iter_batches` (``workers``: decoding threads).
        before_shard: called in each task before it streams (tests kill a worker with it).

    Returns:
        (:class:`padim.stats.gaussian.GaussianStats` or None, skipped files path -> reason).
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
    return merged, skipped


def fit(model: Any, data: Any, *, validation: Any = None, n_shards: int | None = None, threads: int = 1,
        batch_size: int | None = None, quiet: bool = True, skip_bad: bool = False, keep_stats: bool = False,
        before_shard: Callable | None = None) -> Any:  # fmt: skip
    """Fit a :class:`padim.model.padim.Padim` on a Ray cluster (connect first with :func:`connect`); returns the model.

    The result equals ``model.fit(data, validation=..., keep_stats=...)`` on one machine: the same
    channel indices, working size, hold-out split and threshold; the statistics differ only by
    the order of floating-point sums (merged shards instead of one stream).

    Args:
        model: an unfitted (or to be refitted) :class:`padim.model.padim.Padim`; float32 backbone.
        data: good image files: a folder (an MVTec category's ``train/good``), or a list of paths.
        validation, batch_size, skip_bad, keep_stats: as :meth:`padim.model.padim.Padim.fit`.
        n_shards, threads, before_shard: as :func:`shard_statistics`.
        quiet: no messages.

    Raises:
        OptionError: for an int8 backbone, images that are not files, or a bad argument.
        DataError: as :meth:`padim.model.padim.Padim.fit`.
    """
    if model.backbone_dtype == "int8":
        raise OptionError(INT8_REFUSAL)
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


class _Scorer:
    """Ray Data actor: opens the model once, then reads, decodes and scores batches of files.

    Each row it returns is a finished image: its pickled :class:`padim.outputs.rows.Row`, its overlay
    picture's bytes (empty for none) and an error (empty, or why the file could not be read).
    """

    def __init__(self, model_bytes: bytes, suffix: str, device: str, backend: str, threshold: float | None,
                 threads: int, job: Any) -> None:  # fmt: skip
        import tempfile

        import torch

        from padim.runtime.predictor import open_model

        torch.set_num_threads(threads)
        os.environ["PADIM_THREADS"] = str(threads)
        if not isinstance(model_bytes, bytes):  # an object reference: fetched from the object store once
            import ray

            model_bytes = ray.get(model_bytes)
        with tempfile.TemporaryDirectory() as folder:  # the model, sent once to this actor
            path = os.path.join(folder, f"model{suffix}")
            with open(path, "wb") as handle:
                handle.write(model_bytes)
            self.predictor = open_model(path, device=device, backend=backend)
        if threshold is not None:
            self.predictor = self.predictor.with_threshold(threshold)
        self.job = dataclasses.replace(job, calibration=self.predictor.calibration)
        self.image_size = self.predictor.image_size

    def __call__(self, batch: dict) -> dict:
        import pickle
        from pathlib import Path

        from padim.io.datasets import Sample
        from padim.io.loading import iter_batches
        from padim.jobs.predict import OVERLAY_MAX_SIDE, finish_image

        samples = [Sample(Path(p), 0, "unknown") for p in batch["path"]]
        skipped: dict = {}
        out: dict[str, list] = {"index": [], "row": [], "picture": [], "error": []}
        draw = bool(len(batch["name"]) and batch["name"][0])
        for decoded in iter_batches(samples, self.image_size, batch_size=len(samples), workers=0, skip_bad=True,
                                    skipped=skipped, keep_images=draw, max_side=OVERLAY_MAX_SIDE):  # fmt: skip
            prediction = self.predictor.predict_batch(decoded.images)
            for j, i in enumerate(decoded.indices):
                row, encoded = finish_image(
                    self.job, samples[i].path, decoded.sizes[j], prediction.anomaly_map[j], prediction.score[j],
                    None if prediction.normalized_score is None else prediction.normalized_score[j],
                    None if prediction.label is None else bool(prediction.label[j]),
                    None if decoded.originals is None else decoded.originals[j], batch["name"][i] or None,
                )  # fmt: skip
                out["index"].append(int(batch["index"][i]))
                out["row"].append(pickle.dumps(row))
                out["picture"].append(encoded or b"")
                out["error"].append("")
        lookup = {str(s.path): int(batch["index"][i]) for i, s in enumerate(samples)}
        for path, reason in skipped.items():
            out["index"].append(lookup[str(path)])
            out["row"].append(b"")
            out["picture"].append(b"")
            out["error"].append(str(reason))
        return {key: np.array(values, dtype=object) for key, values in out.items()}


def predict_files(model_path: str | os.PathLike, samples: Sequence[Any], output: str | os.PathLike | None, *,
                  overlays: str = "anomalous", overlay_format: str = "jpeg", batch_size: int = 16,
                  n_actors: int | None = None, threads: int = 1, device: str = "cpu", backend: str = "auto",
                  threshold: float | None = None, skip_bad: bool = False, quiet: bool = True,
                  on_row: Callable | None = None) -> Any:  # fmt: skip
    """The batch job of :func:`padim.jobs.predict.predict_files` on a Ray cluster (connect first).

    Ray Data streams the file list in batches to a pool of actors (``ActorPoolStrategy``, one
    GPU each with a CUDA ``device``); each actor holds the model, reads and decodes its files
    (:mod:`padim.io.loading`, the local command's pixels) and finishes each image (row, region,
    overlay picture). The driver writes each picture and appends each row as it arrives, so the
    CSV holds the local command's rows in the order they finish; Ray's streaming execution
    bounds the batches in flight.

    Args:
        model_path: a ``.padim`` or self-contained ``.onnx`` file (its bytes go once to each actor).
        samples, output, overlays, overlay_format, batch_size, skip_bad, quiet, on_row: as the local job.
        n_actors: actors (None: the cluster's CPUs divided by ``threads``, or its GPUs for CUDA).
        threads: CPUs per actor. device, backend, threshold: as ``padim predict``.

    Returns:
        a :class:`padim.jobs.predict.JobSummary`.

    Raises:
        ImageError: for an unreadable image (unless ``skip_bad``), after the rows that arrived before it.
    """
    import pickle
    from pathlib import Path

    from padim.errors import ImageError
    from padim.io.files import write_bytes
    from padim.jobs.predict import RowWriter, prepare_job
    from padim.modelfile.info import model_info
    from padim.progress import progress

    ray = connect()
    ray.data.DataContext.get_current().enable_progress_bars = False  # padim's own progress display
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    gpu = str(device).startswith("cuda")
    model_info(model_path)  # a padim model, or one line saying why not; the actors open it
    job, samples, names, summary = prepare_job(None, samples, output, overlays, overlay_format)
    resources = ray.cluster_resources()
    if n_actors is None:
        n_actors = int(resources.get("GPU", 0)) if gpu else int(resources.get("CPU", 1)) // threads
    n_actors = max(1, min(n_actors, -(-len(samples) // batch_size)))
    items = [
        {"index": i, "path": str(s.path), "name": "" if names is None else names[i]} for i, s in enumerate(samples)
    ]
    blocks = max(1, -(-len(items) // batch_size))
    data = ray.data.from_items(items, override_num_blocks=blocks)
    model_ref = ray.put(Path(model_path).read_bytes())
    scored = data.map_batches(
        _Scorer,
        fn_constructor_args=(model_ref, Path(model_path).suffix, str(device), backend, threshold, threads, job),
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=n_actors),
        num_cpus=threads,
        num_gpus=1 if gpu else 0,
    )
    bar = progress(total=len(samples), desc="predict (starting the actors)", quiet=quiet, unit="img")
    write = RowWriter(summary, bar, on_row)
    try:
        for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
            bar.set_description("predict")
            for index, row, picture, error in zip(batch["index"], batch["row"], batch["picture"], batch["error"]):
                if error:
                    if not skip_bad:
                        raise ImageError(error)
                    summary.skipped[samples[int(index)].path] = error
                    bar.update(1)
                    continue
                row = pickle.loads(row)
                if picture:
                    write_bytes(job.output / row.overlay, bytes(picture))
                write(row)
    finally:
        bar.close()
        write.close()
    return summary
