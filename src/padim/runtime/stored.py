"""Opening a ``.padim`` file that holds its inference graph: NumPy and an executor, no torch, no tracing.

Since the graph is stored at save (:func:`padim.model.files.save`), a ``.padim`` model opens in the
runtime install like an exported ``.onnx``: the file is memory-mapped
(:func:`padim.modelfile.mapped.map_model_file`), its SHA-256 is checked in a thread while the
executor starts, the packed float16 precision factors are unpacked with NumPy
(:func:`unpack_triangular`), and the stored graph runs with the Gaussians bound as inputs, exactly as
the graph traced by torch would (the same bytes: results are identical). A file written before graphs
were stored is opened through the training extra, as before (:func:`padim.runtime.opening.open_model`).
"""

from __future__ import annotations

import threading

import numpy as np

from padim.modelfile.mapped import MappedModel
from padim.runtime.executors import open_runner
from padim.runtime.predictor import Predictor
from padim.scoring.calibration import Calibration

#: The model's settings a predictor's ``config`` holds (what :meth:`padim.model.padim.Padim.config` gives).
CONFIG_KEYS = ("backbone", "layers", "n_features", "image_size", "seed", "eps", "sigma", "holdout", "quantile",
               "pretrained", "backbone_dtype", "grid_stride", "tile_size")  # fmt: skip
#: Patches unpacked at a time: the float16 -> float32 temporary stays a few MB.
UNPACK_CHUNK = 256


def unpack_triangular(packed: np.ndarray, dtype: str = "float32") -> np.ndarray:
    """(P, D, D) upper-triangular matrices from their rows packed as (P, D(D+1)/2), in NumPy.

    The layout of :func:`padim.stats.gaussian.pack_triangular` (the upper triangle, row by row); the
    tests compare this with :func:`padim.stats.gaussian.unpack_triangular`.

    >>> unpack_triangular(np.array([[1.0, 2.0, 3.0]], np.float16))[0].tolist()
    [[1.0, 2.0], [0.0, 3.0]]
    """
    n_patches, size = packed.shape
    dim = int(round((np.sqrt(8 * size + 1) - 1) / 2))
    if dim * (dim + 1) // 2 != size:
        raise ValueError(f"packed rows must hold D(D+1)/2 values, got {size}")
    rows, cols = np.triu_indices(dim)
    flat = rows * dim + cols
    out = np.zeros((n_patches, dim * dim), dtype=dtype)
    for start in range(0, n_patches, UNPACK_CHUNK):
        out[start : start + UNPACK_CHUNK, flat] = packed[start : start + UNPACK_CHUNK]
    return out.reshape(n_patches, dim, dim)


def open_stored(mapped: MappedModel, *, executor: str = "auto", device: str = "cpu") -> Predictor:
    """A :class:`Predictor` for a mapped ``.padim`` file that holds its graph (:attr:`MappedModel.graph`).

    Raises:
        ModelFileError: for tensors that do not match the stored checksum, or a graph no executor reads.
        OptionError, MissingExtraError: for an executor this model or machine cannot use.
    """
    meta, tensors = mapped.meta, mapped.tensors
    failure: list[BaseException] = []

    def check() -> None:
        try:
            mapped.verify()
        except BaseException as error:  # raised below, in the caller's thread
            failure.append(error)

    checker = threading.Thread(target=check, name="padim-sha256", daemon=True)
    checker.start()
    try:
        bound = {"mean": np.array(tensors["mean"], dtype=np.float32),
                 "precision_cholesky": unpack_triangular(tensors["precision_cholesky_packed"], meta["graph"]["factors"])}  # fmt: skip
        config = {key: meta[key] for key in CONFIG_KEYS}
        runner, choice = open_runner(mapped.graph, bound, requested=executor, precision=meta["backbone_dtype"],
                                     config=config, device=device)  # fmt: skip
    finally:
        checker.join()
    if failure:
        raise failure[0]
    calibration = None if meta["calibration"] is None else Calibration(**meta["calibration"])
    return Predictor(runner, image_size=tuple(meta["image_size"]), calibration=calibration, config=config,
                     kind=choice.executor, executor=choice)  # fmt: skip
