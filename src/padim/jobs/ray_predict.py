"""Batch prediction on a Ray cluster: Ray Data reads the file list, a pool of actors scores and draws.

A pool of actors (``ray.data.ActorPoolStrategy``) each loads the model once and scores batches;
the driver writes each row and overlay picture as it arrives (:mod:`padim.jobs.predict`'s row
and picture code), so the CSV holds the local command's rows, in the order they finish.
Images are read by the workers from their paths, which every node must see.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from padim.jobs.ray_cluster import connect
from padim.machine import ENV_THREADS


class _Scorer:
    """Ray Data actor: opens the model once, then reads, decodes and scores batches of files.

    Each row it returns is a finished image: its pickled :class:`padim.outputs.rows.Row`, its overlay
    picture's bytes (empty for none) and an error (empty, or why the file could not be read).
    """

    def __init__(self, model_bytes: bytes, suffix: str, device: str, backend: str, threshold: float | None,
                 threads: int, job: Any) -> None:  # fmt: skip
        import tempfile

        from padim.runtime.opening import open_model

        os.environ[ENV_THREADS] = str(threads)  # onnxruntime's (and a .padim model's torch) threads
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
                    self.job, samples[i].path, decoded.sizes[j], prediction, j,
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
