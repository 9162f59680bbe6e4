"""Optional dependencies at the edge: which extra provides what, and the one way up to the training layer.

``pip install padim-toolkit`` is the runtime: it runs exported ``.onnx`` models with NumPy,
Pillow and onnxruntime (``predict``, ``evaluate``, ``info``, ``calibrate``, ``serve``). Each
extra adds one capability (:data:`EXTRAS`); code that needs one calls :func:`require` first, so
a missing package is one line naming the extra to install, never an ``ImportError`` traceback.

The training layer (:mod:`padim.model` and what it builds on: torch) sits above the runtime in
the package's layers. The runtime reaches it only through :func:`load`, by name, after checking
that the ``train`` extra is installed: opening a ``.padim`` model and the training commands
(the command table of :mod:`padim.cli.main`). Nothing else below the training layer names it.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any

from padim.errors import MissingExtraError


@dataclass(frozen=True)
class Extra:
    """An optional part of the toolkit: its name in ``pip install 'padim-toolkit[NAME]'`` and what it brings."""

    name: str
    modules: tuple[str, ...]
    purpose: str


#: The extras, by name. ``all`` installs every one of them (and is what the README installs).
EXTRAS = {
    "train": Extra(
        "train",
        ("torch", "torchvision", "onnx", "efficientnet_lite_pytorch"),
        "fitting, exporting and running .padim models (torch)",
    ),  # fmt: skip
    "video": Extra("video", ("cv2",), "padim watch on video files, cameras and streams (OpenCV)"),
    "openvino": Extra("openvino", ("openvino",), "the OpenVINO executor"),
    "ray": Extra("ray", ("ray",), "fit and predict on a Ray cluster (--ray)"),
}


def missing(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here (found without importing them)."""
    return [name for name in EXTRAS[extra].modules if importlib.util.find_spec(name) is None]


def install_hint(extra: str) -> str:
    """The command that installs an extra: ``pip install 'padim-toolkit[train]'``."""
    return f"pip install 'padim-toolkit[{extra}]'"


def require(extra: str, what: str) -> None:
    """Raise :class:`MissingExtraError` unless ``extra`` is installed.

    Args:
        extra: a key of :data:`EXTRAS`.
        what: what needs it, as the start of the message (``"padim fit"``, ``"model.padim: a .padim model"``).

    Raises:
        MissingExtraError: one line naming what needs it, the extra and the missing packages.
    """
    absent = missing(extra)
    if absent:
        raise MissingExtraError(
            f"{what} needs the '{extra}' extra ({EXTRAS[extra].purpose}), which is not installed "
            f"(no {', '.join(absent)}): {install_hint(extra)}"
        )


def load(target: str, extra: str, what: str) -> Any:
    """``"package.module:name"`` imported by name once ``extra`` is known to be installed.

    Raises:
        MissingExtraError: as :func:`require`.
    """
    require(extra, what)
    module, _, name = target.partition(":")
    found = importlib.import_module(module)
    return getattr(found, name) if name else found
