"""Decoding images and masks into batches (padim.io.images, padim.io.loading) and progress bars."""

from __future__ import annotations

import io
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from padim.errors import DataError, ImageError, OptionError
from padim.io import decoding, loading
from padim.io.datasets import Sample, mvtec_samples, train_samples
from padim.io.images import load_mask, preprocess
from padim.io.loading import as_batches, iter_batches
from padim.progress import phase, progress


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


def _one(path: Path, size, **kwargs):
    """The single batch of one sample."""
    (batch,) = iter_batches(
        [Sample(path, kwargs.pop("label", 0), "good", kwargs.pop("mask", None))], size, workers=0, **kwargs
    )
    return batch


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
    batch = _one(_save(tmp_path / "image.png", image), (16, 24))
    white = preprocess(Image.new("RGB", (30, 20), (255, 255, 255)), (16, 24))
    assert batch.images.dtype == np.float32 and batch.images.shape == (1, 3, 16, 24)
    np.testing.assert_allclose(batch.images, white, atol=1e-6)
    assert batch.sizes == [(30, 20)]


@pytest.mark.parametrize("kind", ["truncated", "text", "folder", "unreadable"])
def test_bad_image_raises_naming_the_file(tmp_path, kind, monkeypatch):
    path = tmp_path / "broken.png"
    if kind == "truncated":
        _truncated_png(path)
    elif kind == "text":
        path.write_text("this is not a PNG")
    elif kind == "folder":
        path.mkdir()
    else:  # chmod 0 does not stop root (CI runs as root): refuse the open itself
        _save(path, Image.new("RGB", (8, 8)))

        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied", str(path))

        monkeypatch.setattr("padim.io.images.open", refuse, raising=False)
        monkeypatch.setattr("padim.io.decoders.open", refuse, raising=False)
    with pytest.raises(ImageError, match="broken.png") as caught:
        _one(path, 16)
    assert "\n" not in str(caught.value)
    if kind == "unreadable":
        assert "permission denied" in str(caught.value)


def _folder_with_bad_files(folder: Path) -> list[Sample]:
    rng = np.random.default_rng(1)
    for i in range(4):
        _save(folder / f"good{i}.png", Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)))
    _truncated_png(folder / "good1_truncated.png")
    (folder / "good2_text.png").write_text("not an image")
    return train_samples(folder)  # sorted: good0, good1, good1_truncated, good2, good2_text, good3


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_files_skipped_or_raised(tmp_path, workers):
    samples = _folder_with_bad_files(tmp_path)
    skipped = {}
    batches = list(iter_batches(samples, 16, batch_size=2, workers=workers, skip_bad=True, skipped=skipped))
    assert [b.indices for b in batches] == [[0, 1], [3], [5]]
    assert [len(b.images) for b in batches] == [2, 1, 1]
    assert list(skipped) == [tmp_path / "good1_truncated.png", tmp_path / "good2_text.png"]
    assert all(path.name in reason for path, reason in skipped.items())
    with pytest.raises(ImageError, match="good1_truncated.png") as caught:
        list(iter_batches(samples, 16, batch_size=2, workers=workers))
    assert "\n" not in str(caught.value)


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
        batch = _one(image, 8, label=1, mask=mask_path, masks=True)
    assert batch.masks[0].dtype == np.uint8
    assert batch.masks[0].tolist() == [[0] * 4 + [1] * 4] * 8


def test_mask_of_matching_size_is_quiet_and_missing_mask_is_none(mvtec_tree):
    samples = mvtec_samples(mvtec_tree, "test")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (batch,) = iter_batches(samples, 32, batch_size=len(samples), masks=True)
    assert all(m is None for m, s in zip(batch.masks, samples) if s.label == 0)
    assert all(m.any() and set(np.unique(m)) == {0, 1} for m, s in zip(batch.masks, samples) if s.label == 1)


def test_broken_mask_names_the_mask_file(tmp_path):
    image = _save(tmp_path / "a.png", Image.new("RGB", (8, 8)))
    mask = tmp_path / "a_mask.png"
    mask.write_text("no")
    with pytest.raises(ImageError, match="a_mask.png"):
        _one(image, 8, label=1, mask=mask, masks=True)


# ------------------------------------------------------------------ batches


def test_workers_do_not_change_the_batches(mvtec_tree):
    samples = mvtec_samples(mvtec_tree, "test")
    serial = list(iter_batches(samples, 32, batch_size=3, workers=0, masks=True, keep_images=True))
    parallel = list(iter_batches(samples, 32, batch_size=3, workers=3, masks=True, keep_images=True))
    assert [b.indices for b in serial] == [[0, 1, 2], [3, 4, 5], [6]]
    assert len(serial) == len(parallel)
    for a, b in zip(serial, parallel):
        assert a.indices == b.indices and a.sizes == b.sizes == [(64, 64)] * len(a.indices)
        assert a.images.dtype == np.float32 and a.images.shape[1:] == (3, 32, 32)
        np.testing.assert_array_equal(a.images, b.images)
        assert all((x is None and y is None) or np.array_equal(x, y) for x, y in zip(a.masks, b.masks))
        assert [im.shape for im in a.originals] == [(64, 64, 3)] * len(a.indices)


