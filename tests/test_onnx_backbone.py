"""onnxruntime embedding backend against the PyTorch path."""

import pytest
import torch

from padim.backbones import FeatureExtractor
from padim.model import embed, select_channels
from padim.onnx_backbone import OnnxEmbedder, available

needs_ort = pytest.mark.skipif(not available(), reason="onnxruntime is not installed")


def torch_embedding(extractor, channel_idx, channels, images):
    with torch.inference_mode():
        return embed(extractor(images), channel_idx, channels)


def assert_close_relative(actual, expected, rel=1e-4):
    assert actual.shape == expected.shape and actual.dtype == torch.float32
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=rel, atol=rel * scale)


@needs_ort
@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0"])
def test_onnx_embedding_equals_torch(name):
    extractor = FeatureExtractor(name, pretrained=False, seed=1)
    channels = [info.channels for info in extractor.layer_info]
    channel_idx = select_channels(sum(channels), 100, seed=0)
    onnx_embed = OnnxEmbedder(extractor, channel_idx, channels)
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    expected = torch_embedding(extractor, channel_idx, channels, images)
    assert expected.shape == (3, 100, 16, 16)
    assert_close_relative(onnx_embed(images), expected)
    # Batch, height and width are dynamic axes: another batch size and a non-square image.
    other = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    assert_close_relative(onnx_embed(other), torch_embedding(extractor, channel_idx, channels, other))


@needs_ort
def test_onnx_embedding_with_channels_from_some_layers_only():
    extractor = FeatureExtractor("resnet18", ["layer1", "layer2", "layer3"], pretrained=False)
    channels = [64, 128, 256]
    for channel_idx in (torch.arange(10, 40), torch.arange(70, 300, 7)):  # layer 1 only; layers 2 and 3
        images = torch.randn(2, 3, 64, 64)
        expected = torch_embedding(extractor, channel_idx, channels, images)
        assert_close_relative(OnnxEmbedder(extractor, channel_idx, channels, threads=1)(images), expected)


@needs_ort
@pytest.mark.parametrize("channels_last", [True, False])
def test_output_layout(channels_last):
    extractor = FeatureExtractor("resnet18", ["layer1", "layer2"], pretrained=False)
    channel_idx = torch.arange(0, 192, 4)
    images = torch.randn(2, 3, 64, 64)
    out = OnnxEmbedder(extractor, channel_idx, [64, 128], channels_last=channels_last)(images)
    assert out.shape == (2, 48, 16, 16)
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert_close_relative(out, torch_embedding(extractor, channel_idx, [64, 128], images))


@needs_ort
def test_onnx_embedder_checks_its_input_and_threads():
    extractor = FeatureExtractor("resnet18", ["layer1"], pretrained=False)
    with pytest.raises(ValueError, match="threads"):
        OnnxEmbedder(extractor, torch.arange(8), [64], threads=0)
    onnx_embed = OnnxEmbedder(extractor, torch.arange(8), [64])
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        onnx_embed(torch.randn(3, 64, 64))
    # Exporting leaves the extractor usable and unchanged for the PyTorch path.
    assert next(extractor.parameters()).device.type == "cpu" and not extractor.training

