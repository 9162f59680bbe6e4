"""Memory: the estimate printed before fitting, the refusal, and the bounded runs while predicting."""

import numpy as np
import pytest
import torch

from padim.errors import OptionError
from padim.graph import build
from padim.model import memory
from padim.model.padim import Padim

from support import TINY


def test_the_model_file_estimate_is_the_packed_statistics_plus_the_weights_twice():
    plan = memory.estimate((512, 512), (128, 128), 100, "efficientnet_lite0", backbone_bytes=3_000_000)
    p = 128 * 128
    assert plan.n_patches == p
    # float16 triangles, float32 means, the weights as tensors and in the stored graph
    assert plan.model_file == p * 5050 * 2 + p * 100 * 4 + 2 * 3_000_000
    assert plan.fit_peak > plan.model_file and plan.predict_peak > plan.runtime
    assert "working size 512x512" in plan.describe() and "Gaussians on a 128x128 grid x d=100" in plan.describe()


@pytest.mark.slow
def test_the_estimate_matches_the_saved_file(tmp_path, mvtec_tree):
    model = Padim(**TINY).fit(mvtec_tree)
    weights = sum(t.numel() * t.element_size() for t in model.extractor_.body.state_dict().values())
    plan = memory.estimate(model.image_size_, model.feature_size_, 16, model.backbone, weights)
    assert model.feature_size_ == plan.grid == (16, 16)
    size = model.save(tmp_path / "m.padim").stat().st_size
    assert plan.model_file <= size <= plan.model_file * 1.01 + 100_000  # safetensors adds a header


def test_runtime_factors_are_float16_only_past_the_limit(monkeypatch):
    assert memory.runtime_dtype(4096, 100) == "float32"
    monkeypatch.setattr(build, "runtime_limit", lambda: 1000)
    assert memory.runtime_dtype(4096, 100) == "float16"


def test_a_fit_that_exceeds_the_memory_is_refused_in_one_line_naming_what_to_reduce(
    tmp_path, mvtec_tree, monkeypatch, capsys
):
    from padim.cli.main import main

    monkeypatch.setattr(memory, "machine_memory", lambda: 100 * 2**20)
    with pytest.raises(OptionError, match=r"would need about .* more than this machine's 105 MB: reduce --image-size"):
        Padim(**TINY).fit(mvtec_tree)
    argv = ["fit", str(mvtec_tree), "-o", str(tmp_path / "m.padim"), "--backbone", "resnet18", "--random-weights",
            "--image-size", "64", "--n-features", "16"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("padim: ") and "expected peak memory: fit" in err[0]  # the estimate comes first
    assert err[-1].startswith("padim fit: error: fitting at 64x64") and "--n-features" in err[-1]
    assert not (tmp_path / "m.padim").exists()


def test_a_coarser_grid_is_suggested_when_one_would_fit(monkeypatch):
    plan = memory.estimate((1024, 1024), (256, 256), 100, "efficientnet_lite0", 3_000_000)
    coarse = memory.estimate((1024, 1024), (64, 64), 100, "efficientnet_lite0", 3_000_000)
    monkeypatch.setattr(memory, "machine_memory", lambda: (plan.fit_peak + coarse.fit_peak) // 2)
    with pytest.raises(OptionError, match="or --grid-stride 16"):
        memory.check(plan, coarser_grid=16)
    memory.check(coarse)


def test_predict_runs_the_graph_a_few_images_at_a_time_with_the_same_results(monkeypatch, tiny_model):
    calls = []
    predictor = tiny_model.predictor()
    run = predictor.run

    def counting(**inputs):
        calls.append(len(inputs["images"]))
        return run(**inputs)

    predictor.run = counting
    images = np.random.default_rng(0).normal(size=(5, 3, 64, 64)).astype(np.float32)
    whole = predictor.predict_batch(images)
    monkeypatch.setattr("padim.runtime.predictor.images_per_run", lambda size, pixels: 2)
    parts = predictor.predict_batch(images)
    assert calls == [5, 2, 2, 1]
    np.testing.assert_allclose(parts.anomaly_map, whole.anomaly_map, rtol=1e-5)  # BLAS rounds by batch size
    np.testing.assert_array_equal(parts.label, whole.label)


@pytest.mark.slow
def test_float16_runtime_factors_give_the_float32_maps(monkeypatch, tiny_model, tmp_path):
    """A model past the runtime limit holds float16 factors and casts them in chunks: same maps, exported too."""
    import copy

    import onnx

    from padim.model.export import export_onnx
    from padim.runtime.opening import open_model

    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    expected = tiny_model.predict(images).anomaly_map
    monkeypatch.setattr("padim.graph.build.runtime_dtype", lambda p, d: "float16")
    monkeypatch.setattr("padim.maps.anomaly_map.CAST_CHUNK_BYTES", 16 * 16 * 4 * 100)  # 100 patches a chunk
    for backend in ("onnxruntime", "torch"):
        small = copy.copy(tiny_model)
        small.backend, small._runners = backend, {}
        got = small.predict(images).anomaly_map
        assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()
    path = export_onnx(tiny_model, tmp_path / "f16.onnx")
    factors = next(t for t in onnx.load(str(path)).graph.initializer if t.name == "precision_cholesky")
    assert factors.data_type == onnx.TensorProto.FLOAT16
    got = open_model(path).predict(images.numpy()).anomaly_map
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()
