"""The working size: chosen from the training images' aspect ratio, saved, and used everywhere at any shape."""

import numpy as np
import pytest
from PIL import Image

from padim.errors import OptionError
from padim.io.synthetic import make_demo_dataset
from padim.model.export import export_onnx
from padim.model.padim import Padim
from padim.model.working_size import SPREAD, from_sizes, header_sizes, round_to, working_size
from padim.runtime.opening import open_model

from support import TINY


def test_header_sizes_read_headers_only_and_skip_unreadable_files(tmp_path):
    Image.new("RGB", (300, 40)).save(tmp_path / "wide.png")
    data = (tmp_path / "wide.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])  # the pixels are cut, the header is whole
    (tmp_path / "text.png").write_text("not an image")
    paths = [tmp_path / name for name in ("wide.png", "truncated.png", "text.png", "missing.png")]
    assert header_sizes(paths) == [(300, 40), (300, 40)]
    assert len(header_sizes([tmp_path / "wide.png"] * 10, limit=3)) == 3  # evenly spaced, at most the limit


@pytest.mark.parametrize(
    "sizes, expected",
    [
        ([(2048, 110)] * 5, (256, round_to(256 * 2048 / 110, 16))),  # landscape: the width follows
        ([(110, 2048)] * 5, (round_to(256 * 2048 / 110, 16), 256)),  # portrait: the height follows
        ([(900, 900)] * 3, (256, 256)),
        ([(640, 480), (650, 480), (600, 480)], (256, round_to(256 * 640 / 480, 16))),  # the median ratio
        ([(640, 480)] * 9 + [(480, 640)], (256, round_to(256 * 640 / 480, 16))),  # one outlier does not count
    ],
)
def test_short_side_is_image_size_and_the_long_side_follows_the_median_aspect_ratio(sizes, expected):
    size, reason = from_sizes(sizes, 256, 16)
    assert size == expected and "median aspect ratio" in reason
    assert size[0] % 16 == 0 and size[1] % 16 == 0


def test_widely_varying_aspect_ratios_give_a_square():
    ratios = np.linspace(1.0, SPREAD * 1.2, 10)
    size, reason = from_sizes([(int(480 * r), 480) for r in ratios], 200, 16)
    assert size == (200, 200) and reason.startswith("square")
    assert from_sizes([], 200, 16)[0] == (200, 200)


def test_an_explicit_height_and_width_wins_and_arrays_give_a_square(tmp_path):
    paths = [tmp_path / "a.png"]
    Image.new("RGB", (300, 100)).save(paths[0])
    assert working_size((96, 48), paths, 16)[0] == (96, 48)
    assert working_size(64, None, 16)[0] == (64, 64)
    assert working_size(64, paths, 16)[0] == (64, 192)


@pytest.fixture(scope="module")
def wide_tree(tmp_path_factory):
    """An MVTec-style category of 48 x 96 images (height x width)."""
    return make_demo_dataset(tmp_path_factory.mktemp("wide"), n_train=6, n_test_good=2, n_test_defect=2, size=(48, 96))


@pytest.fixture(scope="module")
def wide_model(wide_tree):
    return Padim(**dict(TINY, image_size=48)).fit(wide_tree)


@pytest.mark.slow
def test_a_non_square_model_predicts_evaluates_saves_and_exports(tmp_path, wide_tree, wide_model):
    """Working size 48 x 96 from the data: kept in the file, the same maps from .padim and .onnx."""
    from padim.eval.evaluation import evaluate_model

    assert wide_model.image_size_ == (48, 96) and wide_model.feature_size_ == (12, 24)
    images = sorted((wide_tree / "test").glob("*/*.png"))
    expected = wide_model.predict(images)
    assert expected.anomaly_map.shape == (len(images), 48, 96)
    loaded = open_model(wide_model.save(tmp_path / "wide.padim"))
    exported = open_model(export_onnx(wide_model, tmp_path / "wide.onnx"))
    for predictor in (loaded, exported):
        assert predictor.image_size == (48, 96)
        got = predictor.predict(images)
        assert np.abs(got.anomaly_map - expected.anomaly_map).max() <= 1e-4 * np.abs(expected.anomaly_map).max()
        assert got.label.tolist() == expected.label.tolist()
    evaluation = evaluate_model(exported, wide_tree)
    assert evaluation.maps.shape[1:] == (48, 96) and evaluation.metrics["overall"]["pixel_auroc"] is not None


@pytest.mark.slow
def test_the_command_keeps_the_aspect_ratio_unless_given_height_and_width(tmp_path, wide_tree, capsys):
    from padim.cli.main import main

    base = ["--backbone", "resnet18", "--random-weights", "--n-features", "16"]
    assert main(["fit", str(wide_tree), "-o", str(tmp_path / "a.padim"), "--image-size", "48", *base]) == 0
    assert "working size 48x96" in capsys.readouterr().err
    assert open_model(tmp_path / "a.padim").image_size == (48, 96)
    assert (
        main(["fit", str(wide_tree), "-o", str(tmp_path / "b.padim"), "--image-size", "64x64", "--quiet", *base]) == 0
    )
    assert open_model(tmp_path / "b.padim").image_size == (64, 64)


def test_a_grid_stride_that_does_not_divide_the_working_size_is_refused(wide_tree):
    with pytest.raises(OptionError, match="multiple of grid_stride=32"):
        Padim(**dict(TINY, image_size=(48, 96), grid_stride=32)).fit(wide_tree)
    with pytest.raises(OptionError, match="grid_stride must be one of"):
        Padim(**dict(TINY, grid_stride=6)).fit(wide_tree)


def test_the_service_serves_a_non_square_model(tmp_path, wide_tree, wide_model):
    import base64
    import io
    import warnings

    from padim.serve.app import create_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    client = TestClient(create_app(export_onnx(wide_model, tmp_path / "wide.onnx")))
    assert client.get("/health").json()["image_size"] == [48, 96]
    path = sorted((wide_tree / "test" / "spot").glob("*.png"))[0]
    body = client.post("/predict?heatmap=1", files={"file": (path.name, path.read_bytes(), "image/png")}).json()
    assert body["score"] == pytest.approx(float(wide_model.predict([path]).score[0]), rel=1e-5)
    with Image.open(io.BytesIO(base64.b64decode(body["heatmap_png"]))) as picture:
        assert picture.size[0] > picture.size[1]  # drawn at the image's landscape shape, not squashed
