"""int8: the backbone quantised, calibrated on the good images, the same graph everywhere it runs."""

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import padim
from padim.errors import ModelFileError, OptionError
from padim.graph.modules import Embedder, Scorer
from padim.graph.quantize import BACKBONE_SCOPE, Quantization, calibrate
from padim.graph.trace import onnx_bytes
from padim.io.images import list_images
from padim.model.export import export_onnx, model_proto
from padim.model.fitting import split_first
from padim.model.padim import Padim
from padim.modelfile.padim_file import FORMAT_VERSION, read_model_file
from padim.runtime.opening import open_model

from support import TINY


def image_paths(tree):
    return [p for sub in ("good", "scratch", "spot") for p in list_images(tree / "test" / sub)]


def run_python(code, cwd):
    """Run ``code`` in a fresh interpreter that imports this checkout's padim (not another install)."""
    env = dict(os.environ, PYTHONPATH=str(Path(padim.__file__).parents[1]))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=cwd, env=env)


def relative_error(actual, expected):
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


@pytest.fixture(scope="module")
def int8(mvtec_tree, tmp_path_factory):
    """:data:`TINY` in int8 fitted on ``mvtec_tree``, its ``.padim`` file and its ONNX export."""
    model = Padim(**TINY, backbone_dtype="int8").fit(mvtec_tree)
    folder = tmp_path_factory.mktemp("int8")
    return model, model.save(folder / "int8.padim"), export_onnx(model, folder / "int8.onnx")


@pytest.mark.slow
def test_fit_and_predict_see_the_same_int8_features(mvtec_tree, int8, tiny_model):
    model, _, _ = int8
    assert model.quantization_.n_images == 7 and model.quantization_.method == "minmax"  # 8 good, 1 held out
    assert model.calibration_ is not None and model.config()["backbone_dtype"] == "int8"
    paths = image_paths(mvtec_tree)
    prediction = model.predict(paths)
    # The maps of the int8 pipeline graph equal the float32 head run in torch on the features of
    # the int8 embedding graph that fitted the Gaussians: both graphs quantise the same backbone.
    from padim.io.loading import as_batches

    batch = next(as_batches(paths, (64, 64), batch_size=len(paths)))
    patches = model.embed(batch)
    scorer = Scorer(model.feature_size_, model.image_size_, model.sigma)
    maps = scorer(patches, model.mean_, model.precision_cholesky_packed_, torch.tensor(1.0), torch.tensor(1.0))[0]
    assert relative_error(prediction.anomaly_map, maps.numpy()) < 1e-4
    # And they are int8 features: not the float32 ones.
    float_patches = tiny_model.embed(batch)
    assert relative_error(patches.numpy(), float_patches.numpy()) > 1e-3


@pytest.mark.slow
def test_only_the_backbone_is_quantised(int8):
    model, _, _ = int8
    proto = model_proto(model)
    made = {out: node for node in proto.graph.node for out in node.output}
    quantised = [made.get(node.input[0]) for node in proto.graph.node if node.op_type == "QuantizeLinear"]
    assert quantised and all(node is None or BACKBONE_SCOPE in node.name for node in quantised)  # None: images
    convs = [node for node in proto.graph.node if node.op_type == "Conv"]
    assert convs and all(made[node.input[1]].op_type == "DequantizeLinear" for node in convs)  # int8 weights
    for node in proto.graph.node:  # the head (Mahalanobis, resize and blur) reads float32 tensors only
        if node.op_type in ("MatMul", "ReduceL2", "ReduceMax"):
            assert all(made.get(name) is None or made[name].op_type != "DequantizeLinear" for name in node.input)


@pytest.mark.slow
def test_padim_and_onnx_files_agree(mvtec_tree, int8):
    model, padim_file, onnx_file = int8
    paths = image_paths(mvtec_tree)
    expected = model.predict(paths)
    for path in (padim_file, onnx_file):
        got = open_model(path).predict(paths)
        assert relative_error(got.anomaly_map, expected.anomaly_map) < 1e-4
        np.testing.assert_array_equal(got.label, expected.label)
    assert open_model(onnx_file).config["backbone_dtype"] == "int8"
    # The file holds the graph the .padim model runs: the same maps, to the bit.
    np.testing.assert_array_equal(open_model(onnx_file).predict(paths).anomaly_map, expected.anomaly_map)


def test_quantization_round_trips_through_the_model_file(int8):
    model, padim_file, _ = int8
    _, meta = read_model_file(padim_file)
    assert meta["format_version"] == FORMAT_VERSION and meta["backbone_dtype"] == "int8"
    assert Quantization.from_dict(meta["quantization"]) == model.quantization_
    loaded = Padim.load(padim_file)
    assert loaded.quantization_ == model.quantization_ and loaded.backbone_dtype == "int8"
    assert all(isinstance(v, float) for lo_hi in loaded.quantization_.ranges.values() for v in lo_hi)


@pytest.mark.slow
def test_another_process_rebuilds_the_same_int8_graph(mvtec_tree, int8, tmp_path):
    """A fresh process, given only the model file (no training images), gives the same maps."""
    model, padim_file, _ = int8
    paths = image_paths(mvtec_tree)
    code = textwrap.dedent(
        f"""
        import numpy as np
        from padim.model.padim import Padim
        prediction = Padim.load({str(padim_file)!r}).predict({[str(p) for p in paths]!r})
        np.save("maps.npy", prediction.anomaly_map)
        """
    )
    done = run_python(code, tmp_path)
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "maps.npy"), model.predict(paths).anomaly_map)


