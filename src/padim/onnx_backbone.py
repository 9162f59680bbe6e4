"""onnxruntime as an execution backend for PaDiM's embedding step on CPU.

PaDiM (Defard et al. 2020, https://arxiv.org/abs/2011.08785, Sec. 3.1) spends most of its
prediction time in the backbone. :class:`OnnxEmbedder` exports the cut backbone
(:class:`padim.backbones.FeatureExtractor`) followed by :func:`padim.model.embed` (channel
selection and nearest resizing onto the first layer's grid) to an ONNX graph held in memory,
and runs it in an onnxruntime session. onnxruntime folds batch norm into the convolutions,
fuses activations and uses its own CPU kernels, which on a 2-core machine is several times
faster than eager PyTorch for EfficientNet-Lite0. The embeddings equal the PyTorch path's to
float32 rounding (tested to 1e-4 relative in ``tests/test_onnx_backbone.py``).
"""

from __future__ import annotations

import io
import os
import warnings
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from padim.backbones import FeatureExtractor

OPSET = 17


def available() -> bool:
    """True when onnxruntime (and the ``onnx`` exporter dependency) can be imported.

    >>> isinstance(available(), bool)
    True
    """
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class _EmbeddingGraph(nn.Module):
    """FeatureExtractor followed by :func:`padim.model.embed`, written for tracing.

    The per-layer channel indices are computed once here and stored as buffers, so the
    traced graph holds constant ``Gather`` indices instead of boolean masking of
    ``channel_idx``. The result is the same as ``embed(extractor(x), channel_idx, channels)``.
    """

    def __init__(
        self, extractor: FeatureExtractor, channel_idx: Tensor, channels: Sequence[int], channels_last: bool = False
    ) -> None:
        super().__init__()
        self.extractor = extractor
        self.channels_last = channels_last
        channel_idx = torch.as_tensor(channel_idx, dtype=torch.long).cpu()
        self.used: list[int] = []  # which layers contribute at least one channel
        start = 0
        for i, n_channels in enumerate(channels):
            local = channel_idx[(channel_idx >= start) & (channel_idx < start + n_channels)] - start
            start += n_channels
            if local.numel():
                self.register_buffer(f"idx{i}", local.clone(), persistent=False)
                self.used.append(i)

    def forward(self, images: Tensor) -> Tensor:
        features = self.extractor(images)
        size = features[0].shape[-2:]
        parts = []
        for i in self.used:
            part = features[i].index_select(1, getattr(self, f"idx{i}"))
            if i != 0:  # later layers are coarser (network order): nearest onto the first grid
                part = F.interpolate(part, size=size, mode="nearest")
            parts.append(part)
        embedding = torch.cat(parts, dim=1)
        return embedding.permute(0, 2, 3, 1) if self.channels_last else embedding


def export_embedding(
    extractor: FeatureExtractor,
    channel_idx: Tensor,
    channels: Sequence[int],
    *,
    example_size: tuple[int, int] = (64, 64),
    channels_last: bool = False,
    opset: int = OPSET,
) -> bytes:
    """The embedding step as a serialised ONNX model (in memory, nothing written to disk).

    Args:
        extractor: the cut backbone (moved to the CPU for export, then back).
        channel_idx: (D,) sorted indices into the concatenated layer channels.
        channels: C_l per layer of ``extractor``.
        example_size: (height, width) of the tracing input; batch, height and width are
            dynamic axes of the graph, so any size divisible by the last stride works.
        channels_last: output (N, H, W, D) instead of (N, D, H, W).
        opset: ONNX opset version.

    Returns:
        ONNX ``ModelProto`` bytes: input ``images`` (N, 3, H_img, W_img) float32, output
        ``embedding`` (N, D, H, W) float32, or (N, H, W, D) with ``channels_last``.
    """
    device = next(extractor.parameters()).device
    graph = _EmbeddingGraph(extractor.cpu().eval(), channel_idx, channels, channels_last)
    out_axes = {0: "batch", 1: "h", 2: "w"} if channels_last else {0: "batch", 2: "h", 3: "w"}
    example = torch.zeros(1, 3, *example_size)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer and deprecation chatter; the graph is tested
            torch.onnx.export(
                graph,
                (example,),
                buffer,
                input_names=["images"],
                output_names=["embedding"],
                dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}, "embedding": out_axes},
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    finally:
        extractor.to(device)
    return buffer.getvalue()


