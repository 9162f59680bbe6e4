"""ONNX export: the exported graph gives the PyTorch model's maps, scores and labels."""

import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from padim.calibration import Calibration
from padim.export import FORMAT_VERSION, OUTPUT_NAMES, export_onnx
from padim.model import NotFittedError, Padim
from padim.runtime import open_model
from padim.transforms import list_images, load_image, preprocess

SMALL = dict(backbone="resnet18", pretrained=False, n_features=24, sigma=2, seed=3)


def relative_error(actual, expected):
    """max |a - b| / max |b|: the parity measure of the issue (1e-4)."""
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def load_test_images(tree, size):
    paths = [p for sub in ("good", "scratch", "spot") for p in list_images(tree / "test" / sub)]
    return paths, preprocess([load_image(p) for p in paths], size)


@pytest.fixture(scope="module")
def fitted(mvtec_tree):
    """A 64 px model whose threshold lies halfway between two test scores, so both verdicts occur."""
    model = Padim(image_size=64, **SMALL).fit(mvtec_tree)
    scores = np.sort(model.predict(load_test_images(mvtec_tree, 64)[1]).score)
    model.calibration_ = Calibration(threshold=float(scores[2:4].mean()), center=float(scores[0]))
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory, fitted):
    return export_onnx(fitted, tmp_path_factory.mktemp("export") / "m.onnx")


def run_graph(path, batch):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), {"images": batch})))


def test_graph_outputs_equal_the_pytorch_model(mvtec_tree, fitted, exported):
    path = exported
    assert path.name == "m.onnx" and sorted(os.listdir(path.parent)) == ["m.onnx"]
    _, batch = load_test_images(mvtec_tree, 64)
    expected = fitted.predict(batch)
    out = run_graph(path, batch)
    assert out["anomaly_map"].shape == (len(batch), 64, 64) and out["anomaly_map"].dtype == np.float32
    assert relative_error(out["anomaly_map"], expected.anomaly_map) < 1e-4
    np.testing.assert_array_equal(out["score"], out["anomaly_map"].reshape(len(batch), -1).max(1))
    np.testing.assert_allclose(out["score"], expected.score, rtol=1e-4)
    np.testing.assert_allclose(out["normalized_score"], expected.normalized_score, atol=1e-4)
    assert out["label"].dtype == np.bool_
    np.testing.assert_array_equal(out["label"], expected.label)
    assert expected.label.any() and not expected.label.all(), "the test should see both verdicts"


def test_batch_axis_is_dynamic(mvtec_tree, exported):
    path = exported
    _, batch = load_test_images(mvtec_tree, 64)
    whole = run_graph(path, batch)["anomaly_map"]
    for part in (batch[:1], batch[1:6]):
        maps = run_graph(path, part)["anomaly_map"]
        assert maps.shape == (len(part), 64, 64)
    np.testing.assert_allclose(run_graph(path, batch[1:6])["anomaly_map"], whole[1:6], rtol=1e-5, atol=1e-5)


def test_non_square_images_and_lite0_backbone(tmp_path):
    model = Padim(backbone="efficientnet_lite0", pretrained=False, image_size=(64, 96), n_features=20, sigma=2)
    model.fit(torch.randn(6, 3, 64, 96, generator=torch.Generator().manual_seed(0)))
    batch = torch.randn(3, 3, 64, 96, generator=torch.Generator().manual_seed(1)).numpy()
    out = run_graph(export_onnx(model, tmp_path / "lite.onnx"), batch)
    assert out["anomaly_map"].shape == (3, 64, 96)
    assert relative_error(out["anomaly_map"], model.predict(batch).anomaly_map) < 1e-4


def test_metadata_holds_what_the_runtime_needs(fitted, exported):
    props = {p.key: p.value for p in onnx.load(str(exported)).metadata_props}
    assert int(props["padim.format_version"]) == FORMAT_VERSION
    assert json.loads(props["padim.image_size"]) == [64, 64]
    assert json.loads(props["padim.calibration"]) == fitted.calibration_.to_dict()
    config = json.loads(props["padim.config"])
    assert config["backbone"] == "resnet18" and config["n_features"] == 24 and config["sigma"] == 2
    assert json.loads(props["padim.preprocess"])["mean"] == [0.485, 0.456, 0.406]


def test_uncalibrated_model_gives_nan_normalized_score_and_no_label(tmp_path):
    model = Padim(image_size=64, **SMALL).fit(torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    assert model.calibration_ is None
    path = export_onnx(model, tmp_path / "raw.onnx")
    out = run_graph(path, torch.randn(2, 3, 64, 64).numpy())
    assert np.isnan(out["normalized_score"]).all() and not out["label"].any()
    prediction = open_model(path).predict(torch.randn(2, 3, 64, 64).numpy())
    assert prediction.label is None and prediction.normalized_score is None and prediction.region is None


def test_export_from_a_model_file(tmp_path, mvtec_tree, fitted):
    fitted.save(tmp_path / "m.padim")
    path = export_onnx(tmp_path / "m.padim", tmp_path / "sub" / "m.onnx")
    _, batch = load_test_images(mvtec_tree, 64)
    assert relative_error(run_graph(path, batch)["anomaly_map"], fitted.predict(batch).anomaly_map) < 1e-4


def test_external_data_is_one_file_beside_the_model_and_loads_back(tmp_path, mvtec_tree, fitted):
    export_onnx(fitted, tmp_path / "big.onnx", external_data=True)
    assert sorted(os.listdir(tmp_path)) == ["big.onnx", "big.onnx.data"]
    assert (tmp_path / "big.onnx").stat().st_size < 100_000 < (tmp_path / "big.onnx.data").stat().st_size
    # The data file is found relative to the model, so the pair can move together.
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("big.onnx", "big.onnx.data"):
        os.replace(tmp_path / name, moved / name)
    _, batch = load_test_images(mvtec_tree, 64)
    prediction = open_model(moved / "big.onnx").predict(batch)
    assert relative_error(prediction.anomaly_map, fitted.predict(batch).anomaly_map) < 1e-4
    # Exporting again without external data removes the now unused data file.
    export_onnx(fitted, moved / "big.onnx")
    assert sorted(os.listdir(moved)) == ["big.onnx"]


def test_failed_export_leaves_the_old_file_and_no_temporary_files(tmp_path, fitted, monkeypatch):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"previous model")

    def broken_export(*args, **kwargs):
        raise RuntimeError("simulated exporter failure")

    monkeypatch.setattr(torch.onnx, "export", broken_export)
    with pytest.raises(RuntimeError, match="simulated"):
        export_onnx(fitted, target)
    assert target.read_bytes() == b"previous model"
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]


def test_bad_arguments(tmp_path, fitted):
    with pytest.raises(NotFittedError, match="fit"):
        export_onnx(Padim(image_size=64, **SMALL), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match=r"opset must be an int >= 13.*got 11"):
        export_onnx(fitted, tmp_path / "m.onnx", opset=11)
    assert not (tmp_path / "m.onnx").exists()
