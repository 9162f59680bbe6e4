"""Add good images to a fitted model, exactly as if it had been fitted on both sets.

A model saved with its statistics (``padim fit --keep-stats``, :mod:`padim.modelfile.padim_file`)
holds the count, means and scatter matrices of its training images. New good images are split as
a fit splits them (the model's ``holdout`` and ``seed``), the rest are streamed into statistics of
their own (one machine, or shards on Ray: :mod:`padim.model.distributed`), which merge exactly
with the model's (Chan et al.'s merge, :mod:`padim.stats.gaussian`), and the precision is factored
again. The model's backbone, channels, working size and int8 ranges stay as fitted.

The threshold is set again from the held-out images of both fits: the model file remembers
the absolute paths of the first fit's held-out images. Those that are gone (moved, deleted,
another machine) are left out with a warning, and the threshold comes from the ones still
there and the new held-out images; with none at all the updated model has no threshold.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from padim.errors import DataError, ModelFileError
from padim.graph.build import embedding_runner
from padim.graph.runners import use_onnxruntime
from padim.io.datasets import split_holdout
from padim.io.loading import default_batch_size, to_samples
from padim.model import fitting
from padim.model.padim import Gather, Padim


def update(path: str | os.PathLike, data: Any, *, device: str = "cpu", backend: str = "auto",
           batch_size: int | None = None, workers: int | None = None, quiet: bool = True, skip_bad: bool = False,
           gather: Gather | None = None) -> Padim:  # fmt: skip
    """The model at ``path`` with the good images ``data`` added; returns the updated :class:`padim.model.padim.Padim`.

    Args:
        path: a model file saved with its statistics (``keep_stats``).
        data: new good images: a folder (an MVTec category's ``train/good``) or a list of paths.
        device, backend: as :meth:`padim.model.padim.Padim.load`.
        batch_size, workers, quiet, skip_bad: decoding (:func:`padim.io.loading.iter_batches`).
        gather: how the new images' statistics are collected (None: here; :func:`padim.model.distributed.gather`: on Ray).

    Returns:
        The model (not saved), its statistics kept so that it can be updated again.

    Raises:
        ModelFileError: for a model file without statistics.
        DataError: for no new images.
    """
    model = Padim.load(path, device=device, backend=backend)
    state = model.fitted()
    if state.stats is None:
        raise ModelFileError(f"{path}: holds no statistics to add images to; fit it with --keep-stats")
    samples = to_samples(data, folder="good")
    if not samples:
        raise DataError(f"{data}: expected good image files to add to the model")
    fit_samples, held = split_holdout(samples, model.holdout, model.seed)
    kept = [Path(p) for p in state.holdout_paths if Path(p).is_file()]
    if len(kept) < len(state.holdout_paths) and not quiet:
        print(f"padim: {len(state.holdout_paths) - len(kept)} of the first fit's {len(state.holdout_paths)} "
              "held-out images are gone; the threshold comes from the others and the new ones", file=sys.stderr)  # fmt: skip
    batch_size = default_batch_size(state.image_size) if batch_size is None else batch_size
    options = dict(batch_size=batch_size, workers=workers, quiet=quiet, skip_bad=skip_bad)
    new, skipped = (gather or local_gather)(model, fit_samples, {**options, "desc": "update"})
    stats = state.stats if new is None else state.stats.merge(new)
    n_images, mean, packed = fitting.gaussians(stats, model.eps)
    holdout = kept + [s.path for s in held]
    updated = Padim.from_fitted(replace(state, stats=stats, mean=mean, precision_cholesky_packed=packed,
                                        n_images=n_images, calibration=None, holdout_paths=holdout, skipped=skipped),
                                **model.get_params())  # fmt: skip
    if holdout:
        updated.calibrate(holdout, compact=True, **options)
    return updated


def local_gather(model: Padim, samples: Any, options: dict) -> tuple[Any, dict]:
    """The statistics of ``samples`` streamed in this process with the model's embedding (a :data:`Gather`)."""
    skipped: dict = {}
    spec = model.graph_spec()
    embed = embedding_runner(spec, model.device, use_onnxruntime(model.backend, model.device, model.backbone_dtype))
    dtype = torch.float32 if model.stats_dtype == "float32" else torch.float64
    stats = fitting.statistics(embed, samples, spec, dtype=dtype, device=model.device, skipped=skipped, **options)
    return stats, skipped
