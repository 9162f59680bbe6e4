"""PaDiM inference, defined once as a traceable module, and the executors that run it.

One forward pass (Defard et al. 2020, https://arxiv.org/abs/2011.08785, Sec. 3):

    images (N, 3, H_img, W_img)                      pre-processed (padim.io.images.preprocess)
      -> backbone layers                              padim.features.backbones.FeatureExtractor
      -> channel selection, nearest resize (P, N, D)  padim.features.embedding.embed          [Embedder]
      -> Mahalanobis distance (P, N)                  padim.maps.anomaly_map.mahalanobis
      -> up-sampling + blur (N, H_img, W_img)         padim.maps.anomaly_map.resize_blur
      -> score (N,)                                   padim.scoring.rules.image_score
      -> normalised score, label (N,)                 padim.scoring.rules.normalize, label  [Scorer]

:class:`Pipeline` chains :class:`Embedder` and :class:`Scorer`. The Gaussians (``mean``,
``precision_cholesky``) and the calibration (``threshold``, ``scale``) are inputs of the graph, not
constants: the executor binds them once, so exporting the graph costs no copy of a precision
factor that can pass 2 GB, and a threshold changed after fitting needs no new graph.

Executors differ only in who runs the module: :class:`TorchRunner` runs it eagerly (CPU or
CUDA, ``backend="torch"``); :func:`onnx_bytes` traces it to ONNX, which
:class:`padim.runtime.predictor.OrtRunner` runs in memory for a ``.padim`` model on the CPU, and which
:func:`padim.model.export.export_onnx` writes to disk with the statistics as initializers.
"""

from __future__ import annotations

import copy
import io
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from padim.errors import OptionError
from padim.features.backbones import FeatureExtractor
from padim.features.embedding import embed, select, split_channels
from padim.features.tiling import TilePlan, tiled_features
from padim.maps.anomaly_map import mahalanobis, resize_blur, resize_blur_matrix
from padim.model.memory import release_freed_memory
from padim.scoring.rules import image_score, label, normalize
from padim.stats.gaussian import runtime_factors

#: Graph inputs besides ``images``, bound by the executor.
STATE_INPUTS = ("mean", "precision_cholesky", "threshold", "scale")
#: Graph outputs of :class:`Pipeline`.
OUTPUTS = ("anomaly_map", "score", "normalized_score", "label")
OPSET = 17


class Embedder(nn.Module):
    """Backbone and channel selection: images (N, 3, H_img, W_img) -> patch-first (P, N, D).

    Args:
        extractor: the cut backbone.
        channel_idx: (D,) sorted indices into the concatenated channels of its layers.
        grid: (H, W) of the Gaussians; None: the first layer's grid (PaDiM's). A coarser grid
            averages the finer layers (:func:`padim.features.embedding.embed`).
        tiles: run the backbone over these tiles and stitch the features
            (:mod:`padim.features.tiling`); None: over the whole image at once.
    """

    def __init__(
        self,
        extractor: FeatureExtractor,
        channel_idx: Tensor,
        grid: Sequence[int] | None = None,
        tiles: TilePlan | None = None,
    ) -> None:
        super().__init__()
        self.extractor = extractor
        # A plain list, not buffers: the tracer records the indices as constants.
        self.layer_idx = split_channels(channel_idx, [info.channels for info in extractor.layer_info])
        self.grid = None if grid is None else (int(grid[0]), int(grid[1]))
        self.tiles = tiles

    def forward(self, images: Tensor) -> Tensor:
        if self.tiles is None:
            features = select(self.extractor(images), self.layer_idx)
        else:
            features = tiled_features(self.extractor, images, self.layer_idx, self.tiles.rows, self.tiles.cols)
        return embed(features, grid=self.grid)


