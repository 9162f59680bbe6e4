"""ONNX export: the written graph is the pipeline the .padim model runs, with its state inside."""

import hashlib
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from padim.errors import NotFittedError, OptionError
from padim.graph.modules import OUTPUTS
from padim.io.images import list_images, load_image, preprocess
from padim.model.export import FORMAT_VERSION, export_onnx
from padim.model.padim import Padim
from padim.runtime.opening import open_model

from support import TINY


def relative_error(actual, expected):
    """max |a - b| / max |b|: the parity measure of the issue (1e-4)."""
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def load_test_images(tree, size=64):
    paths = [p for sub in ("good", "scratch", "spot") for p in list_images(tree / "test" / sub)]
    return preprocess([load_image(p) for p in paths], size)


def run_graph(path, batch, **extra):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"images": batch, **{k: np.array(v, dtype=np.float32) for k, v in extra.items()}}
    return dict(zip(OUTPUTS, session.run(list(OUTPUTS), feeds)))


def test_graph_outputs_equal_the_model(mvtec_tree, tiny_model, tiny_onnx):
    assert sorted(os.listdir(tiny_onnx.parent)) == ["tiny.onnx", "tiny.onnx.data"]  # the tensors beside it
    batch = load_test_images(mvtec_tree)
    expected = tiny_model.predict(batch)
    out = run_graph(tiny_onnx, batch)  # threshold and scale from the file
    assert out["anomaly_map"].shape == (len(batch), 64, 64) and out["anomaly_map"].dtype == np.float32
    assert relative_error(out["anomaly_map"], expected.anomaly_map) < 1e-4
    np.testing.assert_array_equal(out["score"], out["anomaly_map"].reshape(len(batch), -1).max(1))
    np.testing.assert_allclose(out["score"], expected.score, rtol=1e-4)
    np.testing.assert_allclose(out["normalized_score"], expected.normalized_score, atol=1e-4)
    assert out["label"].dtype == np.bool_
    np.testing.assert_array_equal(out["label"], expected.label)


def test_threshold_is_an_overridable_input(mvtec_tree, tiny_model, tiny_onnx):
    batch = load_test_images(mvtec_tree)
    scores = tiny_model.predict(batch).score
    threshold = float(np.median(scores))
    scale = tiny_model.calibration_.scale
    out = run_graph(tiny_onnx, batch, threshold=threshold, scale=scale)
    np.testing.assert_array_equal(out["label"], ~(out["score"] < np.float32(threshold)))
    assert out["label"].any() and not out["label"].all(), "the test should see both verdicts"
    via_runtime = open_model(tiny_onnx).with_threshold(threshold).predict(batch)
    np.testing.assert_array_equal(via_runtime.label, out["label"])
    np.testing.assert_allclose(
        via_runtime.normalized_score,
        tiny_model.calibration_.with_threshold(threshold).normalize(via_runtime.score),
        atol=1e-5,
    )


