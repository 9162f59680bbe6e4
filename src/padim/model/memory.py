"""Memory: what a model will cost before it is fitted, and how much work runs at once.

PaDiM's statistics grow with the number of patches P: one D x D matrix per patch (Defard et
al. 2020, https://arxiv.org/abs/2011.08785, Sec. 3.2). Before fitting, :func:`estimate` gives
the model file's size and the peak memory of fitting and predicting, from the working size,
the Gaussian grid, d and the backbone; :func:`check` refuses, in one line that says how to
reduce it, a fit that would not fit in this machine's memory.

What is held where (P patches, D kept channels):

- fitting streams packed float32 scatter matrices, (P, D(D+1)/2) (:mod:`padim.stats.gaussian`), then
  writes the precision factors packed in float16, (P, D(D+1)/2): the model file's form; it
  sets the threshold on those, unpacked a chunk at a time;
- predicting holds the factors unpacked, (P, D, D), in float32 (fast: one batched matmul) or,
  for models whose float32 factors would pass :func:`runtime_limit`, in float16, cast a chunk
  at a time (half the memory; each cast costs about 5 ns per factor entry and batch on a CPU);
- images run through the graph in groups of at most :data:`RUN_PIXELS` pixels, so activations
  are bounded whatever the batch size (:func:`images_per_run`).

The activation figures are measured peaks per pixel of the backbone (onnxruntime, CPU), not a
model of the network; the estimate is meant to be right within about 20%.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from padim.errors import OptionError
from padim.graph.build import runtime_dtype
from padim.io.loading import FIT_PIXELS, default_batch_size, images_per_run
from padim.machine import machine_memory

GB = 1e9
#: Least embeddings gathered before one update of the statistics (see :func:`update_bytes`).
UPDATE_BYTES = 48 * 2**20
#: Resident memory of a process with torch, onnxruntime and a backbone loaded, before any data
#: (measured: 512 MiB after ``import torch`` with a CUDA build of torch 2.x).
BASE_BYTES = 560 * 2**20
#: Peak bytes per input pixel of each backbone's cut graph in onnxruntime, with the decoding
#: threads' buffers (efficientnet_lite0 measured on MVTec bottle at 256 and 512 px; the
#: ResNets scaled from it by their activations' widths).
ACTIVATION_BYTES_PER_PIXEL = {"efficientnet_lite0": 600, "resnet18": 500, "wide_resnet50_2": 2500}


#: Working sizes up to this many pixels fit with glibc's own mmap threshold (see :func:`return_large_blocks`).
SMALL_FIT_PIXELS = 256 * 256


def update_bytes(n_patches: int, dim: int) -> int:
    """Embeddings (bytes) gathered per update: :data:`UPDATE_BYTES`, or a quarter of the packed
    scatter matrices' bytes (P D^2 / 2) if that is more.

    An update packs its (P, D, D) products into the scatter matrices' triangles, which costs
    about as much as the products of 8 images whatever N: grouping more images spreads it.
    """
    return max(UPDATE_BYTES, n_patches * dim * dim // 2)


@dataclass(frozen=True)
class Estimate:
    """Expected sizes in bytes for one model (see :func:`estimate`)."""

    image_size: tuple[int, int]
    grid: tuple[int, int]
    dim: int
    tile: int
    model_file: int
    runtime: int
    fit_peak: int
    predict_peak: int

    @property
    def n_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def describe(self) -> str:
        """One line for a person: working size, grid, model size and the peaks."""
        h, w = self.image_size
        tiles = f", backbone in {self.tile}-px tiles" if self.tile else ""
        return (
            f"working size {h}x{w}{tiles}; Gaussians on a {self.grid[0]}x{self.grid[1]} grid x d={self.dim}; "
            f"model file about {_size(self.model_file)}; expected peak memory: fit {_size(self.fit_peak)}, "
            f"predict {_size(self.predict_peak)} (this machine: {_size(machine_memory())})"
        )


def estimate(
    image_size: Sequence[int],
    grid: Sequence[int],
    dim: int,
    backbone: str,
    backbone_bytes: int,
    tile: int = 0,
    batch_size: int | None = None,
) -> Estimate:
    """Model size and peak memory of fitting and predicting one model.

    Args:
        image_size: working size (H, W).
        grid: the Gaussians' grid (H, W).
        dim: D, kept channels.
        backbone: the backbone's name (for its activation figure).
        backbone_bytes: the cut backbone's weights in bytes.
        tile: tile side (0: untiled).
        batch_size: images decoded per batch (None: :func:`default_batch_size`).

    Returns:
        An :class:`Estimate`.
    """
    height, width = int(image_size[0]), int(image_size[1])
    n_patches = int(grid[0]) * int(grid[1])
    packed = n_patches * (dim * (dim + 1) // 2) * 2
    # The weights twice: as tensors (for torch) and inside the stored ONNX graph (opened without torch).
    model_file = packed + n_patches * dim * 4 + 2 * backbone_bytes
    runtime = n_patches * dim * dim * (4 if runtime_dtype(n_patches, dim) == "float32" else 2)
    per_pixel = ACTIVATION_BYTES_PER_PIXEL.get(backbone, 2000)
    run_pixels = tile * tile if tile else height * width

    def activations(images: int) -> int:
        # The backbone's peak for one group of images, plus the embeddings and distances of the group.
        return images * (run_pixels * per_pixel + 3 * n_patches * dim * 4 + (height * width * 4 if tile else 0))

    batch = default_batch_size(image_size) if batch_size is None else batch_size
    decoded = batch * height * width * (3 * 4 + 3)  # pre-processed float32 and the decoded RGB bytes
    fit_run = activations(images_per_run(image_size, FIT_PIXELS))
    scatter = packed * 2 + n_patches * dim * 8  # packed float32 scatter matrices, float64 means
    fitting = max(
        scatter + fit_run + update_bytes(n_patches, dim),  # streaming: statistics, a backbone run, embeddings
        scatter + packed,  # the factors written beside the statistics
        packed + fit_run,  # the threshold, from the packed factors (see Padim.predictor)
    )
    predicting = packed + runtime + activations(images_per_run(image_size)) + decoded
    return Estimate(
        (height, width), (int(grid[0]), int(grid[1])), dim, tile, model_file, runtime,
        BASE_BYTES + fitting + decoded, BASE_BYTES + predicting,
    )  # fmt: skip


def check(plan: Estimate, coarser_grid: int | None = None) -> None:
    """Refuse a fit whose expected peak exceeds this machine's memory, saying how to reduce it.

    Args:
        plan: from :func:`estimate`.
        coarser_grid: a Gaussian grid stride (pixels) that would fit, to suggest; None: none.

    Raises:
        OptionError: one line with the expected peak, the machine's memory and what to change.
    """
    available = machine_memory()
    if plan.fit_peak <= available:
        return
    h, w = plan.image_size
    hint = f" or --grid-stride {coarser_grid}" if coarser_grid else " or a coarser --grid-stride"
    raise OptionError(
        f"fitting at {h}x{w} with {plan.n_patches} Gaussians of d={plan.dim} would need about "
        f"{_size(plan.fit_peak)} of memory (model {_size(plan.model_file)}), more than this machine's "
        f"{_size(available)}: reduce --image-size or --n-features{hint}"
    )


def _size(n_bytes: float) -> str:
    """Bytes for a person: ``'1.4 GB'``, ``'350 MB'``.

    >>> _size(1.43e9), _size(3.5e8), _size(2e6)
    ('1.4 GB', '350 MB', '2 MB')
    """
    if n_bytes >= GB:
        return f"{n_bytes / GB:.1f} GB"
    return f"{max(1, math.ceil(n_bytes / 1e6 - 0.5))} MB"
