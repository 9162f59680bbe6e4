"""Parts that move (padim.align): registration against OpenCV and scikit-image, known moves recovered,
moved parts scored like unmoved ones, every path giving the same scores, untrusted parts never normal."""

from __future__ import annotations

import csv
import shutil
from dataclasses import replace

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage
from skimage.registration import phase_cross_correlation

from padim.align import warps
from padim.align.reference import Reference, build, register
from padim.align.registration import shift as phase_shift
from padim.align.registration import spectrum
from padim.cli.main import main
from padim.errors import ModelFileError
from padim.io.images import preprocess
from padim.model.padim import Padim
from padim.modelfile.info import model_info
from padim.modelfile.padim_file import read_model_file, write_model_file
from padim.runtime.opening import open_model

from support import ALIGNED


def smooth_image(size: int, seed: int = 0) -> np.ndarray:
    """A non-periodic, smooth random gray image (no pattern that repeats: one right answer)."""
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.random((size, size)).astype(np.float32), (0, 0), size / 40)


def fourier_shift(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """``image`` with its content moved by (dx, dy), exactly (periodic), in the Fourier domain."""
    fy = np.fft.fftfreq(image.shape[0])[:, None]
    fx = np.fft.fftfreq(image.shape[1])[None, :]
    return np.real(np.fft.ifft2(np.fft.fft2(image) * np.exp(-2j * np.pi * (fx * dx + fy * dy)))).astype(np.float32)


def test_phase_correlation_agrees_with_opencv_and_scikit_image():
    reference = smooth_image(128)
    rng = np.random.default_rng(1)
    for _ in range(10):
        dx, dy = rng.uniform(-9, 9, 2)
        moved = fourier_shift(reference, dx, dy)
        found_x, found_y, peak = phase_shift(spectrum(reference), moved)
        assert abs(found_x - dx) < 0.2 and abs(found_y - dy) < 0.2 and peak > 0
        (sk_y, sk_x), _, _ = phase_cross_correlation(moved, reference, upsample_factor=20)
        assert abs(found_x - sk_x) < 0.2 and abs(found_y - sk_y) < 0.2
        # OpenCV refines its peak by a weighted centroid, within about half a pixel of the truth here.
        (cv_x, cv_y), _ = cv2.phaseCorrelate(reference, moved, cv2.createHanningWindow((128, 128), cv2.CV_32F))
        assert abs(found_x - cv_x) < 1.0 and abs(found_y - cv_y) < 1.0


@pytest.mark.parametrize("pose", [(3.25, -1.5, 0.0), (-6.0, 2.75, 2.5), (0.0, 0.0, -4.0)])
def test_warps_are_bilinear_with_the_border_replicated(pose):
    """Against SciPy's exact bilinear sampling (edges repeated) at the pose's points, and OpenCV's warp (1/32 px steps)."""
    image = smooth_image(64, seed=3)[None] * np.array([1.0, 0.5, 2.0], np.float32)[:, None, None]
    found = warps.to_reference(image[None], np.array([pose]))[0]
    matrix = warps.matrix(np.array(pose), (64, 64))
    ys, xs = np.mgrid[0:64, 0:64]
    landing = matrix @ np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)])
    for channel in range(3):
        exact = ndimage.map_coordinates(image[channel].astype(np.float64), landing[::-1], order=1, mode="nearest")
        assert np.abs(found[channel] - exact.reshape(64, 64)).max() < 1e-5 * np.abs(exact).max()
        opencv = cv2.warpAffine(image[channel], matrix, (64, 64), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
        assert np.abs(found[channel] - opencv).max() < 2e-2 * np.abs(opencv).max()
    back = warps.to_input(found[None, 0], np.array([pose]))[0]
    landing = warps.matrix(warps.inverse(np.array(pose)), (64, 64)) @ np.stack(
        [xs.ravel(), ys.ravel(), np.ones(xs.size)]
    )
    exact = ndimage.map_coordinates(found[0].astype(np.float64), landing[::-1], order=1, mode="nearest")
    assert np.abs(back - exact.reshape(64, 64)).max() < 1e-5 * np.abs(exact).max()


def batch_of(gray: np.ndarray) -> np.ndarray:
    """A gray image in [0, 1] as a pre-processed batch (N=1, 3, H, W), as the model's input would be."""
    rgb = np.repeat((np.clip(gray, 0, 1) * 255).astype(np.uint8)[:, :, None], 3, axis=2)
    return preprocess(Image.fromarray(rgb), gray.shape)


@pytest.mark.parametrize("motion", ["translate", "rigid"])
def test_a_known_move_is_recovered_to_half_a_pixel_and_a_fifth_of_a_degree(motion):
    """At the default working size (256 px): each move applied to a good image, then registered back."""
    base = smooth_image(256, seed=5)
    base = (base - base.min()) / (base.max() - base.min())
    reference = replace(build([batch_of(base)], (256, 256), motion, rounds=1), threshold=0.9)
    rng = np.random.default_rng(2)
    for _ in range(6):
        pose = np.array([*rng.uniform(-12, 12, 2), rng.uniform(-3, 3) if motion == "rigid" else 0.0])
        # The part moved by ``pose``: the reference's point p is at pose(p) in the new picture (OpenCV maps src -> dst).
        moved = cv2.warpAffine(base, warps.matrix(pose, (256, 256)), (256, 256), flags=cv2.INTER_CUBIC,
                               borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
        found = register(reference, batch_of(moved))
        assert np.abs(found.poses[0, :2] - pose[:2]).max() <= 0.5, (found.poses[0], pose)
        assert abs(found.poses[0, 2] - pose[2]) <= 0.2, (found.poses[0], pose)
        assert found.trusted[0] and found.confidence[0] > 0.9


def part(rng: np.random.Generator, dx: float = 0.0, dy: float = 0.0, defect: bool = False) -> Image.Image:
    """A 64-px photo of a part (not round, not periodic: one right registration) at (dx, dy) off its place."""
    image = Image.new("RGB", (64, 64), (40, 42, 46))
    draw = ImageDraw.Draw(image)
    cx, cy = 32 + dx, 31 + dy
    draw.ellipse((cx - 19, cy - 12, cx + 19, cy + 12), fill=(176, 150, 92))
    draw.rectangle((cx - 12, cy - 4, cx + 2, cy + 3), fill=(96, 80, 60))
    draw.ellipse((cx + 8, cy - 7, cx + 14, cy - 1), fill=(230, 220, 200))
    if defect:
        x, y = rng.uniform(-10, 10, 2)
        draw.ellipse((cx + x - 3, cy + y - 3, cx + x + 3, cy + y + 3), fill=(20, 160, 40))
    noisy = np.asarray(image, np.float32) + rng.normal(0, 4, (64, 64, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """An MVTec-style category of such parts, all in their place: train/good 12, test/good 3, test/spot 3."""
    root = tmp_path_factory.mktemp("parts") / "part"
    rng = np.random.default_rng(0)
    for folder, count, defect in (("train/good", 12, False), ("test/good", 3, False), ("test/spot", 3, True)):
        (root / folder).mkdir(parents=True)
        for i in range(count):
            part(rng, *rng.uniform(-0.5, 0.5, 2), defect=defect).save(root / folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def aligned_model(parts, tmp_path_factory):
    folder = tmp_path_factory.mktemp("aligned")
    model = Padim(**ALIGNED).fit(parts)
    model.save(folder / "m.padim")
    from padim.model.export import export_onnx

    export_onnx(model, folder / "m.onnx")
    return model, folder


def moved_copy(path, folder, dx: int, dy: int):
    """The image at ``path`` with its content moved by whole pixels (edges repeated), saved in ``folder``."""
    image = np.asarray(Image.open(path).convert("RGB"))
    moved = cv2.warpAffine(
        image, np.float32([[1, 0, dx], [0, 1, dy]]), image.shape[1::-1], borderMode=cv2.BORDER_REPLICATE
    )
    target = folder / f"moved_{path.name}"
    Image.fromarray(moved).save(target)
    return target


def test_a_good_part_and_its_moved_copy_score_alike_only_with_alignment(aligned_model, parts, tmp_path):
    model, _ = aligned_model
    good = sorted((parts / "test" / "good").iterdir())
    moved = [moved_copy(p, tmp_path, 5, -4) for p in good]  # 8% of the 64-px image's side
    plain = Padim(**{**ALIGNED, "align": "none"}).fit(parts)
    scores = {name: model.predict(images).score for name, images in (("good", good), ("moved", moved),
                                                                     ("spot", sorted((parts / "test" / "spot").iterdir())))}  # fmt: skip
    with_alignment = np.abs(scores["moved"] - scores["good"])
    without = np.abs(plain.predict(moved).score - plain.predict(good).score)
    # The moved copies score like the originals, within 15% of the gap between good and defective parts...
    gap = scores["spot"].min() - max(scores["good"].max(), scores["moved"].max())
    assert gap > 0 and with_alignment.max() <= 0.15 * (scores["spot"].min() - scores["good"].max()), scores
    # ...and a tenth of what the same move costs a model that does not align.
    assert with_alignment.mean() < 0.1 * without.mean(), (with_alignment, without)
    found = model.predict(moved).registration  # the parts themselves sit within half a pixel of their place
    assert np.abs(found.poses[:, :2] - [5, -4]).max() < 1.25 and found.trusted.all(), found


def test_torch_onnxruntime_the_padim_file_and_the_export_give_the_same_scores(aligned_model, parts, tmp_path):
    model, folder = aligned_model
    images = sorted((parts / "test" / "spot").iterdir()) + sorted((parts / "test" / "good").iterdir())
    images += [moved_copy(p, tmp_path, -3, 2) for p in images[:2]]
    reference = Padim.load(folder / "m.padim", backend="torch").predict(images)
    for predictor in (open_model(folder / "m.padim"), open_model(folder / "m.onnx")):
        found = predictor.predict(images)
        assert np.abs(found.score - reference.score).max() <= 1e-5 * np.abs(reference.score).max()
        assert np.abs(found.anomaly_map - reference.anomaly_map).max() <= 1e-5 * np.abs(reference.anomaly_map).max()
        assert np.array_equal(found.label, reference.label)
        assert np.array_equal(found.registration.poses, reference.registration.poses)


def test_a_part_that_cannot_be_aligned_is_never_normal_and_its_row_says_so(aligned_model, parts, tmp_path):
    _, folder = aligned_model
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(sorted((parts / "test" / "good").iterdir())[0], inputs / "good.png")
    Image.new("RGB", (64, 64), (128, 128, 128)).save(inputs / "empty.png")  # an empty frame
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(inputs / "noise.png")
    for model in ("m.padim", "m.onnx"):
        out = tmp_path / model
        assert main(["predict", str(folder / model), str(inputs), "-o", str(out), "--quiet", "--workers", "0"]) == 0
        rows = {r["path"].rsplit("/", 1)[-1]: r for r in csv.DictReader(open(out / "predictions.csv"))}
        assert rows["good.png"]["aligned"] == "true"  # (its label is the score's: a tiny set's threshold is strict)
        for name in ("empty.png", "noise.png"):
            assert rows[name]["aligned"] == "false" and rows[name]["label"] == "anomalous", rows[name]
        assert all(r["dx"] and r["dy"] and r["angle"] for r in rows.values())
    # An untrusted part is judged where it is: its map is the graph's on the image as given, not moved.
    from padim.runtime.opening import open_model

    predictor = open_model(folder / "m.onnx")
    for name in ("empty.png", "noise.png"):
        x = preprocess(Image.open(inputs / name).convert("RGB"), predictor.image_size)[0][None]
        found = predictor.predict_batch(x)
        assert not found.registration.trusted[0]
        raw = predictor.run(images=x, threshold=np.float32(predictor.calibration.threshold),
                            scale=np.float32(predictor.calibration.scale))["anomaly_map"]  # fmt: skip
        np.testing.assert_allclose(found.anomaly_map, np.asarray(raw), rtol=1e-6, atol=1e-6)


def test_the_alignment_is_in_the_model_file_and_shown_by_info(aligned_model, tmp_path):
    model, folder = aligned_model
    loaded = Padim.load(folder / "m.padim")
    assert loaded.alignment_.motion == "translate" and loaded.align == "translate"
    assert np.array_equal(loaded.alignment_.gray, model.alignment_.gray)
    assert loaded.alignment_.threshold == model.alignment_.threshold
    for path in (folder / "m.padim", folder / "m.onnx"):
        info = model_info(path)
        assert info["alignment"]["motion"] == "translate" and info["config"]["align"] == "translate"
    tensors, meta = read_model_file(folder / "m.padim")
    broken = tmp_path / "broken.padim"
    write_model_file(broken, tensors, {k: v for k, v in meta.items() if k not in ("alignment", "tensor_sha256",
                                                                                   "format_version")})  # fmt: skip
    with pytest.raises(ModelFileError, match="align 'translate' without an alignment record"):
        Padim.load(broken)
    assert Reference.from_dict(meta["alignment"]).motion == "translate"
