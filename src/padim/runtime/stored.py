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
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from padim.align.reference import Reference
from padim.errors import ModelFileError, PadimError
from padim.machine import cpu_threads
from padim.modelfile.mapped import MappedModel
from padim.runtime.executors import open_runner
from padim.runtime.predictor import Predictor
from padim.scoring.calibration import Calibration

#: The model's settings a predictor's ``config`` holds (what :meth:`padim.model.padim.Padim.config` gives).
CONFIG_KEYS = ("backbone", "layers", "n_features", "image_size", "seed", "eps", "sigma", "holdout", "quantile",
               "pretrained", "backbone_dtype", "grid_stride", "tile_size", "align")  # fmt: skip


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
    out = np.zeros((n_patches, dim, dim), dtype=dtype)
    starts = np.concatenate([[0], np.cumsum(np.arange(dim, 0, -1))])

    def rows(first: int, last: int) -> None:  # one strided copy per row of the triangle, no index arrays
        for row in range(dim):
            out[first:last, row, row:] = packed[first:last, starts[row] : starts[row + 1]]

    parts = np.linspace(0, n_patches, min(cpu_threads(), max(1, n_patches // 256)) + 1).astype(int)
    with ThreadPoolExecutor(len(parts) - 1) as pool:  # NumPy copies release the GIL: the page faults overlap
        list(pool.map(rows, parts[:-1], parts[1:]))
    return out


def check_state(mapped: MappedModel) -> None:
    """The checks of :func:`padim.model.files.read` that need no backbone: finite Gaussians, valid channel indices.

    Raises:
        ModelFileError: naming the file and what is wrong.
    """
    tensors, meta = mapped.tensors, mapped.meta
    d, total = meta["n_features"], int(meta["graph"].get("channels", 2**31))
    indices = np.asarray(tensors["channel_idx"])
    if indices.min() < 0 or indices.max() >= total or np.unique(indices).size != d:
        raise ModelFileError(f"{mapped.path}: inconsistent padim model file (channel_idx must be {d} distinct indices "
                             f"in 0..{total - 1})")  # fmt: skip
    for name in ("mean", "precision_cholesky_packed"):
        if not np.isfinite(tensors[name]).all():
            raise ModelFileError(
                f"{mapped.path}: inconsistent padim model file (the Gaussians hold NaN or infinite values)"
            )


def open_stored(mapped: MappedModel, *, executor: str = "auto", device: str = "cpu") -> Predictor:
    """A :class:`Predictor` for a mapped ``.padim`` file that holds its graph (:attr:`MappedModel.graph`).

    Raises:
        ModelFileError: for tensors that do not match the stored checksum, or a graph no executor reads.
        OptionError, MissingExtraError: for an executor this model or machine cannot use.
    """
    meta, tensors = mapped.meta, mapped.tensors
    failure: list[BaseException] = []

    def check() -> None:  # beside the executor's start-up: hashlib and NumPy release the GIL
        try:
            mapped.verify()
            check_state(mapped)
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
    except PadimError:  # the options' or the machine's (an executor that cannot run it), unless the file is damaged
        checker.join()
        if failure:
            raise failure[0] from None
        raise
    except Exception as error:  # a damaged graph: the checksum says so, else the executor's reason
        checker.join()
        if failure:
            raise failure[0] from None
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ModelFileError(f"{mapped.path}: the stored graph cannot be run ({reason})") from None
    checker.join()
    if failure:
        raise failure[0]
    calibration = None if meta["calibration"] is None else Calibration(**meta["calibration"])
    try:
        alignment = None if meta.get("alignment") is None else Reference.from_dict(meta["alignment"])
    except ValueError as error:
        raise ModelFileError(f"{mapped.path}: inconsistent padim model file ({error})") from None
    return Predictor(runner, image_size=tuple(meta["image_size"]), calibration=calibration, config=config,
                     kind=choice.executor, executor=choice, alignment=alignment)  # fmt: skip
