"""The Padim estimator: embedding, streaming fit, prediction, calibration, executors, model files."""

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from padim.errors import DataError, ModelFileError, NotFittedError, OptionError
from padim.features.embedding import embed, select_channels, split_channels, to_image_layout, to_patch_layout
from padim.io.images import preprocess
from padim.maps.anomaly_map import AnomalyMapGenerator
from padim.model.padim import Padim
from padim.model.settings import resolve
from padim.modelfile.padim_file import FORMAT_VERSION
from padim.stats.gaussian import pack_triangular, precision_cholesky_from_stats, precision_from_cholesky

from support import TINY

SMALL = dict(TINY, n_features=24, seed=5)


def batches(n, size=64, seed=0, count=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, size, size, generator=g, dtype=torch.float64).float() for _ in range(count)]


@pytest.fixture(scope="module")
def fitted():
    return Padim(**SMALL).fit(batches(10)[0])


def test_embedding_equals_concatenate_then_select():
    g = torch.Generator().manual_seed(0)
    features = [
        torch.randn(2, 3, 8, 8, generator=g),
        torch.randn(2, 4, 4, 4, generator=g),
        torch.randn(2, 5, 3, 3, generator=g),
    ]
    idx = select_channels(12, 7, seed=1)
    full = torch.cat([features[0]] + [F.interpolate(f, size=(8, 8), mode="nearest") for f in features[1:]], dim=1)
    patches = embed(features, split_channels(idx, [3, 4, 5]))
    assert patches.shape == (64, 2, 7)
    assert torch.equal(patches, to_patch_layout(full[:, idx]))
    assert torch.equal(to_image_layout(patches, (8, 8)), full[:, idx])