class OnnxEmbedder:
    """PaDiM embeddings computed by onnxruntime on the CPU.

    Args:
        extractor: the cut backbone whose weights are exported.
        channel_idx: (D,) sorted channel indices (``Padim.channel_idx_``).
        channels: C_l per layer (``[info.channels for info in extractor.layer_info]``).
        threads: onnxruntime intra-op threads; None: ``torch.get_num_threads()``.
        channels_last: return the (N, D, H, W) embedding with channels-last strides (a view of
            an (N, H, W, D) array). Same shape and values; the per-patch (P, N, D) view that
            the Gaussian update and the Mahalanobis distance need is then nearly contiguous,
            which saves a slow strided transpose on CPU (see ``benchmarks/profile_parts.py``).
        example_size: (height, width) used for tracing (the graph accepts other sizes).

    Attributes: ``session`` (the ``onnxruntime.InferenceSession``), ``model_bytes`` (the ONNX model).

    Shape:
        ``__call__``: images (N, 3, H_img, W_img) float32 -> (N, D, H_img / s, W_img / s),
        s the stride of the first layer.

    Raises:
        ImportError: if onnxruntime is not installed (check :func:`available` first).

    Example:
        >>> from padim.backbones import FeatureExtractor
        >>> ext = FeatureExtractor("resnet18", pretrained=False)
        >>> onnx_embed = OnnxEmbedder(ext, torch.arange(0, 448, 9), [64, 128, 256])
        >>> onnx_embed(torch.randn(2, 3, 64, 64)).shape
        torch.Size([2, 50, 16, 16])
    """

    def __init__(
        self,
        extractor: FeatureExtractor,
        channel_idx: Tensor,
        channels: Sequence[int],
        *,
        threads: int | None = None,
        channels_last: bool = True,
        example_size: tuple[int, int] = (64, 64),
    ) -> None:
        import onnxruntime as ort

        if threads is None:
            threads = torch.get_num_threads() or os.cpu_count() or 1
        if not (isinstance(threads, int) and threads >= 1):
            raise ValueError(f"threads must be an int >= 1, got {threads!r}")
        self.threads = threads
        self.channels_last = bool(channels_last)
        self.model_bytes = export_embedding(
            extractor, channel_idx, channels, example_size=example_size, channels_last=self.channels_last
        )
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # The memory pattern pre-plans one block per input shape on top of the arena: it
        # doubled peak memory (+620 MB instead of +330 MB, batch 32 at 256 px) for no speed.
        options.enable_mem_pattern = False
        # Idle workers that spin steal the cores from torch's threads, which run the
        # Mahalanobis distance right after: about 10% of predict time on 2 cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(self.model_bytes, options, providers=["CPUExecutionProvider"])

    def __call__(self, images: Tensor) -> Tensor:
        """Embeddings (N, D, H, W) float32 on the CPU; input and output are shared with NumPy, not copied.

        With ``channels_last`` the result is a permuted view: ``.is_contiguous()`` is False and
        ``.is_contiguous(memory_format=torch.channels_last)`` is True.

        Raises:
            ValueError: if ``images`` is not an (N, 3, H, W) batch.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape (N, 3, H, W), got {tuple(images.shape)}")
        array = images.detach().to("cpu", torch.float32).contiguous().numpy()
        (embedding,) = self.session.run(["embedding"], {"images": array})
        embedding = torch.from_numpy(embedding)
        return embedding.permute(0, 3, 1, 2) if self.channels_last else embedding

    def __repr__(self) -> str:
        return f"OnnxEmbedder(threads={self.threads}, channels_last={self.channels_last}, model_bytes={len(self.model_bytes)})"