def test_batch_axis_is_dynamic(mvtec_tree, tiny_onnx):
    batch = load_test_images(mvtec_tree)
    whole = run_graph(tiny_onnx, batch)["anomaly_map"]
    for part in (batch[:1], batch[1:6]):
        assert run_graph(tiny_onnx, part)["anomaly_map"].shape == (len(part), 64, 64)
    np.testing.assert_allclose(run_graph(tiny_onnx, batch[1:6])["anomaly_map"], whole[1:6], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_non_square_images_and_lite0_backbone(tmp_path):
    model = Padim(**dict(TINY, backbone="efficientnet_lite0", image_size=(64, 96), n_features=20))
    model.fit(torch.randn(6, 3, 64, 96, generator=torch.Generator().manual_seed(0)))
    batch = torch.randn(3, 3, 64, 96, generator=torch.Generator().manual_seed(1)).numpy()
    out = run_graph(export_onnx(model, tmp_path / "lite.onnx"), batch)
    assert out["anomaly_map"].shape == (3, 64, 96)
    assert relative_error(out["anomaly_map"], model.predict(batch).anomaly_map) < 1e-4


def test_metadata_holds_what_the_runtime_needs(tiny_model, tiny_onnx):
    props = {p.key: p.value for p in onnx.load(str(tiny_onnx)).metadata_props}
    assert int(props["padim.format_version"]) == FORMAT_VERSION
    assert json.loads(props["padim.image_size"]) == [64, 64]
    assert json.loads(props["padim.calibration"]) == tiny_model.calibration_.to_dict()
    config = json.loads(props["padim.config"])
    assert config == tiny_model.config() and config["n_features"] == 16 and config["sigma"] == 2
    assert json.loads(props["padim.preprocess"])["mean"] == [0.485, 0.456, 0.406]


def test_uncalibrated_model_fails_closed(tmp_path):
    model = Padim(**TINY).fit(torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    assert model.calibration_ is None
    path = export_onnx(model, tmp_path / "raw.onnx")
    out = run_graph(path, torch.randn(2, 3, 64, 64).numpy())
    assert np.isnan(out["normalized_score"]).all() and out["label"].all()  # never a silent "normal"
    prediction = open_model(path).predict(torch.randn(2, 3, 64, 64).numpy())
    assert prediction.label is None and prediction.normalized_score is None and prediction.region is None


@pytest.mark.slow
def test_export_from_a_model_file(tmp_path, mvtec_tree, tiny_model, tiny_padim):
    path = export_onnx(tiny_padim, tmp_path / "sub" / "m.onnx")
    batch = load_test_images(mvtec_tree)
    assert relative_error(run_graph(path, batch)["anomaly_map"], tiny_model.predict(batch).anomaly_map) < 1e-4


@pytest.mark.slow
def test_external_data_is_one_file_beside_the_model_and_loads_back(tmp_path, mvtec_tree, tiny_model):
    export_onnx(tiny_model, tmp_path / "big.onnx", external_data=True)
    assert sorted(os.listdir(tmp_path)) == ["big.onnx", "big.onnx.data"]
    assert (tmp_path / "big.onnx").stat().st_size < 100_000 < (tmp_path / "big.onnx.data").stat().st_size
    # The data file is found relative to the model, so the pair can move together.
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("big.onnx", "big.onnx.data"):
        os.replace(tmp_path / name, moved / name)
    batch = load_test_images(mvtec_tree)
    prediction = open_model(moved / "big.onnx").predict(batch)
    assert relative_error(prediction.anomaly_map, tiny_model.predict(batch).anomaly_map) < 1e-4
    # Exporting again without external data removes the now unused data file.
    export_onnx(tiny_model, moved / "big.onnx", external_data=False)
    assert sorted(os.listdir(moved)) == ["big.onnx"]


def test_failed_export_leaves_the_old_file_and_no_temporary_files(tmp_path, tiny_model, monkeypatch):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"previous model")

    def broken_save(*args, **kwargs):
        raise OSError("simulated disk failure")

    monkeypatch.setattr(onnx, "save_model", broken_save)
    with pytest.raises(OSError, match="simulated"):
        export_onnx(tiny_model, target)
    assert target.read_bytes() == b"previous model"
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]


def test_bad_arguments(tmp_path, tiny_model):
    with pytest.raises(NotFittedError, match="fit"):
        export_onnx(Padim(**TINY), tmp_path / "m.onnx")
    with pytest.raises(OptionError, match="is a folder"):
        export_onnx(tiny_model, tmp_path)
    assert not (tmp_path / "m.onnx").exists()


def test_the_checksum_of_an_export_covers_its_tensors_file(tiny_onnx):
    from padim.modelfile.info import file_sha256

    both = tiny_onnx.read_bytes() + tiny_onnx.with_name("tiny.onnx.data").read_bytes()
    assert file_sha256(tiny_onnx) == hashlib.sha256(both).hexdigest()