def test_stopping_early_leaves_no_thread_running(mvtec_tree):
    import threading

    samples = mvtec_samples(mvtec_tree, "test") * 10
    batches = iter_batches(samples, 32, batch_size=2, workers=4)
    next(batches)
    batches.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("padim-decode")]


def test_every_input_form_gives_the_same_batches(mvtec_tree):
    paths = sorted((mvtec_tree / "test" / "good").iterdir())
    images = [Image.open(p) for p in paths]
    expected = preprocess(images, 32)
    for data in (paths, [str(p) for p in paths], mvtec_tree / "test" / "good", images):
        np.testing.assert_allclose(np.concatenate(list(as_batches(data, 32, batch_size=2))), expected, atol=1e-6)
    tensor = torch.from_numpy(expected)
    assert next(as_batches(tensor, 32)) is tensor
    assert np.array_equal(next(as_batches(tensor[0], 32)), expected[:1])
    loader = [{"image": tensor[:2]}, (tensor[2:], None)]
    assert [len(b) for b in as_batches(loader, 32)] == [2, 1]
    # A folder of good images: an MVTec category means its train/good.
    assert sum(len(b) for b in as_batches(mvtec_tree, 32, folder="good")) == 8


@pytest.mark.parametrize(
    "call, error, message",
    [
        (
            lambda s: iter_batches(s, 16, batch_size=0),
            OptionError,
            "batch_size must be an integer in 1..4096 or None, got 0",
        ),
        (
            lambda s: iter_batches(s, 16, workers=-1),
            OptionError,
            "workers must be an integer in 0..256 or None, got -1",
        ),
        (lambda s: iter_batches(s, (8, 8, 3)), OptionError, "image_size"),
        (lambda s: as_batches(s, 16, folder="test"), OptionError, "folder must be one of"),
        (lambda s: as_batches([], 16), DataError, "empty list"),
        (lambda s: as_batches(np.zeros((2, 16, 16, 3), np.float32), 16), OptionError, r"\(N, 3, H, W\)"),
        (lambda s: list(as_batches([np.zeros((2, 3, 8, 8), np.uint8)], 16)), OptionError, "float batch"),
    ],
)
def test_argument_errors_are_raised_at_the_call(mvtec_tree, call, error, message):
    with pytest.raises(error, match=message):
        call(mvtec_samples(mvtec_tree, "train"))


# ------------------------------------------------------------------ progress


def test_progress_is_silent_off_a_terminal(capsys):
    assert list(progress(range(4), desc="x")) == [0, 1, 2, 3]  # stderr is captured: not a tty
    assert list(progress(iter("ab"), total=2, quiet=True)) == ["a", "b"]
    assert list(progress(range(4), desc="x", unit="img")) == [0, 1, 2, 3]  # faster than a log line
    assert capsys.readouterr().err == ""


def test_image_progress_off_a_terminal_is_a_line_now_and_then(capsys, monkeypatch):
    monkeypatch.setattr("padim.progress.LOG_INTERVAL", 0.0)
    bar = progress(total=4, desc="predict", unit="img")
    bar.update(1)
    bar.update(3)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in lines] == ["predict: 1/4 images", "predict: 4/4 images"]
    assert "images/s" in lines[0] and lines[0].endswith("left")


def test_a_long_phase_is_named(capsys):
    import time

    with phase("opening model.padim", after=0.01):
        time.sleep(0.3)
    with phase("quick", after=5.0):
        pass
    assert capsys.readouterr().err == "padim: opening model.padim ...\n"


def test_pictures_are_reduced_and_big_images_decode_one_at_a_time(tmp_path, monkeypatch):
    import threading

    paths = [_save(tmp_path / f"{i}.png", Image.new("RGB", (300, 200), (i, 0, 0))) for i in range(6)]
    held, most = [0], [0]
    lock = threading.Lock()
    real = decoding.decode_rgb

    def counting(path):
        with lock:
            held[0] += 1
            most[0] = max(most[0], held[0])
        try:
            time.sleep(0.02)
            return real(path)
        finally:
            with lock:
                held[0] -= 1

    monkeypatch.setattr(decoding, "decode_rgb", counting)
    monkeypatch.setattr(loading, "DECODE_BUDGET_PIXELS", 100_000)  # one 300x200 image fits, two do not
    samples = [Sample(p, 0, "good") for p in paths]
    (batch,) = iter_batches(samples, 16, batch_size=6, workers=3, keep_images=True, max_side=60)
    assert most[0] == 1 and [im.shape for im in batch.originals] == [(40, 60, 3)] * 6
    assert batch.sizes == [(300, 200)] * 6
    np.testing.assert_array_equal(batch.images, preprocess([Image.open(p) for p in paths], 16))
    monkeypatch.setattr(loading, "DECODE_BUDGET_PIXELS", 10**9)
    most[0] = 0
    list(iter_batches(samples, 16, batch_size=6, workers=3))
    assert most[0] > 1
