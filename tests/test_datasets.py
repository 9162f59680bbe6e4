"""Which images and masks each layout gives (padim.io.datasets), and the hold-out split."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from padim.errors import DataError, OptionError
from padim.io import datasets as data
from padim.io.datasets import Sample, folder_samples, is_mvtec, mvtec_samples, split_holdout, train_samples
from padim.io.inputs import image_samples


def _save(path: Path, image: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def test_mvtec_train_split(mvtec_tree):
    samples = mvtec_samples(mvtec_tree, "train")
    assert [s.path.name for s in samples] == [f"{i:03d}.png" for i in range(8)]
    assert {(s.label, s.defect_type, s.mask_path) for s in samples} == {(0, "good", None)}
    assert train_samples(mvtec_tree) == samples
    assert is_mvtec(mvtec_tree) and not is_mvtec(mvtec_tree / "train")


def test_mvtec_test_split_labels_and_masks(mvtec_tree):
    samples = mvtec_samples(mvtec_tree, "test")
    assert [(s.defect_type, s.label) for s in samples] == ([("good", 0)] * 3 + [("scratch", 1)] * 2 + [("spot", 1)] * 2)
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
    with pytest.raises(OptionError, match="split must be one of .*'valid'"):
        mvtec_samples(mvtec_tree, "valid")


def test_hidden_folders_are_ignored(mvtec_tree, tmp_path):
    category = shutil.copytree(mvtec_tree, tmp_path / "category")
    (category / "test" / ".ipynb_checkpoints").mkdir()
    assert len(mvtec_samples(category, "test")) == 7


def test_dataset_root_points_at_a_category(mvtec_tree, tmp_path):
    shutil.copytree(mvtec_tree, tmp_path / "mvtec" / "weave")
    for find in (train_samples, data.test_samples):
        with pytest.raises(DataError, match="pass one category folder.*weave"):
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
    with pytest.raises((DataError, OptionError)) as caught:
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


def test_image_samples_take_files_and_folders(mvtec_tree, tmp_path):
    good = mvtec_tree / "test" / "good"
    one = sorted(good.iterdir())[0]
    samples = image_samples([one, mvtec_tree / "test" / "scratch"])
    assert [s.path for s in samples] == [one, *sorted((mvtec_tree / "test" / "scratch").iterdir())]
    with pytest.raises(DataError, match="nope.png: no such image file or folder"):
        image_samples([tmp_path / "nope.png"])
    with pytest.raises(DataError, match="empty list"):
        image_samples([])


def test_image_samples_recursive_lists_and_duplicates(mvtec_tree, tmp_path, monkeypatch):
    test = mvtec_tree / "test"
    nested = sorted(p for p in test.rglob("*.png"))
    assert [s.path for s in image_samples(test, recursive=True)] == nested
    (test / ".cache").mkdir(exist_ok=True)  # hidden folders are not data
    assert [s.path for s in image_samples(test, recursive=True)] == nested
    with pytest.raises(DataError, match="found none; its subfolders hold images: add --recursive"):
        image_samples(test)
    listing = tmp_path / "list.txt"
    listing.write_text(f"# a comment\n\n{nested[0]}\r\ntest/spot\n{nested[0]}\n")
    monkeypatch.chdir(mvtec_tree)  # relative listed paths are relative to the current folder
    got = [s.path for s in image_samples([f"@{listing}", "./test/spot/000.png"])]
    assert got == [nested[0], Path("test/spot/000.png"), Path("test/spot/001.png")]  # each file once
    listing.write_text("test/good\nno/such.png\n")
    with pytest.raises(DataError, match=r"list.txt line 2: no/such.png: no such image file or folder"):
        image_samples([f"@{listing}"])
    with pytest.raises(DataError, match="missing.txt: no such list file"):
        image_samples(["@missing.txt"])


def test_holdout_split_is_seeded_and_keeps_two_for_the_fit():
    samples = [Sample(Path(f"{i}.png"), 0, "good") for i in range(10)]
    fit, held = split_holdout(samples, 0.3, seed=4)
    order = np.random.default_rng(4).permutation(10)
    assert sorted(s.path.name for s in held) == sorted(f"{i}.png" for i in order[:3])
    assert len(fit) == 7 and not set(fit) & set(held)
    assert split_holdout(samples, 0.3, seed=4) == (fit, held)
    assert split_holdout(samples[:2], 0.5, seed=0) == (samples[:2], [])
    assert len(split_holdout(samples[:3], 0.9, seed=0)[0]) == 2
