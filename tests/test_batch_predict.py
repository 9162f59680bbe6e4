"""The batch job (padim.jobs.predict, padim.outputs.rows): rows streamed in order, regions at the image's size, overlays, errors."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from padim.errors import DataError, ImageError, OptionError
from padim.io.files import LineAppender, write_bytes
from padim.io.inputs import image_samples
from padim.jobs.predict import predict_files
from padim.outputs.rows import CSV_COLUMNS, overlay_names
from padim.runtime.predictor import Prediction
from padim.scoring.calibration import Calibration
from padim.scoring.regions import map_at_size, region_boxes, region_extent, region_mask, union_box


@pytest.fixture(scope="module")
def predictor(tiny_model):
    return tiny_model.predictor()


@pytest.fixture()
def images(mvtec_tree, tmp_path) -> Path:
    """A copy of the tiny test set in a folder per defect type, with two images enlarged (not the model's size)."""
    root = tmp_path / "images"
    shutil.copytree(mvtec_tree / "test", root)
    for name, size in (("scratch/000.png", (150, 90)), ("good/001.png", (40, 70))):
        Image.open(root / name).resize(size).save(root / name)
    return root


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def reference_region(anomaly_map, size, calibration):
    """The region by :mod:`padim.scoring.regions` alone: the map at the image's size, the pixel rule, every region's box."""
    return union_box(region_boxes(region_mask(map_at_size(anomaly_map, size), calibration)))


# ------------------------------------------------------------------ regions


@pytest.mark.parametrize("size", [(64, 64), (150, 90), (40, 70), (1000, 3)])
@pytest.mark.parametrize("strip", [None, 500])
def test_region_extent_is_the_union_of_the_regions(size, strip, monkeypatch):
    if strip:  # strips of a few rows, as for a very large image
        monkeypatch.setattr("padim.scoring.regions.STRIP_PIXELS", strip)
    rng = np.random.default_rng(sum(size))
    smooth = np.asarray(Image.fromarray(rng.random((8, 8)).astype(np.float32)).resize((64, 64), Image.BICUBIC))
    for threshold in (0.3, 0.6, 0.9, 2.0):
        calibration = Calibration(threshold=threshold, center=0.0)
        assert region_extent(smooth, size, calibration) == reference_region(smooth, size, calibration), threshold
    assert region_extent(smooth, size, None) is None
    with_nan = smooth.copy()
    with_nan[3, 5] = np.nan  # a NaN pixel is defective (fail closed)
    calibration = Calibration(threshold=2.0, center=0.0)
    assert region_extent(with_nan, size, calibration) == reference_region(with_nan, size, calibration) is not None


# ------------------------------------------------------------------ names


def test_overlay_names_mirror_the_folders_below_the_common_one():
    assert overlay_names([Path("data/a.png")], ".jpg") == ["a.jpg"]
    got = overlay_names([Path("d/x/1.png"), Path("d/y/1.png"), Path("d/y/sub/2.bmp")], ".png")
    assert got == ["x/1.png", "y/1.png", "y/sub/2.png"]
    # Same stem, two suffixes, one folder: both keep their suffix, nothing is overwritten.
    got = overlay_names([Path("d/3.png"), Path("d/3.TIF"), Path("d/4.png")], ".jpg")
    assert got == ["3.png.jpg", "3.TIF.jpg", "4.jpg"] and len(set(got)) == 3


# ------------------------------------------------------------------ the job


def halfway(predictor, samples):
    """The predictor with its threshold at the median score: some images normal, some anomalous."""
    return predictor.with_threshold(float(np.median(predictor.predict([s.path for s in samples]).score)))


def test_rows_and_overlays(predictor, images, tmp_path):
    samples = image_samples(images, recursive=True)
    predictor = halfway(predictor, samples)
    out = tmp_path / "out"
    summary = predict_files(predictor, samples, out, overlays="all", batch_size=3, workers=2)
    rows = read_rows(out / "predictions.csv")
    assert tuple(rows[0]) == CSV_COLUMNS and [r["path"] for r in rows] == [str(s.path) for s in samples]
    expected = predictor.predict([s.path for s in samples])
    np.testing.assert_allclose([float(r["score"]) for r in rows], expected.score, rtol=1e-5)
    assert [r["label"] for r in rows] == ["anomalous" if x else "normal" for x in expected.label]
    assert summary.n_images == len(rows) == 7 and summary.n_overlays == 7
    assert 0 < summary.n_anomalous < 7 and any(r["region_area"] for r in rows)
    for row, sample, anomaly_map in zip(rows, samples, expected.anomaly_map):
        with Image.open(sample.path) as image:
            size = image.size
        assert (int(row["width"]), int(row["height"])) == size
        box = reference_region(anomaly_map, size, predictor.calibration)
        got = [row[f"region_{k}"] for k in ("x0", "y0", "x1", "y1", "area")]
        assert got == ([""] * 5 if box is None else [str(v) for v in (box.x0, box.y0, box.x1, box.y1, box.area)])
        # The picture mirrors the image's path below the common folder, at the image's own
        # width, with the colour bar under it.
        relative = sample.path.relative_to(images).with_suffix(".jpg").as_posix()
        assert row["overlay"] == f"overlays/{relative}"
        with Image.open(out / row["overlay"]) as picture:
            assert picture.format == "JPEG" and picture.width == size[0] and picture.height > size[1]
    assert not list(out.rglob(".*.tmp"))


def test_anomalous_only_and_no_overlays(predictor, images, tmp_path):
    samples = image_samples(images, recursive=True)
    predictor = halfway(predictor, samples)
    predict_files(predictor, samples, tmp_path / "a", overlays="anomalous", overlay_format="png", workers=0)
    rows = read_rows(tmp_path / "a" / "predictions.csv")
    assert {r["label"] for r in rows} == {"anomalous", "normal"}
    for row in rows:
        assert bool(row["overlay"]) == (row["label"] == "anomalous")
        assert not row["overlay"] or (tmp_path / "a" / row["overlay"]).suffix == ".png"
    assert len(list((tmp_path / "a" / "overlays").rglob("*.png"))) == sum(r["label"] == "anomalous" for r in rows)
    predict_files(predictor, samples, tmp_path / "n", overlays="none")
    assert not (tmp_path / "n" / "overlays").exists()
    assert [r["overlay"] for r in read_rows(tmp_path / "n" / "predictions.csv")] == [""] * len(rows)


@pytest.mark.parametrize("workers", [0, 2])
def test_each_row_is_in_the_file_when_its_image_is_finished(predictor, images, tmp_path, workers):
    csv_path = tmp_path / "out" / "predictions.csv"
    seen = []

    def on_row(row):
        seen.append(row)
        lines = csv_path.read_text().splitlines()  # another reader, while the job runs
        assert len(lines) == 1 + len(seen) and lines[-1] == row.csv_line().rstrip("\n")

    samples = image_samples(images, recursive=True)
    predict_files(predictor, samples, tmp_path / "out", batch_size=2, workers=workers, on_row=on_row)
    assert [row.path for row in seen] == [s.path for s in samples]


class Interrupting:
    """A predictor whose ``predict_batch`` is interrupted (Ctrl-C) on call ``at``."""

    def __init__(self, predictor, at: int) -> None:
        self.predictor, self.at, self.calls = predictor, at, 0
        self.image_size, self.calibration = predictor.image_size, predictor.calibration

    def describe(self) -> str:
        return self.predictor.describe()

    def predict_batch(self, images):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.predictor.predict_batch(images)


@pytest.mark.parametrize("workers", [0, 2])
def test_an_interrupted_job_keeps_a_row_for_every_finished_image(predictor, images, tmp_path, workers):
    samples = image_samples(images, recursive=True)
    predict_files(predictor, samples, tmp_path / "full", batch_size=2, workers=workers)
    full = (tmp_path / "full" / "predictions.csv").read_text().splitlines()
    with pytest.raises(KeyboardInterrupt):  # two batches of 2 finished, the third interrupted
        predict_files(Interrupting(predictor, at=3), samples, tmp_path / "cut", batch_size=2, workers=workers)
    cut = (tmp_path / "cut" / "predictions.csv").read_text().splitlines()
    assert cut == full[: 1 + 4]
    pictures = sorted(p.relative_to(tmp_path / "cut").as_posix() for p in (tmp_path / "cut").rglob("*.jpg"))
    assert pictures == sorted(r["overlay"] for r in read_rows(tmp_path / "cut" / "predictions.csv") if r["overlay"])
    assert not list((tmp_path / "cut").rglob(".*.tmp"))


def test_an_unreadable_image_stops_the_job_with_the_rows_before_it(predictor, images, tmp_path):
    (images / "good" / "001.png").write_text("not an image")
    samples = image_samples(images, recursive=True)
    bad = [s.path.name for s in samples].index("001.png")
    with pytest.raises(ImageError, match="001.png"):
        predict_files(predictor, samples, tmp_path / "out", batch_size=1, workers=0)
    assert len(read_rows(tmp_path / "out" / "predictions.csv")) == bad
    summary = predict_files(predictor, samples, tmp_path / "skip", skip_bad=True)
    assert list(summary.skipped) == [samples[bad].path] and summary.n_images == len(samples) - 1


class NonFinite:
    """A predictor that gives image ``index`` of every batch the score ``value``."""

    def __init__(self, predictor, value: float, index: int = 1) -> None:
        self.predictor, self.value, self.index = predictor, value, index
        self.image_size, self.calibration = predictor.image_size, predictor.calibration

    def describe(self) -> str:
        return self.predictor.describe()

    def predict_batch(self, images):
        p = self.predictor.predict_batch(images)
        score, maps, normalized = p.score.copy(), p.anomaly_map.copy(), p.normalized_score.copy()
        score[self.index], normalized[self.index] = self.value, np.nan
        maps[self.index] = self.value
        label = p.label.copy()
        label[self.index] = self.value > p.threshold  # -inf would be "normal" by the graph's rule
        return Prediction(maps, score, normalized, label, p.threshold)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_a_score_that_is_not_a_finite_number_is_an_error_row(predictor, images, tmp_path, value):
    samples = image_samples(images / "good")
    summary = predict_files(NonFinite(predictor, value), samples, tmp_path / "out", overlays="all", batch_size=8)
    rows = read_rows(tmp_path / "out" / "predictions.csv")
    assert [r["label"] for r in rows].count("error") == 1 and rows[1]["label"] == "error"
    assert rows[1]["normalized_score"] == "" and rows[1]["overlay"] == "" and rows[1]["region_area"] == ""
    assert summary.errors == [samples[1].path] and "normal" not in rows[1]["label"]


def test_output_folder_mistakes(predictor, images, tmp_path):
    samples = image_samples(images / "good")
    (tmp_path / "file").write_text("x")
    with pytest.raises(Exception, match="not a folder"):
        predict_files(predictor, samples, tmp_path / "file")
    with pytest.raises(OptionError, match="--overlays must be one of"):
        predict_files(predictor, samples, tmp_path / "o", overlays="some")
    with pytest.raises(OptionError, match="--overlay-format"):
        predict_files(predictor, samples, tmp_path / "o", overlay_format="gif")
    # The job's own pictures are never read back as inputs (an output folder inside the input).
    first = predict_files(predictor, image_samples(images, recursive=True), images / "out", overlays="all")
    again = predict_files(predictor, image_samples(images, recursive=True), images / "out", overlays="all")
    assert again.left_out == first.n_images and again.n_images == first.n_images
    with pytest.raises(DataError, match="inside the output folder"):
        predict_files(predictor, image_samples(images / "out", recursive=True), images / "out")


# ------------------------------------------------------------------ files


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_files_follow_the_umask(predictor, images, tmp_path, umask):
    previous = os.umask(umask)
    try:
        predict_files(predictor, image_samples(images / "scratch"), tmp_path / "out", overlays="all", workers=0)
        write_bytes(tmp_path / "model.bin", b"x")
        with LineAppender(tmp_path / "log.csv", "a\n") as log:
            log.append("1\n")
    finally:
        os.umask(previous)
    files = [tmp_path / "model.bin", tmp_path / "log.csv", *(tmp_path / "out").rglob("*.*")]
    assert len(files) > 4
    for path in files:
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path


def test_line_appender_takes_only_whole_lines(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("old content that is replaced\n")
    with LineAppender(path, "h\n") as lines:
        with pytest.raises(ValueError, match="whole lines"):
            lines.append("no newline")
        lines.append("1\n2\n")
    assert path.read_text() == "h\n1\n2\n"
