"""Data sets on disk: which images and masks a command reads, as :class:`Sample` records.

Two layouts are understood. The MVTec AD layout (Bergmann et al., CVPR 2019) is a category
folder with ``train/good/``, ``test/<good or defect type>/`` and
``ground_truth/<defect type>/<stem>_mask.png``. The plain layout is a folder of good images,
optionally with a folder of defective images (flat, or one subfolder per defect type) and a
folder of masks matched by file stem.

What a folder means, per command (one rule each):

- good images (``fit``, ``--validation``, calibration): an MVTec category's ``train/good``,
  else the images directly in the folder (:func:`train_samples`);
- images to score (``predict``): the images directly in the folder, or below it with
  ``recursive`` (:func:`padim.io.inputs.image_samples`, which also reads ``@list`` files);
- a labelled test set (``evaluate``): an MVTec category's ``test/`` with ``ground_truth/``, or a
  folder laid out like it (:func:`test_samples`).

:mod:`padim.io.loading` turns samples into batches. No torch here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from padim.errors import DataError, OptionError
from padim.io.images import IMAGE_SUFFIXES, list_images

PathLike = str | os.PathLike

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Sample:
    """One image on disk and what is known about it.

    Attributes:
        path: the image file.
        label: 0 for a good image, 1 for a defective one.
        defect_type: ``"good"`` for good images, else the defect's name (its folder's name).
        mask_path: the ground-truth mask file, or None (good images, or no mask found).
    """

    path: Path
    label: int
    defect_type: str
    mask_path: Path | None = None


# --------------------------------------------------------------------------- discovery


def is_mvtec(root: PathLike) -> bool:
    """Whether ``root`` is an MVTec AD category folder, i.e. holds ``train/good/``.

    >>> is_mvtec("/no/such/folder")
    False
    """
    return (Path(root) / "train" / "good").is_dir()


def mvtec_samples(root: PathLike, split: str) -> list[Sample]:
    """List the samples of one split of an MVTec AD category.

    Args:
        root: the category folder, e.g. ``mvtec_ad/bottle``.
        split: ``"train"`` (``train/good`` only) or ``"test"`` (every folder in ``test/``,
            with masks from ``ground_truth/<defect type>/<stem>_mask.png``).

    Returns:
        samples sorted by defect type (``good`` first) then file name. A defective image
        without a mask gets ``mask_path=None``.

    Raises:
        OptionError: if ``split`` is unknown.
        DataError: if a folder is missing or holds no images.
    """
    root = Path(root)
    if split not in SPLITS:
        raise OptionError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "train":
        return [Sample(path, 0, "good") for path in list_images(root / "train" / "good")]
    return _labelled_folders(root / "test", root / "ground_truth")


def folder_samples(
    good_dir: PathLike | None,
    defect_dir: PathLike | None = None,
    mask_dir: PathLike | None = None,
) -> list[Sample]:
    """List samples from plain folders.

    Args:
        good_dir: a folder of good images, or None for none.
        defect_dir: a folder of defective images. Images directly inside it get the defect
            type ``"defect"``; each subfolder holding images is a defect type named after it.
        mask_dir: masks for the defective images, matched by file stem: ``<stem>.png`` or
            ``<stem>_mask.png`` (any image suffix), looked up first in
            ``mask_dir/<defect type>/``, then in ``mask_dir`` itself.

    Returns:
        the good samples (sorted by name), then the defective ones (by defect type, name).

    Raises:
        DataError: if a folder given is missing or holds no images, if neither folder is
            given, or if ``mask_dir`` is given without ``defect_dir`` (OptionError).
    """
    if good_dir is None and defect_dir is None:
        raise OptionError("folder_samples needs good_dir or defect_dir, got neither")
    if mask_dir is not None and defect_dir is None:
        raise OptionError(f"mask_dir={str(mask_dir)!r} was given without defect_dir; masks belong to defective images")
    samples = [] if good_dir is None else [Sample(path, 0, "good") for path in list_images(good_dir)]
    if defect_dir is None:
        return samples
    defect_dir = Path(defect_dir)
    if not defect_dir.is_dir():
        raise DataError(f"{defect_dir}: expected a folder of defective images, but it does not exist")
    if mask_dir is not None and not Path(mask_dir).is_dir():
        raise DataError(f"{mask_dir}: expected a folder of masks, but it does not exist")
    # A mask folder kept inside the defect folder is not a defect type.
    mask_folder = None if mask_dir is None else Path(mask_dir)
    subfolders = [folder for folder in _subfolders(defect_dir) if folder != mask_folder]
    groups = [(folder.name, images_in(folder)) for folder in subfolders]
    groups = [("defect", images_in(defect_dir))] + [(name, paths) for name, paths in groups if paths]
    if not any(paths for _, paths in groups):
        raise DataError(
            f"{defect_dir}: expected defective images, directly or in one subfolder per defect type, found none"
        )
    for defect_type, paths in groups:
        masks = {}
        if mask_dir is not None:  # a mask in the defect type's subfolder wins over a flat one
            masks = {**_mask_index(Path(mask_dir)), **_mask_index(Path(mask_dir) / defect_type)}
        samples += [Sample(path, 1, defect_type, masks.get(path.stem)) for path in paths]
    return samples


def train_samples(path: PathLike) -> list[Sample]:
    """The good training images at ``path``: an MVTec category's ``train/good``, or a folder of images.

    Raises:
        DataError: if there are no images there (the message says where it looked).
    """
    path = Path(path)
    if is_mvtec(path):
        return mvtec_samples(path, "train")
    _refuse_dataset_root(path)
    return folder_samples(path)


def test_samples(path: PathLike) -> list[Sample]:
    """The labelled test images at ``path``.

    ``path`` is either an MVTec category (its ``test`` split is used) or a folder laid out
    like MVTec's ``test/``: ``good/`` for good images, any other subfolder for one defect
    type, and optionally ``ground_truth/<defect type>/<stem>_mask.png`` (``<stem>.png`` is
    accepted too) for the masks.

    Raises:
        DataError: if the folder is missing, holds images but no subfolders, or a subfolder
            holds no images.
    """
    path = Path(path)
    if is_mvtec(path):
        return mvtec_samples(path, "test")
    _refuse_dataset_root(path)
    return _labelled_folders(path, path / "ground_truth")


test_samples.__test__ = False  # its name starts with "test": keep pytest from collecting it


def _labelled_folders(test_dir: Path, ground_truth_dir: Path) -> list[Sample]:
    """Samples from ``test_dir/<good or defect type>/``, masks from ``ground_truth_dir/<defect type>/``."""
    if not test_dir.is_dir():
        raise DataError(
            f"{test_dir}: expected a test folder with good/ and one subfolder per defect type, but it does not exist"
        )
    folders = [folder for folder in _subfolders(test_dir) if folder != ground_truth_dir]
    if not folders:
        found = "loose images" if images_in(test_dir) else "nothing"
        raise DataError(f"{test_dir}: expected subfolders good/ and one per defect type, found {found}")
    # "good" first, so that good images lead as in MVTec's own listings.
    folders.sort(key=lambda folder: (folder.name != "good", folder.name))
    samples = []
    for folder in folders:
        paths = list_images(folder)
        if folder.name == "good":
            samples += [Sample(path, 0, "good") for path in paths]
        else:
            masks = _mask_index(ground_truth_dir / folder.name)
            samples += [Sample(path, 1, folder.name, masks.get(path.stem)) for path in paths]
    return samples


def _subfolders(folder: Path) -> list[Path]:
    """Visible subfolders, sorted; hidden ones (``.ipynb_checkpoints``, ``.git``) are not data."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def images_in(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted; empty when there are none."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _mask_index(folder: Path) -> dict[str, Path]:
    """Map image stem -> mask file for the masks in ``folder`` (``<stem>_mask.*`` wins over ``<stem>.*``)."""
    if not folder.is_dir():
        return {}
    index: dict[str, Path] = {}
    for path in images_in(folder):
        if path.stem.endswith("_mask"):
            index[path.stem[: -len("_mask")]] = path
        else:
            index.setdefault(path.stem, path)
    return index


