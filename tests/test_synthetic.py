"""Tests for padim.io.synthetic: layout, determinism and defects that match their masks."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from padim.io.datasets import mvtec_samples
from padim.io.synthetic import DEFECT_TYPES, add_defect, make_demo_dataset, weave_texture


def _files(category):
    return {str(p.relative_to(category)): p.read_bytes() for p in sorted(category.rglob("*")) if p.is_file()}


def test_layout_and_counts(mvtec_tree):
    assert mvtec_tree.name == "weave"
    assert len(list((mvtec_tree / "train" / "good").glob("*.png"))) == 8
    test = mvtec_samples(mvtec_tree, "test")
    assert [s.defect_type for s in test] == ["good"] * 3 + ["scratch"] * 2 + ["spot"] * 2
    assert all(s.mask_path is not None and s.mask_path.is_file() for s in test if s.label == 1)
    for sample in test:
        with Image.open(sample.path) as image:
            assert image.mode == "RGB" and image.size == (64, 64)
    leftovers = [p.name for p in mvtec_tree.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []  # atomic writes leave no temporary files behind


def test_deterministic_for_a_seed(tmp_path):
    def build(folder, seed, n_train=3):
        return _files(make_demo_dataset(tmp_path / folder, n_train, 1, 2, size=32, seed=seed))

    first, again, other = build("a", 7), build("b", 7), build("c", 8)
    assert first == again
    assert first.keys() == other.keys() and first != other
    # An image does not depend on how many images the other folders hold.
    more = build("d", 7, n_train=5)
    assert {name: more[name] for name in first} == first


def test_non_square_size(tmp_path):
    category = make_demo_dataset(tmp_path, 1, 0, 2, size=(32, 48))
    for path in category.rglob("*.png"):
        with Image.open(path) as image:
            assert image.size == (48, 32)


@pytest.mark.parametrize("defect_type", DEFECT_TYPES)
def test_defect_pixels_differ_exactly_inside_the_mask(defect_type):
    for seed in range(10):
        rng = np.random.default_rng(seed)
        texture = weave_texture(rng, 128)
        image, mask = add_defect(texture, defect_type, rng)
        width_fraction = np.ptp(np.nonzero(mask)[1]) / 128
        assert 0.05 <= width_fraction <= 0.6  # large enough for PaDiM at 128 px, still local
        assert np.array_equal(image[~mask], texture[~mask])
        # Every painted pixel is far from the cloth under it (five times the noise sigma of 0.02).
        assert np.abs(image[mask] - texture[mask]).max(axis=-1).min() > 0.1


def test_written_defects_stand_out_from_good_images(mvtec_tree):
    paths = sorted((mvtec_tree / "train" / "good").glob("*.png"))
    good = np.stack([np.asarray(Image.open(p)) for p in paths])
    low, high = np.percentile(good.reshape(-1, 3), [0.5, 99.5], axis=0)
    for sample in mvtec_samples(mvtec_tree, "test"):
        if sample.label == 0:
            continue
        image = np.asarray(Image.open(sample.path))
        mask = np.asarray(Image.open(sample.mask_path)) > 0
        unusual = ((image < low) | (image > high)).any(axis=-1)
        assert mask.any()
        assert unusual[mask].mean() > 0.9, sample.path  # the mask covers the drawn defect
        assert unusual[~mask].mean() < 0.1, sample.path  # and little else looks unusual


def test_default_sizes_are_fast(tmp_path):
    start = time.perf_counter()
    category = make_demo_dataset(tmp_path)
    assert time.perf_counter() - start < 3.0
    assert len(list(category.rglob("*.png"))) == 60 + 10 + 20 + 20


def test_existing_folder_needs_overwrite(tmp_path):
    category = make_demo_dataset(tmp_path, 2, 0, 0, size=16)
    with pytest.raises(FileExistsError, match="weave.*overwrite=True"):
        make_demo_dataset(tmp_path, 1, 0, 0, size=16)
    make_demo_dataset(tmp_path, 1, 0, 0, size=16, overwrite=True)
    assert [p.name for p in (category / "train" / "good").iterdir()] == ["000.png"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_train": 0}, "n_train must be an integer >= 1, got 0"),
        ({"n_test_defect": -1}, "n_test_defect must be an integer >= 0, got -1"),
        ({"size": 8}, "size must be at least 16 px, got 8"),
    ],
)
def test_argument_errors(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_demo_dataset(tmp_path, **kwargs)


def test_unknown_defect_type():
    with pytest.raises(ValueError, match="defect_type must be one of .*'crack'"):
        add_defect(np.zeros((32, 32, 3)), "crack", np.random.default_rng(0))
