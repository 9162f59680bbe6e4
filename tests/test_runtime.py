"""open_model: one interface for .padim and .onnx files; the ONNX path runs without torch."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from padim.errors import ModelFileError, OptionError
from padim.io.images import list_images
from padim.runtime.opening import open_model


def image_paths(tree):
    return [p for sub in ("good", "scratch", "spot") for p in list_images(tree / "test" / sub)]


@pytest.fixture(scope="module")
def files(mvtec_tree, tiny_model, tiny_padim, tiny_onnx):
    """The shared model and its two files, with a threshold that splits the test images."""
    threshold = float(np.median(tiny_model.predict(image_paths(mvtec_tree)).score))
    return threshold, tiny_padim, tiny_onnx


def test_onnx_and_padim_files_give_the_same_prediction(mvtec_tree, tiny_model, files):
    threshold, padim_file, onnx_file = files
    paths = image_paths(mvtec_tree)
    reference = tiny_model.predictor().with_threshold(threshold).predict(paths)
    by_padim, by_onnx = (
        open_model(padim_file).with_threshold(threshold),
        open_model(onnx_file).with_threshold(threshold),
    )
    assert by_padim.kind == by_onnx.kind == "onnxruntime"
    assert by_padim.image_size == by_onnx.image_size == (64, 64)
    assert by_padim.calibration == by_onnx.calibration
    assert by_onnx.calibration.center == tiny_model.calibration_.center
    torch_prediction, onnx_prediction = by_padim.predict(paths), by_onnx.predict(paths)
    # A .padim file runs the model itself.
    np.testing.assert_array_equal(torch_prediction.anomaly_map, reference.anomaly_map)
    np.testing.assert_array_equal(torch_prediction.label, reference.label)
    scale = np.abs(reference.anomaly_map).max()
    assert np.abs(onnx_prediction.anomaly_map - reference.anomaly_map).max() / scale < 1e-4
    np.testing.assert_allclose(onnx_prediction.score, reference.score, rtol=1e-4)
    np.testing.assert_allclose(onnx_prediction.normalized_score, reference.normalized_score, atol=1e-4)
    np.testing.assert_array_equal(onnx_prediction.label, reference.label)
    assert reference.label.any() and not reference.label.all()
    # Regions come from the maps with the same NumPy code; only pixels within rounding of the
    # threshold could differ.
    assert np.mean(onnx_prediction.region != reference.region) < 1e-3


def test_input_forms_and_batching_agree(mvtec_tree, files):
    _, _, onnx_file = files
    runtime = open_model(onnx_file)
    paths = image_paths(mvtec_tree)
    whole = runtime.predict(paths)
    np.testing.assert_allclose(
        runtime.predict(paths, batch_size=2).anomaly_map, whole.anomaly_map, rtol=1e-5, atol=1e-5
    )
    one = runtime.predict(paths[0])
    assert len(one) == 1 and np.allclose(one.anomaly_map[0], whole.anomaly_map[0], rtol=1e-5, atol=1e-5)
    with Image.open(paths[0]) as image:
        assert np.allclose(runtime.predict(image).score, whole.score[0], rtol=1e-5)
    folder = runtime.predict(mvtec_tree / "test" / "good")
    assert len(folder) == len(list_images(mvtec_tree / "test" / "good"))


@pytest.mark.slow
def test_torch_free_onnx_path(tmp_path, mvtec_tree, files):
    """The ONNX path must work where ``import torch`` fails, and must not try to import it."""
    _, _, onnx_file = files
    paths = image_paths(mvtec_tree)
    code = textwrap.dedent(
        f"""
        import json, sys
        sys.modules["torch"] = None  # from here on, "import torch" raises ImportError
        try:
            import torch
        except ImportError:
            pass
        else:
            raise SystemExit("the import blocker did not work")
        import padim
        from padim.runtime.opening import open_model
        import padim.serve.app  # the web service runs torch-free too
        runtime = open_model({str(onnx_file)!r})
        prediction = runtime.predict({[str(p) for p in paths]!r})
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision") and sys.modules[m] is not None)
        print(json.dumps({{"score": prediction.score.tolist(), "label": prediction.label.tolist(), "loaded": loaded}}))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []
    expected = open_model(onnx_file).predict(paths)
    np.testing.assert_allclose(result["score"], expected.score, rtol=1e-6)
    assert result["label"] == expected.label.tolist()


def test_missing_foreign_and_corrupt_files(tmp_path):
    with pytest.raises(ModelFileError, match="missing.onnx: model file not found"):
        open_model(tmp_path / "missing.onnx")
    with pytest.raises(ModelFileError, match="missing.padim: model file not found"):
        open_model(tmp_path / "missing.padim")
    (tmp_path / "junk.onnx").write_bytes(b"this is not an onnx model")
    with pytest.raises(ModelFileError, match="junk.onnx: not a readable ONNX model"):
        open_model(tmp_path / "junk.onnx")
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    foreign = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    foreign.ir_version = 8
    onnx.save_model(foreign, str(tmp_path / "foreign.onnx"))
    with pytest.raises(ModelFileError, match="foreign.onnx: an ONNX model, but not one exported by padim"):
        open_model(tmp_path / "foreign.onnx")
    newer = onnx.load(str(tmp_path / "foreign.onnx"))
    entry = newer.metadata_props.add()
    entry.key, entry.value = "padim.format_version", "99"
    onnx.save_model(newer, str(tmp_path / "newer.onnx"))
    with pytest.raises(ModelFileError, match="format 99 by a newer padim-toolkit"):
        open_model(tmp_path / "newer.onnx")


def test_bad_arguments(mvtec_tree, files):
    _, _, onnx_file = files
    runtime = open_model(onnx_file)
    with pytest.raises(OptionError, match=r"\(N, 3, 64, 64\), got shape \(2, 3, 32, 32\)"):
        runtime.predict(np.zeros((2, 3, 32, 32), np.float32))
    with pytest.raises(OptionError, match="batch_size must be an integer in 1..4096 or None, got 0"):
        runtime.predict(image_paths(mvtec_tree), batch_size=0)
    with pytest.raises(OptionError, match="expected images .* got int"):
        runtime.predict(42)
    with pytest.raises(OptionError, match="device must be 'cpu' or 'cuda' for an ONNX model, got 'tpu'"):
        open_model(onnx_file, device="tpu")
    for bad in (float("nan"), float("inf"), "high"):
        with pytest.raises(OptionError, match="--threshold must be a finite number"):
            runtime.with_threshold(bad)


@pytest.mark.slow
def test_predict_from_several_threads(mvtec_tree, files):
    from concurrent.futures import ThreadPoolExecutor

    _, padim_file, onnx_file = files
    paths = image_paths(mvtec_tree)[:4]
    for path in (onnx_file, padim_file):
        runtime = open_model(path)
        expected = runtime.predict(paths).score
        with ThreadPoolExecutor(4) as pool:
            scores = list(pool.map(lambda p, r=runtime: r.predict(p).score[0], paths * 2))
        np.testing.assert_allclose(scores, np.r_[expected, expected], rtol=1e-6)
