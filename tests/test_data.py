"""Tests for padim.data (discovery, decoding, masks, loaders) and padim.progress."""

from __future__ import annotations

import io
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from padim import data
from padim.data import (
    BatchStream,
    ImageDataset,
    Sample,
    folder_samples,
    is_mvtec,
    iter_batches,
    load_mask,
    make_loader,
    mvtec_samples,
    train_samples,
)
from padim.progress import progress
from padim.transforms import ImageError, preprocess


def _save(path: Path, image: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _truncated_png(path: Path) -> Path:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, "PNG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


# ------------------------------------------------------------------ discovery: MVTec


def test_mvtec_train_split(mvtec_tree):
    samples = mvtec_samples(mvtec_tree, "train")
    assert [s.path.name for s in samples] == [f"{i:03d}.png" for i in range(8)]
    assert {(s.label, s.defect_type, s.mask_path) for s in samples} == {(0, "good", None)}
    assert train_samples(mvtec_tree) == samples
    assert is_mvtec(mvtec_tree) and not is_mvtec(mvtec_tree / "train")


def test_mvtec_test_split_labels_and_masks(mvtec_tree):
    samples = mvtec_samples(mvtec_tree, "test")
    assert [(s.defect_type, s.label) for s in samples] == (
        [("good", 0)] * 3 + [("scratch", 1)] * 2 + [("spot", 1)] * 2
    )
    for sample in samples:
        if sample.label == 0:
            assert sample.mask_path is None
        else:
            expected = mvtec_tree / "ground_truth" / sample.defect_type / f"{sample.path.stem}_mask.png"
            assert sample.mask_path == expected
    assert data.test_samples(mvtec_tree) == samples


def test_mvtec_defect_without_mask_gets_none(mvtec_tree, tmp_path):
    category = shutil.copytree(mvtec_tree, tmp_path / "category")
    (category / "ground_truth" / "spot" / "001_mask.png").unlink()
    masks = {(s.defect_type, s.path.name): s.mask_path for s in mvtec_samples(category, "test")}
    assert masks[("spot", "001.png")] is None
    assert masks[("spot", "000.png")] is not None


def test_mvtec_unknown_split(mvtec_tree):
    with pytest.raises(ValueError, match="split must be one of .*'valid'"):
        mvtec_samples(mvtec_tree, "valid")


def test_hidden_folders_are_ignored(mvtec_tree, tmp_path):
    category = shutil.copytree(mvtec_tree, tmp_path / "category")
    (category / "test" / ".ipynb_checkpoints").mkdir()
    assert len(mvtec_samples(category, "test")) == 7


def test_dataset_root_points_at_a_category(mvtec_tree, tmp_path):
    shutil.copytree(mvtec_tree, tmp_path / "mvtec" / "weave")
    for find in (train_samples, data.test_samples):
        with pytest.raises(ValueError, match="pass one category folder.*weave"):
            find(tmp_path / "mvtec")


# ------------------------------------------------------------------ discovery: plain layout


def test_folder_samples_with_defect_subfolders(plain_tree):
    samples = folder_samples(plain_tree.good, plain_tree.defect, plain_tree.mask)
    assert [s.defect_type for s in samples] == ["good"] * 8 + ["scratch"] * 2 + ["spot"] * 2
    for sample in samples[8:]:
        assert sample.label == 1
        assert sample.mask_path == plain_tree.mask / sample.defect_type / f"{sample.path.stem}.png"
    assert train_samples(plain_tree.good) == folder_samples(plain_tree.good)


def test_folder_samples_flat_defects_and_mask_suffix(tmp_path):
    for name in ("a", "b"):
        _save(tmp_path / "good" / f"{name}.png", Image.new("RGB", (8, 8)))
        _save(tmp_path / "bad" / f"{name}.jpg", Image.new("RGB", (8, 8)))
    _save(tmp_path / "bad" / "masks" / "a_mask.png", Image.new("L", (8, 8), 255))
    samples = folder_samples(tmp_path / "good", tmp_path / "bad", tmp_path / "bad" / "masks")
    defects = [s for s in samples if s.label == 1]
    assert [(s.path.name, s.defect_type) for s in defects] == [("a.jpg", "defect"), ("b.jpg", "defect")]
    assert defects[0].mask_path == tmp_path / "bad" / "masks" / "a_mask.png"  # not a defect type
    assert defects[1].mask_path is None


def test_plain_test_folder_matches_mvtec(mvtec_tree, plain_test_tree):
    def summary(samples):
        return [(s.path.name, s.label, s.defect_type, s.mask_path and s.mask_path.name) for s in samples]

    plain = data.test_samples(plain_test_tree)
    assert summary(plain) == summary(mvtec_samples(mvtec_tree, "test"))
    assert all(s.mask_path is None or plain_test_tree in s.mask_path.parents for s in plain)


# ------------------------------------------------------------------ discovery: errors


def _one_line_error(call, *args) -> str:
    with pytest.raises(ValueError) as caught:
        call(*args)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_missing_and_empty_folders(tmp_path):
    missing, empty = tmp_path / "missing", tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    for call, folder in [
        (train_samples, missing),
        (train_samples, empty),
        (data.test_samples, missing),
        (data.test_samples, empty),
        (folder_samples, missing),
    ]:
        message = _one_line_error(call, folder)
        assert str(folder) in message and "expected" in message
    assert "defective images" in _one_line_error(folder_samples, None, empty)
    good = _save(tmp_path / "good" / "a.png", Image.new("RGB", (8, 8))).parent
    assert f"{missing}: expected a folder of defective" in _one_line_error(folder_samples, good, missing)
    assert "folder of masks" in _one_line_error(folder_samples, None, empty, missing)
    assert "without defect_dir" in _one_line_error(folder_samples, empty, None, empty)
    assert "neither" in _one_line_error(folder_samples, None)


def test_test_folder_with_loose_images_or_empty_subfolder(tmp_path):
    _save(tmp_path / "loose" / "a.png", Image.new("RGB", (8, 8)))
    assert "found loose images" in _one_line_error(data.test_samples, tmp_path / "loose")
    _save(tmp_path / "split" / "good" / "a.png", Image.new("RGB", (8, 8)))
    (tmp_path / "split" / "crack").mkdir()
    assert str(tmp_path / "split" / "crack") in _one_line_error(data.test_samples, tmp_path / "split")


# ------------------------------------------------------------------ decoding images


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.fromarray(np.full((20, 30), 65535, np.uint16)),  # 16-bit grayscale
        lambda: Image.new("L", (30, 20), 255),
        lambda: Image.new("RGBA", (30, 20), (255, 255, 255, 0)),  # alpha dropped, not composited
        lambda: Image.new("P", (30, 20), 0).convert("P", palette=Image.ADAPTIVE),
        lambda: Image.new("1", (30, 20), 1),
    ],
    ids=["16-bit", "grayscale", "rgba", "palette", "1-bit"],
)
def test_every_image_mode_decodes_to_three_channels(tmp_path, make):
    image = make()
    if image.mode == "P":
        image.putpalette([255, 255, 255] * 256)
    path = _save(tmp_path / "image.png", image)
    item = ImageDataset([Sample(path, 0, "good")], (16, 24))[0]
    white = torch.from_numpy(preprocess(Image.new("RGB", (30, 20), (255, 255, 255)), (16, 24))[0])
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 16, 24)
    torch.testing.assert_close(item["image"], white)


