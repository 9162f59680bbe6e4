"""Image data sets: finding the images and masks on disk, and loading them in batches.

Two layouts are understood. The MVTec AD layout (Bergmann et al., CVPR 2019) is a category
folder with ``train/good/``, ``test/<good or defect type>/`` and
``ground_truth/<defect type>/<stem>_mask.png``. The plain layout is a folder of good images,
optionally with a folder of defective images (flat, or one subfolder per defect type) and a
folder of masks matched by file stem. Discovery gives a list of :class:`Sample` records;
:class:`ImageDataset`, :func:`make_loader` and :func:`iter_batches` turn them into tensors,
pre-processed by :func:`padim.transforms.preprocess` so that every path of the toolkit sees
the same pixels. Masks are binarised (any non-zero pixel is defective) and resized
nearest-neighbour, so they stay 0/1.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from .progress import progress
from .transforms import IMAGE_SUFFIXES, ImageError, as_size, decode, list_images, load_image, preprocess

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
        ValueError: if ``split`` is unknown, or a folder is missing or holds no images.
    """
    root = Path(root)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
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
        ValueError: if a folder given is missing or holds no images, if neither folder is
            given, or if ``mask_dir`` is given without ``defect_dir``.
    """
    if good_dir is None and defect_dir is None:
        raise ValueError("folder_samples needs good_dir or defect_dir, got neither")
    if mask_dir is not None and defect_dir is None:
        raise ValueError(
            f"mask_dir={str(mask_dir)!r} was given without defect_dir; masks belong to defective images"
        )
    samples = [] if good_dir is None else [Sample(path, 0, "good") for path in list_images(good_dir)]
    if defect_dir is None:
        return samples
    defect_dir = Path(defect_dir)
    if not defect_dir.is_dir():
        raise ValueError(f"{defect_dir}: expected a folder of defective images, but it does not exist")
    if mask_dir is not None and not Path(mask_dir).is_dir():
        raise ValueError(f"{mask_dir}: expected a folder of masks, but it does not exist")
    # A mask folder kept inside the defect folder is not a defect type.
    mask_folder = None if mask_dir is None else Path(mask_dir)
    subfolders = [folder for folder in _subfolders(defect_dir) if folder != mask_folder]
    groups = [(folder.name, _images_in(folder)) for folder in subfolders]
    groups = [("defect", _images_in(defect_dir))] + [(name, paths) for name, paths in groups if paths]
    if not any(paths for _, paths in groups):
        raise ValueError(
            f"{defect_dir}: expected defective images, directly or in one subfolder per defect type, "
            "found none"
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
        ValueError: if there are no images there (the message says where it looked).
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
        ValueError: if the folder is missing, holds images but no subfolders, or a subfolder
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
        raise ValueError(
            f"{test_dir}: expected a test folder with good/ and one subfolder per defect type, "
            "but it does not exist"
        )
    folders = [folder for folder in _subfolders(test_dir) if folder != ground_truth_dir]
    if not folders:
        found = "loose images" if _images_in(test_dir) else "nothing"
        raise ValueError(f"{test_dir}: expected subfolders good/ and one per defect type, found {found}")
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


def _images_in(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted; empty when there are none."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _mask_index(folder: Path) -> dict[str, Path]:
    """Map image stem -> mask file for the masks in ``folder`` (``<stem>_mask.*`` wins over ``<stem>.*``)."""
    if not folder.is_dir():
        return {}
    index: dict[str, Path] = {}
    for path in _images_in(folder):
        if path.stem.endswith("_mask"):
            index[path.stem[: -len("_mask")]] = path
        else:
            index.setdefault(path.stem, path)
    return index


def _refuse_dataset_root(path: Path) -> None:
    """Point at the category when given the root of a whole MVTec AD download."""
    if path.is_dir() and not _images_in(path):
        categories = [folder.name for folder in _subfolders(path) if is_mvtec(folder)]
        if categories:
            raise ValueError(
                f"{path}: this holds MVTec AD categories ({', '.join(categories[:3])}"
                f"{', ...' if len(categories) > 3 else ''}); "
                f"pass one category folder, e.g. {path / categories[0]}"
            )


# --------------------------------------------------------------------------- loading


def load_mask(path: PathLike, image_size: int | Sequence[int]) -> tuple[np.ndarray, tuple[int, int]]:
    """Read a mask of any mode (1, L, P, RGB, RGBA, 16-bit), binarise it and resize it.

    Any non-zero pixel is defective; the colour channels count and alpha is ignored. The
    mask is binarised before the nearest-neighbour resize, so no value is lost to scaling.

    Args:
        path: the mask file.
        image_size: int or (height, width) to resize to.

    Returns:
        (uint8 array (H, W) of 0 and 1, the file's own (width, height)).

    Raises:
        ImageError: naming the file, when it cannot be decoded.
    """
    height, width = as_size(image_size)
    image = decode(path, "mask")
    if image.mode not in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F", "RGB", "RGBA"):
        # Palette indices and CMYK say nothing about darkness until converted.
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    pixels, original_size = np.asarray(image), image.size
    if pixels.ndim == 3:
        pixels = pixels[..., : 3 if pixels.shape[-1] >= 3 else 1]  # drop alpha
        pixels = pixels.max(axis=-1)
    binary = Image.fromarray((pixels > 0).astype(np.uint8))
    if binary.size != (width, height):
        binary = binary.resize((width, height), Image.NEAREST)
    return np.array(binary, dtype=np.uint8), original_size  # a copy: torch wants writable arrays


class ImageDataset(Dataset):
    """Samples as pre-processed tensors, for a :class:`torch.utils.data.DataLoader`.

    Item ``i`` is a dict:

    - ``"image"``: float32 tensor (3, H, W), from :func:`padim.transforms.preprocess`;
    - ``"mask"``: uint8 tensor (H, W) of 0 and 1, zeros when the sample has no mask;
    - ``"index"``: ``i``;
    - ``"ok"``: False when the image (or its mask) could not be read and ``skip_bad`` is set;
    - ``"error"``: the reason when not ok, else ``""``.

    A mask whose size differs from its image's is resized anyway, with a warning naming the
    mask file. In DataLoader worker processes that warning goes to the worker's stderr.

    Args:
        samples: the samples to load.
        image_size: int or (height, width).
        skip_bad: return an all-zero, not-ok item for an unreadable file instead of raising.

    Raises:
        ImageError: from ``__getitem__``, naming the file, when a file cannot be decoded and
            ``skip_bad`` is false.

    >>> from PIL import Image; import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "a.png"; Image.new("L", (20, 10)).save(path)
    >>> item = ImageDataset([Sample(path, 0, "good")], 16)[0]
    >>> tuple(item["image"].shape), tuple(item["mask"].shape), item["ok"]
    ((3, 16, 16), (16, 16), True)
    """

    def __init__(self, samples: Sequence[Sample], image_size: int | Sequence[int], skip_bad: bool = False):
        self.samples = list(samples)
        self.image_size = as_size(image_size)
        self.skip_bad = skip_bad

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        height, width = self.image_size
        try:
            image = load_image(sample.path)
            mask = np.zeros((height, width), np.uint8)
            if sample.mask_path is not None:
                mask, mask_size = load_mask(sample.mask_path, self.image_size)
                if mask_size != image.size:
                    warnings.warn(
                        f"{sample.mask_path}: mask is {mask_size[0]}x{mask_size[1]} but its image "
                        f"{sample.path.name} is {image.size[0]}x{image.size[1]}; resizing the mask to match",
                        stacklevel=2,
                    )
        except ImageError as error:
            if not self.skip_bad:
                raise
            return {
                "image": torch.zeros(3, height, width),
                "mask": torch.zeros(height, width, dtype=torch.uint8),
                "index": index,
                "ok": False,
                "error": str(error),
            }
        return {
            "image": torch.from_numpy(preprocess(image, self.image_size)[0]),
            "mask": torch.from_numpy(mask),
            "index": index,
            "ok": True,
            "error": "",
        }


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack :class:`ImageDataset` items into a batch.

    Returns:
        dict with ``"image"`` float32 (N, 3, H, W), ``"mask"`` uint8 (N, H, W), ``"index"``
        int64 (N,), ``"ok"`` bool (N,) and ``"error"`` a list of N strings.
    """
    return {
        "image": torch.stack([item["image"] for item in items]),
        "mask": torch.stack([item["mask"] for item in items]),
        "index": torch.tensor([item["index"] for item in items], dtype=torch.int64),
        "ok": torch.tensor([item["ok"] for item in items], dtype=torch.bool),
        "error": [item["error"] for item in items],
    }


def make_loader(
    samples: Sequence[Sample],
    image_size: int | Sequence[int],
    batch_size: int = 32,
    workers: int | None = None,
    skip_bad: bool = False,
) -> DataLoader:
    """A DataLoader over ``samples`` that keeps their order and yields :func:`collate` batches.

    Args:
        samples: the samples, at least one.
        image_size: int or (height, width).
        batch_size: images per batch (the last batch may be smaller).
        workers: decoding processes; None means ``min(2, cpu count)``, 0 decodes in this
            process (no subprocesses).
        skip_bad: see :class:`ImageDataset`.

    Returns:
        a :class:`torch.utils.data.DataLoader` (no shuffling, no persistent workers).

    Raises:
        ValueError: for no samples, ``batch_size < 1`` or ``workers < 0``.
    """
    if not samples:
        raise ValueError("samples: expected at least one Sample, got none")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    if isinstance(workers, bool) or int(workers) != workers or workers < 0:
        raise ValueError(f"workers must be an integer >= 0 (0: load in this process), got {workers!r}")
    return DataLoader(
        ImageDataset(samples, image_size, skip_bad=skip_bad),
        batch_size=int(batch_size),
        shuffle=False,
        num_workers=int(workers),
        collate_fn=collate,
        persistent_workers=False,
    )


def iter_batches(
    samples: Sequence[Sample],
    image_size: int | Sequence[int],
    batch_size: int = 32,
    workers: int | None = None,
    skip_bad: bool = False,
    quiet: bool = False,
    desc: str = "",
    skipped: dict[Path, str] | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[int]]]:
    """Yield batches of readable images with a progress bar, in the order of ``samples``.

    Unreadable files are caught in the worker either way; with ``skip_bad`` they are left
    out of the batches and recorded in ``skipped``, otherwise the ImageError is raised here,
    in the calling process, with its one-line message naming the file.

    Args:
        samples, image_size, batch_size, workers: as for :func:`make_loader`.
        skip_bad: leave unreadable images out instead of raising.
        quiet: no progress bar (it is also off when stderr is not a terminal).
        desc: the progress bar's label.
        skipped: a dict the skipped files are added to, as path -> reason, in order.

    Returns:
        an iterator of (images float32 (N, 3, H, W), masks uint8 (N, H, W) of 0/1, indices
        into ``samples``: list of N ints). Batches with no readable image are not yielded.

    Raises:
        ImageError: naming the file, for an unreadable image or mask when ``skip_bad`` is false.
        ValueError: as for :func:`make_loader`.
    """
    # Always catch in the worker: an exception re-raised from a worker carries the worker's
    # whole traceback in its message, which is no good for a one-line error at the CLI.
    # Built here, not in the generator, so that bad arguments fail at the call.
    loader = make_loader(samples, image_size, batch_size, workers, skip_bad=True)
    return _ok_batches(loader, samples, skip_bad, quiet, desc, skipped)


