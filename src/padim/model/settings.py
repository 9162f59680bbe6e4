"""A model's arguments, checked: the option table's ranges, then what depends on the backbone.

:func:`resolve` is the one check of :class:`padim.model.padim.Padim`'s constructor arguments,
made when a model is fitted or loaded (``__init__`` only stores them, as scikit-learn's
estimators do). Each plain range comes from :data:`padim.options.OPTIONS`, the table the command
line and the service use too; the rules that need the backbone (how many channels its layers
have, which grid strides its layers allow, whether the working size is larger than its coarsest
layer) are checked here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from padim.errors import NotFittedError, OptionError
from padim.extras import require
from padim.features.backbones import LayerInfo, get_spec, resolve_layers
from padim.graph.runners import check_device, parse_device, use_onnxruntime
from padim.io.images import as_size
from padim.machine import cpu_info
from padim.maps.anomaly_map import check_blur
from padim.options import OPTIONS, check

#: Constructor arguments of :class:`padim.model.padim.Padim`, in order.
PARAMS = ("backbone", "layers", "n_features", "image_size", "seed", "eps", "sigma", "pretrained", "weights", "device",
          "holdout", "quantile", "backend", "stats_dtype", "backbone_dtype", "grid_stride", "tile_size", "align")  # fmt: skip
#: Arguments whose plain range is a row of the option table.
_TABLE_CHECKED = ("backbone", "n_features", "seed", "eps", "sigma", "holdout", "quantile", "backend", "stats_dtype",
                  "backbone_dtype", "grid_stride", "tile_size", "align")  # fmt: skip


@dataclass(frozen=True)
class Resolved:
    """A model's arguments with their defaults decided.

    Attributes:
        layer_info: the chosen layers, in network order.
        layers: their names.
        n_features: D, at most the layers' channels.
        image_size: (H, W) as given; an int (the short side) becomes (int, int) only for the checks.
        grid_stride: pixels per Gaussian.
    """

    layer_info: tuple[LayerInfo, ...]
    layers: tuple[str, ...]
    n_features: int
    image_size: tuple[int, int]
    grid_stride: int


def check_fitted(model: Any) -> None:
    """Raise :class:`NotFittedError` unless ``model`` has been fitted or loaded."""
    if getattr(model, "precision_cholesky_packed_", None) is None:
        raise NotFittedError("this Padim model is not fitted yet: call fit(images) or Padim.load(path) first")


def check_working_size(size: tuple[int, int], layer: LayerInfo, sigma: float) -> None:
    """Refuse a working size the backbone's coarsest layer or the map's blur cannot use.

    The backbone is checked first: an image smaller than its coarsest layer's stride gives no
    feature at all, whatever the blur.

    Raises:
        OptionError: naming ``image_size`` and what it must be.
    """
    if min(size) <= layer.stride:
        raise OptionError(f"image_size {size[0]}x{size[1]} is smaller than the backbone needs: layer {layer.name} "
                          f"reduces the image {layer.stride} times, so each side must be more than {layer.stride} "
                          "pixels")  # fmt: skip
    check_blur(size, sigma)


def resolve(model: Any) -> Resolved:
    """Check a model's arguments and decide its defaults.

    Raises:
        OptionError: naming the argument, what it accepts and the value received.
    """
    for name in _TABLE_CHECKED:
        check(name, getattr(model, name))
    spec, layer_info = get_spec(model.backbone), resolve_layers(model.backbone, model.layers)
    total = sum(info.channels for info in layer_info)
    n_features = min(spec.default_n_features, total) if model.n_features is None else model.n_features
    if not 1 <= n_features <= total:
        raise OptionError(f"n_features must be an int from 1 to {total} (the channels of layers "
                          f"{[info.name for info in layer_info]}), got {n_features!r}")  # fmt: skip
    if not OPTIONS["image_size"].accepts(model.image_size):
        raise OptionError(f"image_size must be an int or (height, width) of 1..{int(OPTIONS['image_size'].high)} "
                          f"pixels, got {model.image_size!r}")  # fmt: skip
    image_size = as_size(model.image_size)
    check_working_size(image_size, layer_info[-1], model.sigma)
    if model.backend == "onnxruntime" and parse_device(model.device).type != "cpu":
        raise OptionError(f"backend='onnxruntime' runs on the CPU; got device={str(model.device)!r}")
    use_onnxruntime(model.backend, model.device, model.backbone_dtype)  # int8, bfloat16: only on the CPU
    if model.backbone_dtype == "bfloat16":
        check_bfloat16()
    check_device(model.device)
    first = layer_info[0].stride
    strides = [first * 2**k for k in range(7)]
    grid_stride = first if model.grid_stride is None else model.grid_stride
    if grid_stride not in strides:
        raise OptionError(f"grid_stride must be one of {strides} (pixels per Gaussian), got {model.grid_stride!r}")
    return Resolved(layer_info, tuple(info.name for info in layer_info), int(n_features), image_size, int(grid_stride))


def check_bfloat16() -> None:
    """Refuse bfloat16 where it would be emulated or OpenVINO is missing.

    Raises:
        MissingExtraError: without the ``openvino`` extra. OptionError: on a CPU without AVX512-BF16 or AMX.
    """
    require("openvino", "backbone_dtype='bfloat16'")
    if not cpu_info().bf16:
        raise OptionError(f"backbone_dtype='bfloat16' needs a CPU with AVX512-BF16 or AMX (this one: "
                          f"{cpu_info().describe()}); use int8 or float32")  # fmt: skip


def config_of(model: Any) -> dict:
    """What defines a fitted model (JSON-serialisable; stored in its files and shown by ``padim info``)."""
    return dict(backbone=model.backbone, layers=list(model.layers_), n_features=len(model.channel_idx_),
                image_size=list(model.image_size_), seed=int(model.seed), eps=float(model.eps), sigma=model.sigma,
                holdout=float(model.holdout), quantile=float(model.quantile), pretrained=bool(model.pretrained),
                backbone_dtype=model.backbone_dtype, grid_stride=int(model.grid_stride_),
                tile_size=int(model.tile_size_), align=model.align)  # fmt: skip


def params_of(model: Any) -> dict[str, Any]:
    """The constructor arguments of a model, as given (scikit-learn's ``get_params``)."""
    return {name: getattr(model, name) for name in PARAMS}