@pytest.mark.parametrize("kind", ["truncated", "text"])
def test_bad_image_raises_naming_the_file(tmp_path, kind):
    path = tmp_path / "broken.png"
    if kind == "truncated":
        _truncated_png(path)
    else:
        path.write_text("this is not a PNG")
    with pytest.raises(ImageError, match="broken.png"):
        ImageDataset([Sample(path, 0, "good")], 16)[0]
    item = ImageDataset([Sample(path, 0, "good")], 16, skip_bad=True)[0]
    assert not item["ok"] and "broken.png" in item["error"]
    assert item["image"].shape == (3, 16, 16) and not item["image"].any()


def _folder_with_bad_files(folder: Path) -> list[Sample]:
    rng = np.random.default_rng(1)
    for i in range(4):
        _save(folder / f"good{i}.png", Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)))
    _truncated_png(folder / "good1_truncated.png")
    (folder / "good2_text.png").write_text("not an image")
    return train_samples(folder)  # sorted: good0, good1, good1_truncated, good2, good2_text, good3


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_files_skipped_or_raised_by_stream(tmp_path, workers):
    samples = _folder_with_bad_files(tmp_path)
    stream = BatchStream(samples, 16, batch_size=2, workers=workers, skip_bad=True, quiet=True)
    batches = list(stream)
    assert [indices for _, _, indices in batches] == [[0, 1], [3], [5]]
    assert [images.shape[0] for images, _, _ in batches] == [2, 1, 1]
    assert list(stream.skipped) == [tmp_path / "good1_truncated.png", tmp_path / "good2_text.png"]
    assert all(path.name in reason for path, reason in stream.skipped.items())

    with pytest.raises(ImageError, match="good1_truncated.png") as caught:
        list(iter_batches(samples, 16, batch_size=2, workers=workers, quiet=True))
    assert "\n" not in str(caught.value)  # not the worker's traceback


def test_loader_worker_error_propagates(tmp_path):
    path = tmp_path / "text.png"
    path.write_text("not an image")
    with pytest.raises(ImageError, match="text.png"):
        list(make_loader([Sample(path, 0, "good")], 16, workers=1))


# ------------------------------------------------------------------ masks


def _palette(mask: np.ndarray) -> Image.Image:
    # Background is index 1 (black), the defect index 0 (green): raw indices would invert it.
    image = Image.fromarray((1 - mask).astype(np.uint8), mode="P")
    image.putpalette([0, 255, 0, 0, 0, 0] + [0, 0, 0] * 254)
    return image


