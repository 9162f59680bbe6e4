"""Add good images to a fitted model, exactly as if it had been fitted on both sets.

A model saved with its statistics (``padim fit --keep-stats``, :mod:`padim.modelfile.padim_file`) holds
the count, means and scatter matrices of its training images. New good images are split as a
fit splits them (the model's ``holdout`` and ``seed``), the rest are streamed onto those
statistics (one machine, or shards on Ray: :mod:`padim.jobs.distributed`), which is exactly the
stream of both sets (Chan et al.'s merge, :mod:`padim.stats.gaussian`), and the precision is
factored again. The model's backbone, channels, working size and int8 ranges stay as fitted.

The threshold is set again from the held-out images of both fits: the model file remembers
the absolute paths of the first fit's held-out images. Those that are gone (moved, deleted,
another machine) are left out with a warning, and the threshold comes from the ones still
there and the new held-out images; with none at all the updated model has no threshold.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from padim.errors import DataError, ModelFileError
from padim.io.datasets import split_holdout
from padim.io.loading import to_samples


def update(path: str | os.PathLike, data: Any, *, device: str = "cpu", backend: str = "auto",
           batch_size: int | None = None, workers: int | None = None, quiet: bool = True, skip_bad: bool = False,
           distributed: bool = False, n_shards: int | None = None) -> Any:  # fmt: skip
    """The model at ``path`` with the good images ``data`` added; returns the updated :class:`padim.model.padim.Padim`.

    Args:
        path: a model file saved with its statistics (``keep_stats``).
        data: new good images: a folder (an MVTec category's ``train/good``) or a list of paths.
        device, backend: as :meth:`padim.model.padim.Padim.load`.
        batch_size, workers, quiet, skip_bad: decoding (:func:`padim.io.loading.iter_batches`).
        distributed: stream the new images on the Ray cluster already connected
            (:func:`padim.jobs.distributed.connect`), ``n_shards`` tasks.

    Returns:
        The model (not saved), its statistics kept so that it can be updated again.

    Raises:
        ModelFileError: for a model file without statistics.
        DataError: for no new images.
    """
    from padim.model import memory
    from padim.model.padim import Padim

    model = Padim.load(path, device=device, backend=backend)
    if model.__dict__.get("stats_") is None:
        raise ModelFileError(f"{path}: holds no statistics to add images to; fit it with --keep-stats")
    samples = to_samples(data, folder="good")
    if not samples:
        raise DataError(f"{data}: expected good image files to add to the model")
    fit_samples, held = split_holdout(samples, model.holdout, model.seed)
    kept = [p for p in model.holdout_paths_ if Path(p).is_file()]
    if len(kept) < len(model.holdout_paths_) and not quiet:
        print(f"padim: {len(model.holdout_paths_) - len(kept)} of the first fit's {len(model.holdout_paths_)} "
              "held-out images are gone; the threshold comes from the others and the new ones", file=sys.stderr)  # fmt: skip
    batch_size = memory.default_batch_size(model.image_size_) if batch_size is None else batch_size
    options = dict(batch_size=batch_size, workers=workers, quiet=quiet, skip_bad=skip_bad)
    model.skipped_ = {}
    if distributed:
        from padim.jobs.distributed import shard_statistics

        stats, skipped = shard_statistics(model, fit_samples, n_shards=n_shards, options={**options, "workers": 0})
        model.skipped_.update(skipped)
        model.stats_ = model.stats_ if stats is None else model.stats_.merge(stats)
    else:
        model._accumulate(fit_samples, desc="update", **options)
    model._finish(keep_stats=True)
    model.holdout_paths_ = [Path(p) for p in kept] + [s.path for s in held]
    model.calibration_ = None
    if model.holdout_paths_:
        model.calibrate(model.holdout_paths_, compact=True, **options)
    return model
