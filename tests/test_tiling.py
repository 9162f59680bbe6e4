"""Tiling the backbone: plans that cover the image, stitched features equal to the untiled ones."""

import copy

import numpy as np
import pytest
import torch

from padim.errors import OptionError
from padim.features.backbones import FeatureExtractor
from padim.features.embedding import select, select_channels, split_channels
from padim.features.tiling import TilePlan, plan_axis, resolve_tile, tiled_features
from padim.graph import build


@pytest.mark.parametrize("length, tile, margin, align", [(100, 64, 16, 16), (1000, 256, 32, 32), (257, 128, 16, 16)])
def test_plan_cores_partition_the_axis_and_tiles_stay_within_size_and_margin(length, tile, margin, align):
    spans = plan_axis(length, tile, margin, align)
    assert spans[0].core_start == 0 and spans[-1].core_stop == length
    for a, b in zip(spans, spans[1:]):
        assert a.core_stop == b.core_start and a.core_stop % align == 0
    for s in spans:
        assert 0 <= s.start <= s.core_start < s.core_stop <= s.stop <= length
        assert s.stop - s.start <= tile and s.start % align == 0
        assert s.core_start - s.start == (margin if s.core_start else 0)
        assert s.stop - s.core_stop == (margin if s.core_stop < length else 0)
    assert plan_axis(50, 64, 16, 16) == plan_axis(50, 64, 16, 16)[:1]  # one tile when it fits


def test_tile_sizes_are_checked_and_automatic_above_1024_px():
    assert resolve_tile(None, (256, 4768), 16) == 1024 and resolve_tile(None, (768, 768), 16) == 0
    assert resolve_tile(0, (4000, 3000), 16) == 0 and resolve_tile(512, (256, 256), 16) == 0  # it fits: untiled
    with pytest.raises(OptionError, match="multiple of 16"):
        resolve_tile(100, (512, 512), 16)


@pytest.fixture(scope="module")
def extractor():
    # layer1 + layer2 of a random ResNet18: a receptive field of 99 px, a radius under 64 px.
    return FeatureExtractor("resnet18", ["layer1", "layer2"], pretrained=False, seed=3)


def untiled_and_tiled(extractor, images, tile):
    layer_idx = split_channels(select_channels(192, 24, 0), [64, 128])
    plan = TilePlan.make(images.shape[2:], tile, extractor.layer_info[-1].stride)
    with torch.inference_mode():
        whole = select(extractor(images), layer_idx)
        tiled = tiled_features(extractor, images, layer_idx, plan.rows, plan.cols)
    return plan, whole, tiled


@pytest.mark.slow
def test_stitched_features_equal_the_untiled_ones_when_the_margin_covers_the_receptive_field(extractor):
    images = torch.randn(2, 3, 200, 328, generator=torch.Generator().manual_seed(0))
    layer_idx = split_channels(select_channels(192, 24, 0), [64, 128])
    margin = 64  # over the 50-px radius of the receptive field
    plan = TilePlan(tuple(plan_axis(200, 160, margin, 8)), tuple(plan_axis(328, 160, margin, 8)), 160, margin)
    assert len(plan.rows) == 3 and len(plan.cols) > 3
    with torch.inference_mode():
        whole = select(extractor(images), layer_idx)
        tiled = tiled_features(extractor, images, layer_idx, plan.rows, plan.cols)
    for a, b in zip(whole, tiled):
        assert a.shape == b.shape
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_with_a_small_margin_features_differ_only_near_the_seams(extractor):
    images = torch.randn(1, 3, 192, 320, generator=torch.Generator().manual_seed(1))
    plan, whole, tiled = untiled_and_tiled(extractor, images, 128)  # margin 16: smaller than the radius
    seams_y = [s.core_start for s in plan.rows[1:]]
    seams_x = [s.core_start for s in plan.cols[1:]]
    assert seams_x, "the plan must cut the image"
    for info, a, b in zip(extractor.layer_info, whole, tiled):
        diff = (a - b).abs().amax(dim=(0, 1)).numpy()
        ys = np.arange(diff.shape[0]) * info.stride
        xs = np.arange(diff.shape[1]) * info.stride
        far_y = np.all([np.abs(ys - s) >= 64 for s in seams_y], axis=0) if seams_y else np.ones(len(ys), bool)
        far_x = np.all([np.abs(xs - s) >= 64 for s in seams_x], axis=0)
        far = far_y[:, None] & far_x[None, :]
        assert far.any() and diff[far].max() <= 1e-5 * np.abs(a.numpy()).max()
        assert diff.max() > 1e-3 * np.abs(a.numpy()).max()  # near a seam they do differ: the test can fail


@pytest.mark.slow
def test_a_tiled_model_runs_the_same_in_torch_onnxruntime_and_the_exported_file(tmp_path):
    from padim.model.export import export_onnx
    from padim.model.padim import Padim
    from padim.runtime.opening import open_model

    options = dict(backbone="resnet18", pretrained=False, n_features=16, sigma=2, image_size=(64, 160))
    images = torch.randn(6, 3, 64, 160, generator=torch.Generator().manual_seed(2))
    model = Padim(**options, tile_size=64, grid_stride=8).fit(images)
    assert (
        model.tile_size_ == 64 and len(build.embedder(model.graph_spec()).tiles) == 4 and model.feature_size_ == (8, 20)
    )
    eager = copy.copy(model)
    eager.backend, eager._runners = "torch", {}
    test = images[:2].numpy() + 0.5
    expected = eager.predict(test).anomaly_map
    for predictor in (model.predictor(), open_model(export_onnx(model, tmp_path / "tiled.onnx"))):
        got = predictor.predict(test).anomaly_map
        assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
    untiled = Padim(**options, tile_size=0, grid_stride=8).fit(images)
    assert build.embedder(untiled.graph_spec()).tiles is None and untiled.predict(test).anomaly_map.shape == (
        2,
        64,
        160,
    )