@pytest.mark.parametrize(
    "make",
    [
        lambda m: Image.fromarray(m.astype(np.uint8)),  # L with the value 1: not only 255 counts
        lambda m: Image.fromarray(m.astype(bool)),  # mode 1
        lambda m: Image.fromarray(m.astype(np.uint16)),  # 16-bit, value 1 of 65535
        lambda m: Image.fromarray(np.stack([m * 200, 0 * m, 0 * m], -1).astype(np.uint8)),  # red on black
        lambda m: Image.fromarray(np.stack([m * 9, m * 9, m * 9, 255 + 0 * m], -1).astype(np.uint8)),  # RGBA
        _palette,
    ],
    ids=["L", "1-bit", "16-bit", "rgb", "rgba", "palette"],
)
def test_masks_of_any_mode_are_binarised(tmp_path, make):
    expected = np.zeros((16, 16), np.uint8)
    expected[4:9, 2:12] = 1
    path = _save(tmp_path / "mask.png", make(expected))
    mask, original_size = load_mask(path, 16)
    assert mask.dtype == np.uint8 and original_size == (16, 16)
    np.testing.assert_array_equal(mask, expected)


def test_mask_resized_nearest_and_size_mismatch_warns(tmp_path):
    image = _save(tmp_path / "a.png", Image.new("RGB", (40, 40)))
    pixels = np.zeros((20, 20), np.uint8)
    pixels[:, 10:] = 128
    mask_path = _save(tmp_path / "a_mask.png", Image.fromarray(pixels))
    with pytest.warns(UserWarning, match="a_mask.png.*20x20.*40x40"):
        item = ImageDataset([Sample(image, 1, "defect", mask_path)], 8)[0]
    assert item["mask"].dtype == torch.uint8
    assert item["mask"].tolist() == [[0] * 4 + [1] * 4] * 8


def test_mask_of_matching_size_is_quiet_and_missing_mask_is_zero(mvtec_tree):
    samples = mvtec_samples(mvtec_tree, "test")
    dataset = ImageDataset(samples, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        items = [dataset[i] for i in range(len(dataset))]
    assert all(not item["mask"].any() for item, s in zip(items, samples) if s.label == 0)
    assert all(item["mask"].any() for item, s in zip(items, samples) if s.label == 1)
    assert {int(v) for item in items for v in item["mask"].unique()} == {0, 1}


def test_broken_mask_names_the_mask_file(tmp_path):
    image = _save(tmp_path / "a.png", Image.new("RGB", (8, 8)))
    mask = tmp_path / "a_mask.png"
    mask.write_text("no")
    with pytest.raises(ImageError, match="a_mask.png"):
        ImageDataset([Sample(image, 1, "defect", mask)], 8)[0]


# ------------------------------------------------------------------ loaders


def test_workers_do_not_change_the_batches(mvtec_tree):
    samples = mvtec_samples(mvtec_tree, "test")
    serial = list(iter_batches(samples, 32, batch_size=3, workers=0, quiet=True))
    parallel = list(iter_batches(samples, 32, batch_size=3, workers=2, quiet=True))
    assert [indices for _, _, indices in serial] == [[0, 1, 2], [3, 4, 5], [6]]
    assert len(serial) == len(parallel)
    for (images_a, masks_a, indices_a), (images_b, masks_b, indices_b) in zip(serial, parallel):
        assert indices_a == indices_b
        assert images_a.dtype == torch.float32 and images_a.shape[1:] == (3, 32, 32)
        assert masks_a.dtype == torch.uint8 and masks_a.shape[1:] == (32, 32)
        assert torch.equal(images_a, images_b) and torch.equal(masks_a, masks_b)


def test_loader_batch_contents(mvtec_tree):
    samples = mvtec_samples(mvtec_tree, "train")
    batch = next(iter(make_loader(samples, (24, 40), batch_size=5, workers=0)))
    assert batch["image"].shape == (5, 3, 24, 40) and batch["mask"].shape == (5, 24, 40)
    assert batch["index"].tolist() == [0, 1, 2, 3, 4] and batch["ok"].all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"samples": []}, "at least one Sample"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
        ({"workers": -1}, "workers must be an integer >= 0.*got -1"),
        ({"image_size": (8, 8, 3)}, "image_size"),
    ],
)
def test_loader_argument_errors(mvtec_tree, kwargs, message):
    arguments = {"samples": mvtec_samples(mvtec_tree, "train"), "image_size": 16, **kwargs}
    with pytest.raises(ValueError, match=message):
        make_loader(**arguments)
    with pytest.raises(ValueError, match=message):
        iter_batches(**arguments)  # at the call, not at the first batch


# ------------------------------------------------------------------ progress


def test_progress_is_silent_off_a_terminal(capsys):
    assert list(progress(range(4), desc="x")) == [0, 1, 2, 3]  # stderr is captured: not a tty
    assert list(progress(iter("ab"), total=2, quiet=True)) == ["a", "b"]
    assert capsys.readouterr().err == ""