def test_embedding_on_a_coarser_grid_averages_finer_layers_and_resizes_coarser_ones():
    g = torch.Generator().manual_seed(1)
    features = [
        torch.randn(2, 3, 8, 12, generator=g),
        torch.randn(2, 4, 4, 6, generator=g),
        torch.randn(2, 5, 2, 3, generator=g),
    ]
    idx = split_channels(select_channels(12, 9, seed=2), [3, 4, 5])
    patches = embed(features, idx, grid=(4, 6)).numpy()  # the grid of the second layer
    expected = np.zeros((4, 6, 2, 9))
    for i in range(4):
        for j in range(6):
            parts = [
                features[0][:, idx[0], 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean(dim=(2, 3)),
                features[1][:, idx[1], i, j],
                features[2][:, idx[2], i // 2, j // 2],
            ]
            expected[i, j] = torch.cat(parts, dim=1).numpy()
    np.testing.assert_allclose(patches, expected.reshape(24, 2, 9), rtol=1e-6, atol=1e-6)


def test_init_only_stores_and_fit_checks():
    model = Padim(n_features=-5, image_size=0, backend="tensorrt")  # stored as given, nothing checked yet
    assert model.n_features == -5 and not hasattr(model, "mean_") and not hasattr(model, "channel_idx_")
    for kwargs, message in [
        (dict(backbone="resnet18", n_features=500), r"n_features must be an int from 1 to 448.*got 500"),
        (dict(image_size=0), "image_size must be an int or"),
        (dict(image_size=16), "image_size 16x16 is smaller than the backbone needs"),
        (dict(image_size=8, sigma=4), "smaller than the backbone needs"),
        (dict(backbone="alexnet"), "backbone must be one of"),
        (dict(backend="tensorrt"), "backend must be"),
        (dict(backend="onnxruntime", device="cuda"), "runs on the CPU"),
        (dict(holdout=1.0), "holdout"),
        (dict(seed=-1), "seed"),
        (dict(sigma=float("nan")), "sigma"),
    ]:
        with pytest.raises(OptionError, match=message):
            Padim(**{**SMALL, "pretrained": False, **kwargs}).fit(torch.zeros(2, 3, 64, 64))


@pytest.mark.slow
def test_channel_selection_is_seeded_and_saved_with_the_model(tmp_path, fitted):
    assert torch.equal(select_channels(448, 100, 3), select_channels(448, 100, 3))
    assert not torch.equal(select_channels(448, 100, 3), select_channels(448, 100, 4))
    assert fitted.channel_idx_.unique().numel() == 24
    fitted.save(tmp_path / "m.padim")
    assert torch.equal(Padim.load(tmp_path / "m.padim").channel_idx_, fitted.channel_idx_)


def naive_fit(model, images):
    """Embeddings of every image, then np.cov per patch position: PaDiM Sec. 3.2 written out."""
    x = model.embed(images).double().numpy()  # (P, N, D)
    p, _, d = x.shape
    mean = x.mean(1)
    cov = np.stack([np.cov(x[i], rowvar=False) + model.eps * np.eye(d) for i in range(p)])
    return mean, np.linalg.inv(cov)


@pytest.mark.slow
@pytest.mark.parametrize("stats_dtype", ["float32", "float64"])
def test_fit_matches_naive_per_patch_covariance(stats_dtype):
    """The float32 factors give the naive precision; the model keeps exactly them rounded to float16, packed."""
    images = batches(12)[0]
    model = Padim(**SMALL, stats_dtype=stats_dtype).fit(images, keep_stats=True)
    mean, precision = naive_fit(model, images)
    np.testing.assert_allclose(model.mean_.numpy(), mean, rtol=1e-5, atol=1e-6)
    factor = precision_cholesky_from_stats(model.stats_, model.eps)
    np.testing.assert_allclose(precision_from_cholesky(factor).numpy(), precision, rtol=1e-3, atol=1e-3)
    assert model.precision_cholesky_packed_.dtype == torch.float16
    assert torch.equal(model.precision_cholesky_packed_, pack_triangular(factor).half())
    # float16 keeps 11 bits: the precision's entries within 2^-10 of its diagonal scale
    scale = np.sqrt(np.einsum("pii,pjj->pij", precision, precision))
    assert np.abs(model.precision().numpy() - precision).max() <= 2**-10 * 2 * scale.max()


@pytest.mark.slow
def test_streamed_fit_equals_one_shot_equals_merged_halves():
    parts = batches(4, count=5)
    exact = dict(SMALL, stats_dtype="float64")
    one = Padim(**exact).fit(torch.cat(parts), keep_stats=True)
    streamed = Padim(**exact).fit(iter(parts), keep_stats=True)  # a generator of batches
    first = Padim(**exact).fit(parts[:2], keep_stats=True)
    second = Padim(**exact).partial_fit(parts[2]).partial_fit(torch.cat(parts[3:]))
    merged = first.stats_.merge(second.stats_)
    for stats in (streamed.stats_, merged, second.stats_.merge(first.stats_)):
        assert stats.count == one.stats_.count == 20
        np.testing.assert_allclose(stats.mean.numpy(), one.stats_.mean.numpy(), rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(stats.m2.numpy(), one.stats_.m2.numpy(), rtol=1e-6, atol=1e-9)


@pytest.mark.slow
def test_predict_is_the_seed_generator_on_the_embedding(fitted):
    images = batches(3, seed=9)[0]
    prediction = fitted.predict(images)
    generator = AnomalyMapGenerator(fitted.image_size_, sigma=fitted.sigma)
    embedding = to_image_layout(fitted.embed(images), fitted.feature_size_)
    expected = generator(embedding=embedding, mean=fitted.mean_.T, inv_covariance=fitted.precision())[:, 0].numpy()
    assert prediction.anomaly_map.shape == (3, 64, 64)
    assert np.abs(prediction.anomaly_map - expected).max() <= 1e-5 * np.abs(expected).max()
    np.testing.assert_array_equal(prediction.score, prediction.anomaly_map.reshape(3, -1).max(1))
    assert prediction.label is None and prediction.region is None  # fitted on tensors: uncalibrated


@pytest.mark.slow
def test_onnxruntime_and_torch_run_the_same_pipeline(tiny_model, mvtec_tree):
    """One model, both executors: the in-memory ONNX graph and eager PyTorch give the same outputs."""
    on_torch = copy.copy(tiny_model)
    on_torch.backend, on_torch._runners = "torch", {}
    ort, eager = tiny_model.predictor(), on_torch.predictor()
    assert (ort.kind, eager.kind) == ("onnxruntime", "torch")
    images = sorted((mvtec_tree / "test").glob("*/*.png"))
    a, b = ort.predict(images), eager.predict(images)
    assert np.abs(a.anomaly_map - b.anomaly_map).max() <= 1e-4 * np.abs(b.anomaly_map).max()
    np.testing.assert_allclose(a.score, b.score, rtol=1e-4)
    np.testing.assert_allclose(a.normalized_score, b.normalized_score, atol=1e-4)
    assert a.label.tolist() == b.label.tolist()
    np.testing.assert_allclose(
        tiny_model.embed(preprocess(Image.open(images[0]), 64)).numpy(),
        on_torch.embed(preprocess(Image.open(images[0]), 64)).numpy(),
        rtol=1e-4,
        atol=1e-4,
    )


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_lite0"])
def test_onnxruntime_backend_fits_the_torch_model(backbone):
    config = dict(SMALL, backbone=backbone)
    images, test = batches(8)[0], batches(3, seed=2)[0]
    on_torch = Padim(**config, backend="torch").fit(images)
    on_ort = Padim(**config, backend="onnxruntime").fit(images)
    expected, got = on_torch.predict(test).anomaly_map, on_ort.predict(test).anomaly_map
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
    np.testing.assert_allclose(on_ort.mean_.numpy(), on_torch.mean_.numpy(), rtol=1e-4, atol=1e-5)


def test_a_shifted_patch_scores_higher(fitted):
    clean = batches(1, seed=3)[0]
    broken = clean.clone()
    broken[:, :, 20:36, 20:36] += 4.0
    maps = fitted.predict(torch.cat([clean, broken])).anomaly_map
    assert maps[1, 20:36, 20:36].mean() > 1.5 * maps[0, 20:36, 20:36].mean()


@pytest.mark.slow
def test_save_load_predict_gives_identical_maps(tmp_path, fitted):
    loaded = Padim.load(fitted.save(tmp_path / "model.padim"))
    images = batches(2, seed=4)[0]
    np.testing.assert_array_equal(loaded.predict(images).anomaly_map, fitted.predict(images).anomaly_map)
    assert loaded.config() == fitted.config()


def test_model_file_holds_no_pickle(tmp_path, fitted):
    data = fitted.save(tmp_path / "m.padim").read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    meta = json.loads(header["__metadata__"]["padim"])
    assert meta["format_version"] == FORMAT_VERSION and meta["backbone"] == "resnet18"
    assert b"\x80\x04\x95" not in data[: 8 + header_len]  # no pickle protocol-4 frame in the header


def rewrite_meta(good: bytes, change) -> bytes:
    """The model file ``good`` with its padim metadata changed by ``change(meta)``."""
    header_len = int.from_bytes(good[:8], "little")
    header = json.loads(good[8 : 8 + header_len])
    meta = json.loads(header["__metadata__"]["padim"])
    change(meta)
    header["__metadata__"]["padim"] = json.dumps(meta)
    new_header = json.dumps(header).encode()
    new_header += b" " * (-len(new_header) % 8)
    return len(new_header).to_bytes(8, "little") + new_header + good[8 + header_len :]


def test_bad_model_files_fail_clearly(tmp_path, fitted):
    good = fitted.save(tmp_path / "m.padim").read_bytes()
    (tmp_path / "truncated.padim").write_bytes(good[: len(good) // 2])
    (tmp_path / "noise.padim").write_bytes(b"not a model at all" * 10)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "foreign.padim"))
    (tmp_path / "newer.padim").write_bytes(rewrite_meta(good, lambda m: m.update(format_version=FORMAT_VERSION + 1)))
    (tmp_path / "badsize.padim").write_bytes(rewrite_meta(good, lambda m: m.update(feature_size=[3, 3])))
    (tmp_path / "badversion.padim").write_bytes(rewrite_meta(good, lambda m: m.update(format_version=[1])))
    for name, reason in [
        ("truncated", "truncated or corrupt"),
        ("noise", "truncated or corrupt"),
        ("foreign", "not a padim model"),
        ("newer", "newer padim-toolkit"),
        ("badsize", "inconsistent"),
        ("badversion", "format version"),
        ("missing", "not found"),
    ]:
        with pytest.raises(ModelFileError, match=reason) as info:
            Padim.load(tmp_path / f"{name}.padim")
        assert f"{name}.padim" in str(info.value) and "\n" not in str(info.value)


def test_failed_save_leaves_the_existing_file_intact(tmp_path, fitted, monkeypatch):
    path = fitted.save(tmp_path / "m.padim")
    before = path.read_bytes()

    def broken_save(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("safetensors.numpy.save_file", broken_save)
    with pytest.raises(OSError, match="m.padim: cannot write .No space left on device.; nothing was changed"):
        fitted.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.padim"]


@pytest.mark.slow
def test_fit_on_files_holds_out_good_images_for_the_threshold(mvtec_tree):
    model = Padim(**SMALL, holdout=0.25, quantile=1.0).fit(mvtec_tree, workers=0)
    assert model.n_images_ == 6  # 8 good training images, 2 held out
    paths = sorted((mvtec_tree / "train" / "good").iterdir())
    order = np.random.default_rng(SMALL["seed"]).permutation(8)
    held = [paths[i] for i in sorted(order[:2])]
    held_scores = model.predict(held).score
    # The fit scores them with its compact executor (Padim.predictor(compact=True)): equal to 1e-6.
    assert model.calibration_.threshold == pytest.approx(held_scores.max(), rel=1e-6)
    assert model.calibration_.center == pytest.approx(np.median(held_scores), rel=1e-6)
    prediction = model.predict(held)
    assert prediction.label.tolist() == (held_scores >= model.calibration_.threshold).tolist()
    assert prediction.normalized_score.max() == pytest.approx(0.5, abs=1e-5)


def test_calibrate_with_defective_images_sets_the_f1_threshold(tiny_model, mvtec_tree):
    from padim.eval.metrics import f1_max

    model = copy.copy(tiny_model)
    model.calibrate(mvtec_tree / "test" / "good", mvtec_tree / "test" / "scratch")
    good = tiny_model.predict(mvtec_tree / "test" / "good").score
    bad = tiny_model.predict(mvtec_tree / "test" / "scratch").score
    f1, threshold = f1_max(np.r_[np.zeros(len(good)), np.ones(len(bad))], np.r_[good, bad])
    assert model.calibration_.source == "f1" and model.calibration_.threshold == pytest.approx(threshold)
    assert tiny_model.calibration_.source == "normal"  # the copy changed, not the shared model


def test_predict_accepts_paths_pil_images_and_arrays(mvtec_tree, fitted):
    path = sorted((mvtec_tree / "test" / "good").iterdir())[0]
    image = Image.open(path)
    by_path = fitted.predict(str(path)).anomaly_map
    by_pil = fitted.predict(image).anomaly_map
    by_array = fitted.predict(preprocess(image, 64)).anomaly_map
    np.testing.assert_allclose(by_path, by_pil, rtol=1e-5)
    np.testing.assert_allclose(by_path, by_array, rtol=1e-5)
    assert fitted.predict([path, path]).anomaly_map.shape == (2, 64, 64)


@pytest.mark.slow
def test_bad_inputs_are_named():
    with pytest.raises(OptionError, match=r"\(N, 3, H, W\)"):
        Padim(**SMALL).fit(torch.zeros(2, 64, 64, 3))
    with pytest.raises(DataError, match="at least 2"):
        Padim(**SMALL).fit(torch.zeros(1, 3, 64, 64))
    with pytest.raises(DataError, match="no-such-folder"):
        Padim(**SMALL).fit("no-such-folder")


def test_n_features_defaults_follow_the_backbone():
    assert resolve(Padim(pretrained=False)).n_features == 100
    assert resolve(Padim(backbone="wide_resnet50_2")).n_features == 550
    assert resolve(Padim(backbone="resnet18", layers=["layer1"])).n_features == 64


def test_predict_before_fit_says_call_fit():
    with pytest.raises(NotFittedError, match="call fit"):
        Padim(**SMALL).predict(torch.zeros(1, 3, 64, 64))


@pytest.mark.slow
def test_fit_memory_is_a_fixed_size_accumulator():
    model = Padim(**SMALL).fit(batches(3, count=4), keep_stats=True)
    p = math.prod(model.feature_size_)
    assert model.stats_.m2.shape == (p, 24 * 25 // 2) and model.stats_.count == 12  # packed upper triangles


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    images = batches(6)[0]
    cpu = Padim(**SMALL).fit(images)
    gpu = Padim(**SMALL, device="cuda").fit(images)
    assert gpu.predictor().kind == "torch" and gpu.mean_.device.type == "cuda"
    test = batches(2, seed=1)[0]
    np.testing.assert_allclose(gpu.predict(test).anomaly_map, cpu.predict(test).anomaly_map, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_precision_in_place_equals_kept_statistics():
    images = batches(9)[0]
    kept = Padim(**SMALL).fit(images, keep_stats=True)
    spent = Padim(**SMALL).fit(images)
    assert spent.stats_ is None
    np.testing.assert_array_equal(spent.precision_cholesky_packed_.numpy(), kept.precision_cholesky_packed_.numpy())


@pytest.mark.slow
def test_partial_fit_then_predict_works_and_stays_mergeable():
    model = Padim(**SMALL).partial_fit(batches(5)[0])
    assert model.predict(batches(1, seed=1)[0]).anomaly_map.shape == (1, 64, 64)
    assert model.stats_.count == 5 and model.n_images_ == 5
    model.partial_fit(batches(3, seed=2)[0])
    assert model.stats_.count == model.n_images_ == 8


@pytest.mark.slow
@pytest.mark.parametrize("version", [1, 2])
def test_files_of_formats_1_and_2_load_and_predict_the_same(tmp_path, fitted, version):
    """padim-toolkit 0.1 stored the precision (format 1), then its full float32 factor (format 2)."""
    from safetensors.torch import save_file

    from padim.modelfile.padim_file import read_model_file
    from padim.stats.gaussian import unpack_triangular

    arrays, meta = read_model_file(fitted.save(tmp_path / "new.padim"))
    tensors = {name: torch.from_numpy(array) for name, array in arrays.items()}
    factor = unpack_triangular(tensors.pop("precision_cholesky_packed"))
    if version == 1:
        tensors["precision"] = precision_from_cholesky(factor)
    else:
        tensors["precision_cholesky"] = factor
    meta = {k: v for k, v in meta.items() if k not in ("grid_stride", "tile_size", "backbone_dtype", "tensor_sha256")}
    save_file(tensors, str(tmp_path / "old.padim"), metadata={"padim": json.dumps({**meta, "format_version": version})})
    old = Padim.load(tmp_path / "old.padim")
    assert (old.grid_stride_, old.tile_size_) == (4, 0)
    assert old.backbone_dtype == "float32" and old.quantization_ is None
    images = batches(2, seed=6)[0]
    expected = fitted.predict(images).anomaly_map
    assert np.abs(old.predict(images).anomaly_map - expected).max() <= 1e-4 * np.abs(expected).max()