def test_torch_free_int8_onnx(mvtec_tree, int8, tmp_path):
    _, _, onnx_file = int8
    paths = image_paths(mvtec_tree)
    code = textwrap.dedent(
        f"""
        import json, sys
        sys.modules["torch"] = None  # "import torch" raises ImportError from here on
        from padim.runtime.opening import open_model
        prediction = open_model({str(onnx_file)!r}).predict({[str(p) for p in paths]!r})
        loaded = sorted(m for m in sys.modules if m.split(".")[0] == "torch" and sys.modules[m] is not None)
        print(json.dumps({{"score": prediction.score.tolist(), "loaded": loaded}}))
        """
    )
    done = run_python(code, tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []
    np.testing.assert_array_equal(np.float32(result["score"]), open_model(onnx_file).predict(paths).score)


def test_minmax_ranges(int8):
    """The input's range is the images' own; ranges over a set are the extremes over its parts."""
    model, _, _ = int8
    graph = onnx_bytes(
        Embedder(model.extractor_, model.channel_idx_),
        {"images": torch.zeros(2, 3, 64, 64)},
        ["patches"],
        {"images": 0, "patches": 1},
    )
    images = torch.randn(6, 3, 64, 64, generator=torch.Generator().manual_seed(0)).numpy()
    whole, first, second = calibrate(graph, images), calibrate(graph, images[:4]), calibrate(graph, images[4:])
    assert whole.ranges["images"] == (float(images.min()), float(images.max()))
    assert whole.ranges.keys() == first.ranges.keys() and len(whole.ranges) > 10
    for name, (low, high) in whole.ranges.items():
        assert low == min(first.ranges[name][0], second.ranges[name][0]), name
        assert high == max(first.ranges[name][1], second.ranges[name][1]), name
    assert whole.n_images == 6


def test_split_first_keeps_the_whole_stream():
    batches = [np.full((3, 3, 2, 2), i, np.float32) for i in range(4)]
    first, stream = split_first(iter(batches), 5)
    assert first.shape == (5, 3, 2, 2) and first[:, 0, 0, 0].tolist() == [0, 0, 0, 1, 1]
    assert [b[0, 0, 0, 0] for b in stream] == [0, 1, 2, 3]


def test_int8_options_and_damaged_records(int8, tmp_path):
    model, padim_file, _ = int8
    with pytest.raises(OptionError, match="backbone_dtype must be one of"):
        Padim(**TINY, backbone_dtype="float16").fit(torch.randn(4, 3, 64, 64))
    for options, needle in ((dict(backend="torch"), "backend='torch'"), (dict(device="cuda"), "device='cuda'")):
        with pytest.raises(OptionError, match=needle):  # CUDA keeps float32
            Padim(**TINY, backbone_dtype="int8", **options).fit(torch.randn(4, 3, 64, 64))
        with pytest.raises(OptionError, match="is an int8 model"):
            Padim.load(padim_file, **options)
    with pytest.raises(ValueError, match="low <= high"):
        Quantization.from_dict(dict(model.quantization_.to_dict(), ranges={"images": [1.0, 0.0]}))
    from padim.modelfile.padim_file import write_model_file

    tensors, meta = read_model_file(padim_file)
    del meta["quantization"]
    write_model_file(tmp_path / "bad.padim", tensors, {k: v for k, v in meta.items() if k != "format_version"})
    with pytest.raises(ModelFileError, match="bad.padim: inconsistent"):
        Padim.load(tmp_path / "bad.padim")


@pytest.mark.slow
def test_cli_fit_export_predict_int8(mvtec_tree, tmp_path, capsys):
    from padim.cli.main import main

    fast = ["--backbone", "resnet18", "--random-weights", "--image-size", "64", "--n-features", "16", "--quiet"]
    assert main(["fit", str(mvtec_tree), "-o", str(tmp_path / "m.padim"), "--backbone-dtype", "int8", *fast]) == 0
    assert Padim.load(tmp_path / "m.padim").backbone_dtype == "int8"
    assert main(["export", str(tmp_path / "m.padim"), "-o", str(tmp_path / "m.onnx"), "--quiet"]) == 0
    test_folder = mvtec_tree / "test" / "scratch"
    assert main(["predict", str(tmp_path / "m.onnx"), str(test_folder), "-o", str(tmp_path / "out"), "--quiet"]) == 0
    with open(tmp_path / "out" / "predictions.csv") as handle:
        scores = [float(row["score"]) for row in csv.DictReader(handle)]
    np.testing.assert_allclose(scores, open_model(tmp_path / "m.padim").predict(test_folder).score, rtol=1e-4)
    capsys.readouterr()


@pytest.mark.slow
def test_int8_with_a_coarser_grid_and_tiles_fits_and_evaluates(mvtec_tree, tmp_path, capsys):
    """int8 calibration builds its embedder with the model's grid and tiles (one builder): no patch-count mismatch."""
    from padim.cli.main import main

    model = tmp_path / "m.padim"
    fast = ["--backbone", "resnet18", "--random-weights", "--n-features", "16", "--quiet", "--workers", "0"]
    assert main(["fit", str(mvtec_tree), "-o", str(model), "--backbone-dtype", "int8", "--grid-stride", "8",
                 "--image-size", "64", *fast]) == 0  # fmt: skip
    fitted = Padim.load(model)
    assert fitted.feature_size_ == (8, 8) and fitted.grid_stride_ == 8 and fitted.quantization_ is not None
    assert main(["evaluate", str(model), str(mvtec_tree), "--json", str(tmp_path / "m.json"), "--quiet"]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["image_auroc"] is not None
    tiled = tmp_path / "tiled.padim"
    assert main(["fit", str(mvtec_tree), "-o", str(tiled), "--backbone-dtype", "int8", "--image-size", "64x128",
                 "--tile-size", "64", *fast]) == 0  # fmt: skip
    assert Padim.load(tiled).tile_size_ == 64
    capsys.readouterr()
