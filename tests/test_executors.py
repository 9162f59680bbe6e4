"""Executors and stored graphs: every executor gives the torch path's scores; a .padim opens without tracing.

References: the eager PyTorch path (``Padim.load(..., backend="torch")``) and padim's torch
unpacking of the packed factors. OpenVINO tests skip where the extra is not installed.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from padim.errors import ModelFileError, OptionError
from padim.io.loading import as_batches
from padim.modelfile.mapped import GRAPH_TENSOR, map_model_file
from padim.modelfile.padim_file import read_model_file, write_model_file
from padim.runtime import executors
from padim.runtime.opening import open_model
from padim.runtime.stored import unpack_triangular

OPENVINO = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="needs the openvino extra")


@pytest.fixture(scope="module")
def batch(mvtec_tree):
    return np.concatenate(list(as_batches(sorted((mvtec_tree / "test").rglob("*.png")), 64)))


@pytest.fixture(scope="module")
def torch_prediction(tiny_padim, batch):
    from padim.model.padim import Padim

    return Padim.load(tiny_padim, backend="torch").predict(batch)


def close_to(found, expected) -> None:
    """Scores and maps within 1e-5 of the largest score; the same labels."""
    scale = float(np.abs(expected.score).max())
    assert np.abs(found.score - expected.score).max() <= 1e-5 * scale
    assert np.abs(found.anomaly_map - expected.anomaly_map).max() <= 1e-5 * scale
    assert np.array_equal(found.label, expected.label)


def test_a_padim_file_holds_its_graph_and_opens_without_tracing(tiny_padim, batch, torch_prediction, monkeypatch):
    mapped = map_model_file(tiny_padim)
    assert mapped.graph is not None and mapped.meta["graph"]["factors"] == "float32"
    monkeypatch.setattr("padim.graph.trace.onnx_bytes", lambda *a, **k: pytest.fail("traced at opening"))
    predictor = open_model(tiny_padim, executor="onnxruntime")
    assert predictor.kind == "onnxruntime" and predictor.describe() == "onnxruntime, float32 (as asked)"
    close_to(predictor.predict(batch), torch_prediction)


def test_a_padim_file_without_a_graph_is_traced_as_before(tiny_padim, tmp_path, batch, torch_prediction):
    tensors, meta = read_model_file(tiny_padim)
    del tensors[GRAPH_TENSOR]
    write_model_file(tmp_path / "old.padim", tensors, {k: v for k, v in meta.items() if k not in ("graph", "tensor_sha256")})  # fmt: skip
    assert map_model_file(tmp_path / "old.padim").graph is None
    predictor = open_model(tmp_path / "old.padim")
    assert predictor.executor is None
    close_to(predictor.predict(batch), torch_prediction)
    with pytest.raises(OptionError, match="holds no stored graph"):
        open_model(tmp_path / "old.padim", executor="openvino")


def test_a_flipped_bit_in_the_stored_graph_fails_the_checksum(tiny_padim, tmp_path):
    data = bytearray(tiny_padim.read_bytes())
    mapped = map_model_file(tiny_padim)
    offset = mapped.tensors[GRAPH_TENSOR].ctypes.data - np.frombuffer(mapped.mapping, np.uint8).ctypes.data
    data[offset + 100] ^= 1
    (tmp_path / "bad.padim").write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="does not match the checksum"):
        open_model(tmp_path / "bad.padim")


def test_numpy_unpacking_equals_torch():
    from padim.stats.gaussian import unpack_triangular as torch_unpack

    packed = np.random.default_rng(0).standard_normal((300, 7 * 8 // 2)).astype(np.float16)
    expected = torch_unpack(torch.from_numpy(packed), torch.float32).numpy()
    np.testing.assert_array_equal(unpack_triangular(packed), expected)


@pytest.mark.parametrize(
    "requested, precision, match",
    [
        ("openvino", "int8", "computes other integers"),
        ("onnxruntime", "bfloat16", "fitted with OpenVINO"),
        ("tensorrt", "float32", "--executor must be one of"),
    ],
)
def test_an_executor_that_cannot_run_the_model_is_refused(requested, precision, match):
    with pytest.raises(OptionError, match=match):
        executors.check_executor(requested, precision)


def test_auto_says_why_without_openvino(tiny_padim, monkeypatch):
    monkeypatch.setattr("padim.runtime.executors.missing", lambda extra: ["openvino"])
    assert open_model(tiny_padim).describe() == "onnxruntime, float32 (auto: OpenVINO is not installed)"
    assert executors.check_executor("auto", "int8").executor == "onnxruntime"


@OPENVINO
@pytest.mark.parametrize("model", ["tiny_padim", "tiny_onnx"])
def test_openvino_gives_the_torch_scores_in_float32(request, model, batch, torch_prediction):
    predictor = open_model(request.getfixturevalue(model), executor="openvino")
    assert predictor.kind == "openvino" and predictor.run.precision == "float32"
    close_to(predictor.predict(batch), torch_prediction)
    # The threshold OpenVINO folded into the graph is applied to the scores by the graph's own rule.
    ranked = np.sort(torch_prediction.score)
    threshold = float(ranked[3] + ranked[4]) / 2  # between two images' scores
    found = predictor.with_threshold(threshold).predict(batch)
    assert np.array_equal(found.label, torch_prediction.score >= threshold)


@OPENVINO
def test_auto_measures_once_per_machine_and_remembers(tiny_padim, tmp_path, monkeypatch):
    monkeypatch.setenv("PADIM_CACHE_DIR", str(tmp_path))
    first = open_model(tiny_padim)
    assert first.kind in ("onnxruntime", "openvino") and "measured on this machine" in first.describe()
    (remembered,) = json.loads((tmp_path / "executors.json").read_text()).values()
    assert remembered["executor"] == first.kind
    monkeypatch.setattr(executors, "measure", lambda *a, **k: pytest.fail("measured twice"))
    assert open_model(tiny_padim).describe() == first.describe()


def test_int8_is_checked_against_float32_on_held_out_images_with_defects(mvtec_tree, tmp_path, monkeypatch):
    import warnings

    from padim.model import quality
    from padim.model.padim import Padim

    from support import TINY

    monkeypatch.setattr(quality, "MIN_IMAGES", 1)
    monkeypatch.setattr(quality, "MAX_LOSS", -1.0)  # any loss, even none, is too much
    with pytest.raises(OptionError, match=r"backbone_dtype='int8' loses too much here: .* float32's"):
        Padim(**{**TINY, "backbone_dtype": "int8"}).fit(mvtec_tree)
    monkeypatch.setattr(quality, "MAX_LOSS", 1.0)
    model = Padim(**{**TINY, "backbone_dtype": "int8"}).fit(mvtec_tree)
    found = model.precision_check_
    assert found["images"] == 1 and found["enforced"] and len(found["image_auroc"]) == len(found["pixel_auroc"]) == 2
    model.save(tmp_path / "int8.padim")
    assert map_model_file(tmp_path / "int8.padim").meta["precision_check"] == found
    monkeypatch.setattr(quality, "MIN_IMAGES", 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not Padim(**{**TINY, "backbone_dtype": "int8"}).fit(mvtec_tree).precision_check_["enforced"]
    assert any("recorded, not enforced" in str(w.message) for w in caught)


def test_synthetic_defects_change_only_their_masks():
    from padim.io.images import denormalize
    from padim.model.quality import with_defects

    good = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    bad, masks = with_defects(good, seed=0)
    changed = np.abs(denormalize(bad).astype(int) - denormalize(good)).max(axis=3) > 1
    assert masks.any(axis=(1, 2)).all() and not (changed & ~masks).any()