def _refuse_dataset_root(path: Path) -> None:
    """Point at the category when given the root of a whole MVTec AD download."""
    if path.is_dir() and not images_in(path):
        categories = [folder.name for folder in _subfolders(path) if is_mvtec(folder)]
        if categories:
            raise DataError(
                f"{path}: this holds MVTec AD categories ({', '.join(categories[:3])}"
                f"{', ...' if len(categories) > 3 else ''}); "
                f"pass one category folder, e.g. {path / categories[0]}"
            )


def split_holdout(samples: Sequence[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Split good images into (fit, held out): ``fraction`` of them, drawn from ``seed``, at least one.

    At least two images stay for the fit; with fewer than three images nothing is held out.

    >>> fit, held = split_holdout([Sample(Path(f"{i}.png"), 0, "good") for i in range(10)], 0.2, seed=0)
    >>> len(fit), len(held)
    (8, 2)
    """
    import numpy as np

    if fraction <= 0 or len(samples) < 3:
        return list(samples), []
    n_hold = min(max(1, round(fraction * len(samples))), len(samples) - 2)
    held = set(np.random.default_rng(seed).permutation(len(samples))[:n_hold].tolist())
    return [s for i, s in enumerate(samples) if i not in held], [s for i, s in enumerate(samples) if i in held]
