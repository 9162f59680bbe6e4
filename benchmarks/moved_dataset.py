"""Write moved copies of an MVTec AD category: parts that shifted a few pixels and turned a little.

Every test image and its mask is rotated about the image centre by a random angle in
[-max_angle, +max_angle] degrees and then translated by a random (dx, dy), each uniform in
[-max_shift, +max_shift] x the image side (default 24/900 of the side and 3 degrees). Images are
resampled bilinearly with the border replicated (the part's surroundings continue outwards, no
black wedges); masks with nearest neighbour and a zero fill. With ``--train`` the good training
images are moved the same way (own draws), else ``train/`` is a symbolic link to the original.

Two variants are written under ``--out`` (default ``benchmarks/_work/moved``):

    <out>/<category>_test/<category>/   test (and ground_truth) moved, train/ linked to the original
    <out>/<category>_all/<category>/    train, test and ground_truth all moved

Each category folder gets ``moves.json``: for every written file (relative path) its true
``dx``, ``dy`` (pixels of that file), ``angle`` (degrees, OpenCV's sign: positive turns the
picture counter-clockwise as displayed) and ``matrix``, the 2x3 affine map from original pixel
coordinates to moved ones (``cv2.warpAffine``'s forward matrix). A mask gets its image's move.
Images are written as PNG whatever the original format (no second JPEG loss); the stem is kept, so
``ground_truth/<type>/<stem>_mask.png`` still names each image's mask.

Usage:
    python benchmarks/moved_dataset.py /work/shared/data/mvtec_ad/bottle --seed 0
    python benchmarks/moved_dataset.py /work/shared/data/hazelnut_toy/hazelnut --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import cv2
import numpy as np

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: The largest shift, as a fraction of the image side: 24 px of a 900 px MVTec bottle.
MAX_SHIFT = 24 / 900
#: The largest rotation, degrees.
MAX_ANGLE = 3.0


def move_matrix(width: int, height: int, dx: float, dy: float, angle: float) -> np.ndarray:
    """2x3 float64 affine map, original -> moved pixel coordinates: rotation about the centre, then (dx, dy).

    The centre is ((width - 1) / 2, (height - 1) / 2), pixel centres at integers (OpenCV's
    convention); ``angle`` in degrees, positive counter-clockwise as displayed
    (``cv2.getRotationMatrix2D``).
    """
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2.0, (height - 1) / 2.0), float(angle), 1.0)
    matrix[:, 2] += (dx, dy)
    return matrix


def move_image(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """An (H, W[, C]) uint8 image moved by ``matrix``: bilinear, border replicated."""
    height, width = image.shape[:2]
    return cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def move_mask(mask: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """An (H, W) mask moved by ``matrix``: nearest neighbour, zeros where nothing comes in."""
    height, width = mask.shape[:2]
    return cv2.warpAffine(mask, matrix, (width, height), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=0)  # fmt: skip


def draw_move(rng: np.random.Generator, width: int, height: int, max_shift: float, max_angle: float) -> dict:
    """One random move: dx, dy in pixels (uniform within max_shift x the side), angle in degrees."""
    dx = float(rng.uniform(-max_shift, max_shift) * width)
    dy = float(rng.uniform(-max_shift, max_shift) * height)
    angle = float(rng.uniform(-max_angle, max_angle))
    return dict(dx=dx, dy=dy, angle=angle)


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES and not p.name.startswith("."))


def _read(path: Path, flags: int) -> np.ndarray:
    image = cv2.imread(str(path), flags)
    if image is None:
        raise OSError(f"{path}: cannot be read")
    return image


def _write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"{path}: cannot be written")


def write_split(source: Path, dest: Path, split: str, rng: np.random.Generator, max_shift: float, max_angle: float,
                moves: dict) -> int:  # fmt: skip
    """Move every image of ``source/split/<type>/`` (and its mask) into ``dest``; record each move in ``moves``."""
    count = 0
    for folder in sorted(p for p in (source / split).iterdir() if p.is_dir()):
        for path in _images(folder):
            image = _read(path, cv2.IMREAD_COLOR)
            height, width = image.shape[:2]
            move = draw_move(rng, width, height, max_shift, max_angle)
            matrix = move_matrix(width, height, **move)
            relative = f"{split}/{folder.name}/{path.stem}.png"
            _write(dest / relative, move_image(image, matrix))
            moves[relative] = dict(move, matrix=matrix.round(9).tolist(), source=str(path))
            count += 1
            mask_path = source / "ground_truth" / folder.name / f"{path.stem}_mask.png"
            if split == "test" and mask_path.is_file():
                mask = _read(mask_path, cv2.IMREAD_GRAYSCALE)
                mask_relative = f"ground_truth/{folder.name}/{path.stem}_mask.png"
                _write(dest / mask_relative, move_mask(mask, matrix))
                moves[mask_relative] = dict(move, matrix=moves[relative]["matrix"], source=str(mask_path))
    return count


def write_variant(source: Path, out: Path, move_train: bool, seed: int, max_shift: float, max_angle: float) -> Path:
    """Write one variant of the category at ``source``; returns the new category folder."""
    name = f"{source.name}_{'all' if move_train else 'test'}"
    dest = out / name / source.name
    dest.mkdir(parents=True, exist_ok=True)
    moves: dict = {}
    # Separate streams for test and train: the test moves are the same in both variants.
    test_rng = np.random.default_rng([seed, 1])
    n_test = write_split(source, dest, "test", test_rng, max_shift, max_angle, moves)
    if move_train:
        n_train = write_split(source, dest, "train", np.random.default_rng([seed, 2]), max_shift, max_angle, moves)
    else:
        link = dest / "train"
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink((source / "train").resolve(), link, target_is_directory=True)
        n_train = 0
    record = dict(source=str(source), seed=seed, max_shift_fraction=max_shift, max_angle_deg=max_angle,
                  convention="matrix maps original pixel (x, y) to moved pixel; angle > 0 is counter-clockwise "
                             "as displayed; rotation about ((W-1)/2, (H-1)/2) then shift by (dx, dy)",
                  n_test=n_test, n_train_moved=n_train, files=moves)  # fmt: skip
    (dest / "moves.json").write_text(json.dumps(record, indent=1))
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("category", type=Path, help="an MVTec AD category folder (train/, test/, ground_truth/)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "_work" / "moved")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-shift", type=float, default=MAX_SHIFT, help="fraction of the side (24/900)")
    parser.add_argument("--max-angle", type=float, default=MAX_ANGLE, help="degrees")
    parser.add_argument("--variants", nargs="+", default=["test", "all"], choices=["test", "all"])
    args = parser.parse_args()
    for variant in args.variants:
        dest = write_variant(args.category, args.out, variant == "all", args.seed, args.max_shift, args.max_angle)
        print(dest)


if __name__ == "__main__":
    main()