def _ok_batches(
    loader: DataLoader,
    samples: Sequence[Sample],
    skip_bad: bool,
    quiet: bool,
    desc: str,
    skipped: dict[Path, str] | None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[int]]]:
    """The generator behind :func:`iter_batches`."""
    for batch in progress(loader, total=len(loader), desc=desc, quiet=quiet):
        ok = batch["ok"]
        for index, good, error in zip(batch["index"].tolist(), ok.tolist(), batch["error"]):
            if good:
                continue
            if not skip_bad:
                raise ImageError(error)
            if skipped is not None:
                skipped[samples[index].path] = error
        if ok.all():
            yield batch["image"], batch["mask"], batch["index"].tolist()
        elif ok.any():
            yield batch["image"][ok], batch["mask"][ok], batch["index"][ok].tolist()


class BatchStream:
    """:func:`iter_batches` as an iterable that keeps the files it skipped.

    Attributes:
        skipped: path -> reason for each unreadable file left out, filled while iterating.

    >>> from PIL import Image; import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> Image.new("RGB", (8, 8)).save(folder / "a.png"); _ = (folder / "b.png").write_text("no")
    >>> stream = BatchStream(train_samples(folder), 8, workers=0, skip_bad=True, quiet=True)
    >>> [indices for _, _, indices in stream], [path.name for path in stream.skipped]
    ([[0]], ['b.png'])
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        image_size: int | Sequence[int],
        *,
        batch_size: int = 32,
        workers: int | None = None,
        skip_bad: bool = False,
        quiet: bool = False,
        desc: str = "",
    ):
        self.samples = samples
        self.image_size = image_size
        self.batch_size = batch_size
        self.workers = workers
        self.skip_bad = skip_bad
        self.quiet = quiet
        self.desc = desc
        self.skipped: dict[Path, str] = {}

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[int]]]:
        self.skipped.clear()
        return iter_batches(
            self.samples, self.image_size, self.batch_size, self.workers,
            self.skip_bad, self.quiet, self.desc, skipped=self.skipped,
        )