class Scorer(nn.Module):
    """Patch embeddings and Gaussians -> anomaly maps, scores, normalised scores and labels.

    Args:
        grid: (H, W) feature grid of the embedding.
        image_size: (H_img, W_img) of the maps.
        sigma: standard deviation of the blur, in map pixels.

    Shape:
        patches (P, N, D), mean (P, D), precision_cholesky (P, D, D), threshold (), scale () ->
        anomaly_map (N, H_img, W_img), score (N,), normalized_score (N,), label (N,) bool.
        An uncalibrated model passes threshold NaN: its normalised scores are NaN and every
        label is True (never a silent "normal").
    """

    def __init__(self, grid: Sequence[int], image_size: Sequence[int], sigma: float) -> None:
        super().__init__()
        self.grid = tuple(int(g) for g in grid)
        for name, size, out in (("a_h", self.grid[0], image_size[0]), ("a_w", self.grid[1], image_size[1])):
            self.register_buffer(name, torch.from_numpy(resize_blur_matrix(size, out, sigma)).float(), persistent=False)

    def forward(
        self, patches: Tensor, mean: Tensor, precision_cholesky: Tensor, threshold: Tensor, scale: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        distance = mahalanobis(patches, mean, precision_cholesky)  # (P, N)
        maps = resize_blur(distance.T.reshape(-1, *self.grid), self.a_h, self.a_w)
        score = image_score(maps)
        return maps, score, normalize(score, threshold, scale), label(score, threshold)


class Pipeline(nn.Module):
    """:class:`Embedder` then :class:`Scorer`: the whole inference, images to labels."""

    def __init__(self, embedder: Embedder, scorer: Scorer) -> None:
        super().__init__()
        self.embedder = embedder
        self.scorer = scorer

    def forward(
        self, images: Tensor, mean: Tensor, precision_cholesky: Tensor, threshold: Tensor, scale: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.scorer(self.embedder(images), mean, precision_cholesky, threshold, scale)


def onnx_bytes(
    module: nn.Module,
    example: dict[str, Tensor],
    output_names: Sequence[str],
    batch_axes: dict[str, int],
    *,
    opset: int = OPSET,
) -> bytes:
    """Trace ``module`` to a serialised ONNX model in memory; nothing is written to disk.

    Args:
        module: called with the tensors of ``example`` as positional arguments, in order.
        example: input name -> example tensor (the batch size may differ at run time).
        output_names: names for the module's outputs.
        batch_axes: input or output name -> its batch axis (dynamic in the graph).
        opset: ONNX opset version.

    Returns:
        ONNX ``ModelProto`` bytes.
    """
    buffer = io.BytesIO()
    tensors = [*module.parameters(), *module.buffers()]
    if any(t.device.type != "cpu" for t in tensors):
        module = copy.deepcopy(module).cpu()  # the graph's constants live on the CPU
    module.eval()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        # The legacy exporter warns that it is deprecated, and the tracer that shape arithmetic
        # becomes constants: both are expected here (the working size is fixed per model).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            tuple(_traceable(t) for t in example.values()),
            buffer,
            input_names=list(example),
            output_names=list(output_names),
            dynamic_axes={name: {axis: "N"} for name, axis in batch_axes.items()},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    return buffer.getvalue()


def _traceable(tensor: Tensor) -> Tensor:
    """A CPU tensor the tracer accepts (inference tensors are copied to plain ones)."""
    tensor = tensor.detach().to("cpu")
    return tensor.clone() if tensor.is_inference() else tensor


def pipeline_onnx(pipeline: Pipeline, image_size: Sequence[int], state: dict[str, Tensor]) -> bytes:
    """The whole pipeline as ONNX bytes, with the inputs ``images`` and :data:`STATE_INPUTS`."""
    example = {"images": torch.zeros(2, 3, *image_size), **{k: state[k] for k in STATE_INPUTS}}
    return onnx_bytes(pipeline, example, OUTPUTS, {"images": 0, **{name: 0 for name in OUTPUTS}})


def parse_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device.

    Raises:
        OptionError: naming ``--device`` for a string torch does not read as a device.
    """
    try:
        return torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise OptionError(f"--device must be cpu, cuda or cuda:N, got {str(device)!r}") from None


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device, if this machine has it.

    Raises:
        OptionError: naming ``--device`` for a device that is malformed or absent (``cuda`` without
            CUDA, ``cuda:7`` on a machine with fewer GPUs, ``mps`` off a Mac, ``meta``).
    """
    found = parse_device(device)
    if found.type == "cpu":
        return found
    if found.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise OptionError(f"--device {device}: no CUDA device on this machine (torch sees none); use --device cpu")
        if found.index is not None and found.index >= count:
            raise OptionError(f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
        return found
    if found.type == "mps" and torch.backends.mps.is_available():
        return found
    raise OptionError(f"--device {device}: not available here; padim runs on cpu or cuda")


def use_onnxruntime(backend: str, device: str | torch.device, backbone_dtype: str = "float32") -> bool:
    """Whether ``backend`` (``"auto"``, ``"torch"``, ``"onnxruntime"``) runs in onnxruntime on ``device``.

    An int8 backbone (``backbone_dtype="int8"``, :mod:`padim.graph.quantize`) runs only there: CUDA keeps float32.

    Raises:
        OptionError: for ``"onnxruntime"`` or int8 where onnxruntime is not installed, and for
            int8 with the torch backend or off the CPU.
    """
    device = parse_device(device)
    if backbone_dtype == "int8" and (backend == "torch" or device.type != "cpu"):
        option = f"backend={backend!r}" if backend == "torch" else f"device={str(device)!r}"
        raise OptionError(f"backbone_dtype='int8' runs in onnxruntime on the CPU, got {option}; "
                          "fit a float32 model for torch or CUDA")  # fmt: skip
    if backend == "torch" or torch.device(device).type != "cpu":
        return False
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        if backend == "onnxruntime" or backbone_dtype == "int8":
            wanted = "backbone_dtype='int8'" if backbone_dtype == "int8" else "backend='onnxruntime'"
            raise OptionError(f"{wanted} needs the onnxruntime package") from None
        return False
    return True


def make_runner(
    module: nn.Module,
    example: dict[str, Tensor],
    output_names: Sequence[str],
    batch_axes: dict[str, int],
    *,
    bound: Sequence[str] = (),
    device: str | torch.device = "cpu",
    onnxruntime: bool = False,
    transform: Callable[[bytes], bytes] | None = None,
) -> Any:
    """An executor of ``module``: onnxruntime on the graph traced in memory, or eager PyTorch.

    Args:
        module: called with the inputs named in ``example``, in order.
        example: input name -> example tensor; the inputs named in ``bound`` are bound to
            these tensors once, the others are passed at each call.
        output_names, batch_axes: as for :func:`onnx_bytes`.
        device: where eager PyTorch runs.
        onnxruntime: run the traced graph in :class:`padim.runtime.predictor.OrtRunner` (CPU).
        transform: applied to the traced graph before it runs (:func:`padim.graph.quantize.quantize`).

    Returns:
        A callable: ``runner(**inputs)`` -> output name -> array or tensor.
    """
    state = {name: example[name] for name in bound}
    if not onnxruntime:
        return TorchRunner(module, list(example), output_names, state, device)
    from padim.runtime.predictor import OrtRunner

    graph = onnx_bytes(module, example, output_names, batch_axes)
    if transform is not None:
        graph = transform(graph)
    return OrtRunner(graph, {name: t.detach().cpu().numpy() for name, t in state.items()})


class ChainedRunner:
    """:class:`Pipeline` run as its two stages by two executors: the embedding's, then the scorer's.

    The same math as one pipeline runner; it lets a fit reuse the backbone's executor it
    already holds and score in eager PyTorch on the packed precision factors (unpacked a chunk
    at a time by :func:`padim.maps.anomaly_map.mahalanobis`), without tracing the graph once more
    nor unpacking the factors whole.

    Args:
        embed: runs :class:`Embedder`: ``embed(images=...)["patches"]``.
        scorer: the :class:`Scorer`, run eagerly on ``device``.
        state: ``mean`` (P, D) and ``precision_cholesky`` (P, D, D) or packed (P, D(D+1)/2).
    """

    def __init__(self, embed: Any, scorer: Scorer, state: dict[str, Tensor], device: str | torch.device) -> None:
        self.embed = embed
        self.score = TorchRunner(scorer, ["patches", *STATE_INPUTS], OUTPUTS, state, device)

    def __call__(self, *, images: Any, threshold: Any, scale: Any) -> dict[str, Any]:
        patches = self.embed(images=images)["patches"]
        return self.score(patches=patches, threshold=threshold, scale=scale)


def model_runner(model: Any, kind: str) -> Any:
    """The executor of a fitted :class:`padim.model.padim.Padim`'s embedding (``"embed"``) or pipeline (``"pipeline"``).

    ``"compact"``: the pipeline as the model's embedding executor, then its scorer in eager
    PyTorch on the packed factors (:class:`padim.graph.pipeline.ChainedRunner`): no copy of them.
    """
    if kind == "compact":
        state = {"mean": model.mean_, "precision_cholesky": model.precision_cholesky_packed_}
        return ChainedRunner(model._runner("embed"), Scorer(model.feature_size_, model.image_size_, model.sigma), state,
                             model.device)  # fmt: skip
    from functools import partial

    from padim.graph.quantize import quantize

    images = torch.zeros(2, 3, *model.image_size_)
    options = dict(device=model.device, onnxruntime=use_onnxruntime(model.backend, model.device, model.backbone_dtype))
    if model.__dict__.get("quantization_") is not None:  # int8: the same ranges for every graph
        options["transform"] = partial(quantize, quantization=model.quantization_)
    if kind == "embed":
        runner = make_runner(model.embedder(), {"images": images}, ["patches"], {"images": 0, "patches": 1}, **options)
    else:
        example = {"images": images, "mean": model.mean_,
                   "precision_cholesky": runtime_factors(model.precision_cholesky_packed_),
                   "threshold": torch.tensor(1.0), "scale": torch.tensor(1.0)}  # fmt: skip
        axes = {"images": 0, **dict.fromkeys(OUTPUTS, 0)}
        runner = make_runner(model.pipeline(), example, OUTPUTS, axes, bound=("mean", "precision_cholesky"),
                             **options)  # fmt: skip
    release_freed_memory()  # tracing ran the module once at the working size
    return runner


class TorchRunner:
    """Runs a module eagerly in PyTorch, with some inputs bound once.

    Args:
        module: the module to run (moved to ``device``).
        input_names: the names of its positional inputs, in order.
        output_names: names for its outputs.
        bound: input name -> tensor, passed on every call (moved to ``device`` once).
        device: where to run.

    ``runner(**inputs)`` takes the remaining inputs (arrays or tensors) and returns output
    name -> tensor on ``device``. Calls from several threads run one at a time: they would
    otherwise compete for the same intra-op threads.
    """

    def __init__(
        self,
        module: nn.Module,
        input_names: Sequence[str],
        output_names: Sequence[str],
        bound: dict[str, Any] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()
        self.input_names = tuple(input_names)
        self.output_names = tuple(output_names)
        self.bound = {k: _float(torch.as_tensor(v)).to(self.device) for k, v in (bound or {}).items()}
        self._lock = threading.Lock()

    def __call__(self, **inputs: Any) -> dict[str, Tensor]:
        feeds = {**self.bound, **inputs}
        args = [_float(torch.as_tensor(feeds[name])).to(self.device) for name in self.input_names]
        with self._lock, torch.inference_mode():
            outputs = self.module(*args)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        return dict(zip(self.output_names, outputs))


def _float(tensor: Tensor) -> Tensor:
    """Float32, except float16 state (compact precision factors), which the graph casts itself."""
    return tensor if tensor.dtype == torch.float16 else tensor.to(torch.float32)
