"""The padim command end to end on a tiny synthetic MVTec tree, and every bad input, in-process."""

import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import f1_score

from padim.cli.main import main
from padim.model import export as onnx_format
from padim.model.padim import Padim
from padim.modelfile import padim_file as model_file_format
from padim.modelfile.info import file_sha256
from padim.runtime.opening import open_model

FAST = [
    "--backbone",
    "resnet18",
    "--random-weights",
    "--image-size",
    "64",
    "--n-features",
    "16",
    "--workers",
    "0",
    "--quiet",
]


def run(capsys, *args):
    """``padim ARGS`` in this process: exit code, stdout and stderr (argparse's exits included)."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit:
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(result, *needles):
    code, _, err = result
    assert code == 2, err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and lines, err
    assert lines[-1].startswith("padim"), err  # argparse prints its usage line before it
    for needle in needles:
        assert str(needle) in lines[-1], (needle, lines[-1])


@pytest.mark.slow
def test_fit_writes_a_calibrated_model(mvtec_tree, tmp_path, capsys):
    assert run(capsys, "fit", mvtec_tree, "-o", tmp_path / "m.padim", *FAST)[0] == 0
    model = Padim.load(tmp_path / "m.padim")
    assert model.calibration_ is not None and model.n_images_ == 7  # 8 good, 1 held out
    assert model.image_size_ == (64, 64) and len(model.channel_idx_) == 16


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny_padim", "tiny_onnx"])
def test_predict_writes_csv_and_overlays(model, mvtec_tree, tmp_path, capsys, request):
    model_file = request.getfixturevalue(model)
    out = tmp_path / "out"
    inputs = [mvtec_tree / "test" / "scratch", mvtec_tree / "test" / "good"]
    assert run(capsys, "predict", model_file, *inputs, "-o", out, "--overlays", "all", "--quiet")[0] == 0
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert list(rows[0])[:5] == ["path", "score", "normalized_score", "label", "overlay"]
    assert len(rows) == 2 + 3
    expected = open_model(model_file).predict([r["path"] for r in rows])
    np.testing.assert_allclose([float(r["score"]) for r in rows], expected.score, rtol=1e-5)
    assert [r["label"] for r in rows] == ["anomalous" if x else "normal" for x in expected.label]
    # Stems repeat across folders (scratch/000.png, good/000.png): the pictures mirror the folders.
    assert [r["overlay"] for r in rows[:3:2]] == ["overlays/scratch/000.jpg", "overlays/good/000.jpg"]
    assert len(list(out.rglob("*.jpg"))) == 5
    # The image at its own size, and the colour bar under it.
    width, height = Image.open(rows[0]["path"]).size
    overlay = Image.open(out / rows[0]["overlay"])
    assert overlay.width == width and overlay.height > height


def test_predict_one_image_without_output_prints_its_verdict(tiny_onnx, mvtec_tree, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image = mvtec_tree / "test" / "scratch" / "000.png"
    code, out, _ = run(capsys, "predict", tiny_onnx, image, "--quiet")
    assert code == 0 and list(tmp_path.iterdir()) == []
    expected = open_model(tiny_onnx).predict([image])
    label = "anomalous" if expected.label[0] else "normal"
    assert out.splitlines() == [out.strip()] and out.startswith(f"{image}: {label}  score {expected.score[0]:.4f}")
    assert_one_line_error(run(capsys, "predict", tiny_onnx, image.parent), "-o OUTDIR is needed for 2 images")


def test_predict_reads_lists_and_subfolders(tiny_onnx, mvtec_tree, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(mvtec_tree)
    (tmp_path / "list.txt").write_text("# images to check\ntest/good/000.png\n\ntest/spot\n")
    assert run(capsys, "predict", tiny_onnx, f"@{tmp_path / 'list.txt'}", "-o", tmp_path / "a", "--quiet")[0] == 0
    rows = list(csv.DictReader(open(tmp_path / "a" / "predictions.csv")))
    assert [r["path"] for r in rows] == ["test/good/000.png", "test/spot/000.png", "test/spot/001.png"]
    assert_one_line_error(run(capsys, "predict", tiny_onnx, "test", "-o", tmp_path / "b"), "test", "--recursive")
    assert run(capsys, "predict", tiny_onnx, "test", "-r", "-o", tmp_path / "b", "--quiet")[0] == 0
    assert len(list(csv.DictReader(open(tmp_path / "b" / "predictions.csv")))) == 7


def test_predict_names_bad_inputs_in_one_line(tiny_onnx, mvtec_tree, tmp_path, capsys):
    good = mvtec_tree / "test" / "good"
    (tmp_path / "list.txt").write_text(f"{good / '000.png'}\n{tmp_path / 'gone.png'}\n")
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "file").write_text("x")
    for args, needles in (
        ([tmp_path / "missing.png"], ["missing.png", "no such image"]),
        ([f"@{tmp_path / 'nolist.txt'}"], ["nolist.txt", "no such list file"]),
        ([f"@{tmp_path / 'list.txt'}"], ["list.txt line 2", "gone.png"]),
        ([good, tmp_path / "text.png"], ["text.png", "not an image"]),
        ([good, "-o", tmp_path / "file"], ["file", "not a folder"]),
    ):
        if "-o" not in args:
            args = [*args, "-o", tmp_path / "out"]
        assert_one_line_error(run(capsys, "predict", tiny_onnx, *args), *needles)
    # The rows of the images before the unreadable one are kept.
    assert len(list(csv.DictReader(open(tmp_path / "out" / "predictions.csv")))) == 3


def test_predict_exits_3_when_a_score_is_not_finite(tiny_model, mvtec_tree, tmp_path, capsys, monkeypatch):
    from test_batch_predict import NonFinite

    model = tmp_path / "model.padim"  # opened by the patched open_model
    model.write_bytes(b"")
    monkeypatch.setattr("padim.cli.run.open_model", lambda *a, **k: NonFinite(tiny_model.predictor(), np.nan))
    code, _, err = run(capsys, "predict", model, mvtec_tree / "test" / "good", "-o", tmp_path / "out", "--quiet")
    rows = list(csv.DictReader(open(tmp_path / "out" / "predictions.csv")))
    assert code == 3 and [r["label"] == "error" for r in rows] == [False, True, False]
    assert err.strip().splitlines() == [
        f"padim predict: error: {rows[1]['path']}: the score is not a finite number; labelled error"
    ]
    image = mvtec_tree / "test" / "good" / "000.png"
    monkeypatch.setattr("padim.cli.run.open_model", lambda *a, **k: NonFinite(tiny_model.predictor(), np.inf, 0))
    code, out, err = run(capsys, "predict", model, image, "--quiet")
    assert code == 3 and out == f"{image}: error  score inf (not a finite number)\n" and str(image) in err


@pytest.mark.slow
def test_evaluate_padim_and_onnx_give_the_same_metrics(tiny_padim, tiny_onnx, mvtec_tree, tmp_path, capsys):
    code, table, _ = run(
        capsys,
        "evaluate",
        tiny_padim,
        mvtec_tree,
        "--json",
        tmp_path / "m.json",
        "--report",
        tmp_path / "report",
        "--quiet",
    )
    assert code == 0 and "overall" in table and "scratch" in table and "spot" in table
    metrics = json.loads((tmp_path / "m.json").read_text())
    for key in ("image_auroc", "pixel_auroc", "aupro", "image_f1_max", "threshold", "n_images"):
        assert key in metrics
    assert metrics["n_images"] == 7 and set(metrics["per_defect"]) == {"scratch", "spot"}
    assert metrics["per_defect"]["scratch"]["n_images"] == 2  # its own images, not the good ones too
    # Every image's verdict, in the JSON too, and the counts they add up to.
    images = metrics["images"]
    assert len(images) == 7 and {row["defect_type"] for row in images} == {"good", "scratch", "spot"}
    threshold = metrics["threshold"]
    for row in images:
        assert row["verdict"] == ("DEFECT" if row["score"] >= threshold else "OK")
        assert row["correct"] == ((row["verdict"] == "DEFECT") == (row["defect_type"] != "good"))
    wrong = sum(not row["correct"] for row in images)
    assert metrics["confusion"]["false_alarms"] + metrics["confusion"]["misses"] == wrong
    assert {"model", "F1-max", "100% recall"} <= {row["name"] for row in metrics["thresholds"]}
    assert (tmp_path / "report" / "index.html").is_file()
    assert len(list((tmp_path / "report").glob("overlay_*.png"))) == wrong
    assert run(capsys, "evaluate", tiny_onnx, mvtec_tree, "--json", tmp_path / "o.json", "--quiet")[0] == 0
    onnx_metrics = json.loads((tmp_path / "o.json").read_text())
    for key in ("image_auroc", "pixel_auroc", "aupro", "image_f1_max", "threshold"):
        assert onnx_metrics[key] == pytest.approx(metrics[key], abs=1e-4), key


@pytest.mark.slow
def test_export_then_predict_with_the_onnx_file(tiny_padim, mvtec_tree, tmp_path, capsys):
    assert run(capsys, "export", tiny_padim, "-o", tmp_path / "m.onnx", "--quiet")[0] == 0
    assert open_model(tmp_path / "m.onnx").config == open_model(tiny_padim).config


def test_missing_and_empty_folders(tmp_path, capsys):
    assert_one_line_error(run(capsys, "fit", tmp_path / "nope", "-o", tmp_path / "m.padim", *FAST), "nope")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run(capsys, "fit", tmp_path / "empty", "-o", tmp_path / "m.padim", *FAST), "empty")
    assert_one_line_error(run(capsys, "evaluate", tmp_path / "m.padim", tmp_path / "empty"), "m.padim")


def test_bad_option_values(mvtec_tree, tmp_path, capsys):
    for option, value in (("--image-size", "0"), ("--holdout", "1"), ("--quantile", "0"), ("--batch-size", "0")):
        code, _, err = run(capsys, "fit", mvtec_tree, "-o", tmp_path / "m.padim", option, value)
        assert code == 2 and option in err and repr(value) in err and "Traceback" not in err
    result = run(
        capsys,
        "fit",
        mvtec_tree,
        "-o",
        tmp_path / "m.padim",
        "--backbone",
        "resnet18",
        "--random-weights",
        "--n-features",
        "999",
    )
    assert_one_line_error(result, "n_features", "999", "448")
    assert_one_line_error(run(capsys, "fit", mvtec_tree, "-o", tmp_path, *FAST), "is a folder")
    assert_one_line_error(
        run(capsys, "fit", mvtec_tree, "-o", tmp_path / "m.padim", *FAST, "--layers", ","),
        "layers must name at least one",
    )
    assert not (tmp_path / "m.padim").exists()


@pytest.mark.slow
def test_corrupt_image_is_named_and_skip_bad_lists_it(mvtec_tree, tmp_path, capsys):
    data = tmp_path / "good"
    shutil.copytree(mvtec_tree / "train" / "good", data)
    good = sorted(data.iterdir())[0].read_bytes()
    (data / "zz_truncated.png").write_bytes(good[: len(good) // 3])
    (data / "zz_text.png").write_text("hello")
    assert_one_line_error(run(capsys, "fit", data, "-o", tmp_path / "m.padim", *FAST), "zz_")
    assert not (tmp_path / "m.padim").exists()
    code, _, err = run(capsys, "fit", data, "-o", tmp_path / "m.padim", *FAST, "--skip-bad")
    assert code == 0 and "zz_truncated.png" in err and "zz_text.png" in err


def test_bad_model_files(tmp_path, mvtec_tree, tiny_padim, capsys):
    (tmp_path / "text.padim").write_text("not a model")
    (tmp_path / "half.padim").write_bytes(tiny_padim.read_bytes()[:1000])
    (tmp_path / "text.onnx").write_text("not a model")
    image = next((mvtec_tree / "test" / "good").iterdir())
    for name in ("text.padim", "half.padim", "missing.padim", "text.onnx"):
        assert_one_line_error(run(capsys, "predict", tmp_path / name, image, "-o", tmp_path / "out"), name)
        assert_one_line_error(run(capsys, "evaluate", tmp_path / name, mvtec_tree), name)
        assert_one_line_error(run(capsys, "export", tmp_path / name, "-o", tmp_path / "x.onnx"), name)


def test_failed_fit_keeps_the_existing_model(tmp_path, tiny_padim, capsys):
    target = tmp_path / "m.padim"
    shutil.copy(tiny_padim, target)
    before = target.read_bytes()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_text("broken")
    (tmp_path / "bad" / "b.png").write_text("broken")
    assert_one_line_error(run(capsys, "fit", tmp_path / "bad", "-o", target, *FAST), "a.png")
    assert target.read_bytes() == before


@pytest.mark.slow
def test_mask_of_another_size_is_resized_with_a_warning(mvtec_tree, tmp_path, tiny_padim, capsys):
    data = tmp_path / "cat"
    shutil.copytree(mvtec_tree, data)
    mask = sorted((data / "ground_truth" / "spot").iterdir())[0]
    Image.open(mask).resize((100, 100), Image.NEAREST).save(mask)
    with pytest.warns(UserWarning, match=mask.name):
        assert run(capsys, "evaluate", tiny_padim, data, "--workers", "0", "--quiet")[0] == 0


def test_help_everywhere(capsys):
    for command in ([], ["fit"], ["predict"], ["evaluate"], ["calibrate"], ["info"], ["demo"], ["export"], ["serve"]):
        code, out, _ = run(capsys, *command, "--help")
        assert code == 0 and "usage: padim" in out


def test_a_bug_keeps_its_traceback(monkeypatch, capsys, tiny_padim, tmp_path):
    """Only user errors become one line: anything else propagates (exit 1 with a traceback)."""

    def broken(*args, **kwargs):
        raise ValueError("an internal bug")

    monkeypatch.setattr("padim.model.export.model_proto", broken)
    with pytest.raises(ValueError, match="an internal bug"):
        main(["export", str(tiny_padim), "-o", str(tmp_path / "m.onnx")])


def test_the_installed_command_reports_user_errors_in_one_line(tmp_path):
    """The console script in a subprocess, as a user runs it: one line, exit 2, no traceback."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "padim.cli.main",
            "predict",
            str(tmp_path / "missing.padim"),
            str(tmp_path),
            "-o",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"padim predict: error: {tmp_path / 'missing.padim'}: model file not found"
    ]


# --- calibrate, info, --threshold ------------------------------------------------------------


def _scores(model, folder):
    return model.predict(sorted(folder.iterdir())).score


@pytest.mark.slow
def test_calibrate_by_hand_keeps_everything_else(tiny_padim, tmp_path, capsys):
    target = tmp_path / "m.padim"
    shutil.copy(tiny_padim, target)
    before = Padim.load(target)
    code, out, _ = run(capsys, "calibrate", target, "--threshold", "12.5")
    assert code == 0
    assert "threshold: " in out and "-> 12.5 (set by hand)" in out and f"wrote {target}" in out
    after = Padim.load(target)
    assert after.calibration_.threshold == 12.5 and after.calibration_.source == "manual"
    assert after.calibration_.center == before.calibration_.center  # the score scale is kept
    assert after.calibration_.pixel_threshold == before.calibration_.pixel_threshold
    np.testing.assert_array_equal(after.precision_cholesky_packed_, before.precision_cholesky_packed_)
    assert after.config() == before.config() and after.n_images_ == before.n_images_
    # -o writes another file and leaves MODEL alone.
    assert run(capsys, "calibrate", target, "--threshold", "3", "-o", tmp_path / "b.padim")[0] == 0
    assert Padim.load(target).calibration_.threshold == 12.5
    assert Padim.load(tmp_path / "b.padim").calibration_.threshold == 3.0


def test_calibration_rules_on_images(tiny_model, mvtec_tree):
    """The library behind padim calibrate, on the shared model's predictor (no model file to load)."""
    from padim.runtime.calibrate import calibration_from_images

    predictor = tiny_model.predictor()
    good_dir, bad_dir = mvtec_tree / "test" / "good", mvtec_tree / "test" / "scratch"
    good, bad = _scores(tiny_model, good_dir), _scores(tiny_model, bad_dir)

    calibration, good_scores, _, _ = calibration_from_images(predictor, good_dir, quantile=0.5, workers=0)
    assert calibration.source == "normal" and calibration.threshold == pytest.approx(np.median(good), rel=1e-6)
    np.testing.assert_allclose(good_scores, good, rtol=1e-6)
    maps = tiny_model.predict(sorted(good_dir.iterdir())).anomaly_map
    assert calibration.pixel_threshold == pytest.approx(np.quantile(maps[:, ::2, ::2], 0.999), rel=1e-5)

    calibration, _, _, _ = calibration_from_images(predictor, good_dir, bad_dir, workers=0)
    labels, scores = np.r_[np.zeros(len(good)), np.ones(len(bad))], np.r_[good, bad]
    best = max(f1_score(labels, scores >= t) for t in scores)  # every candidate threshold, by brute force
    assert calibration.source == "f1" and f1_score(labels, scores >= calibration.threshold) == pytest.approx(best)


@pytest.mark.slow
def test_calibrate_from_good_and_defective_images(tiny_model, tiny_padim, mvtec_tree, tmp_path, capsys):
    target = tmp_path / "m.padim"
    shutil.copy(tiny_padim, target)
    good_dir, bad_dir = mvtec_tree / "test" / "good", mvtec_tree / "test" / "scratch"
    good, bad = _scores(tiny_model, good_dir), _scores(tiny_model, bad_dir)
    fast = ["--quiet", "--backend", "torch", "--workers", "0"]  # eager torch: no graph to trace for 5 images
    code, out, _ = run(
        capsys, "calibrate", target, "--good", good_dir, "--defective", bad_dir, "--recall", "0.5", *fast
    )
    calibration = Padim.load(target).calibration_
    # The highest threshold flagging at least half the defective images: the higher of the two scores.
    assert code == 0 and calibration.source == "recall" and calibration.recall == 0.5
    assert calibration.threshold == pytest.approx(np.sort(bad)[-1], rel=1e-5)
    assert calibration.good_scores == pytest.approx(sorted(good), rel=1e-5)
    assert "highest threshold finding 50% of the defective images" in out
    assert f"good images flagged: {int((good >= tiny_model.calibration_.threshold).sum())} -> 0 of 3" in out
    assert "defective images missed: " in out and "-> 1 of 2" in out


def test_calibrate_refuses_what_it_cannot_do(tiny_padim, tiny_onnx, mvtec_tree, tmp_path, capsys):
    good = mvtec_tree / "test" / "good"
    cases = [
        ((tiny_padim,), "say how to calibrate"),
        ((tiny_padim, "--defective", good), "--defective needs --good"),
        ((tiny_padim, "--threshold", "1", "--good", good), "not both"),
        ((tiny_padim, "--good", good, "--recall", "0.9"), "--recall needs"),
        ((tiny_padim, "--threshold", "1", "--f1"), "--f1 needs"),
        ((tiny_onnx, "--threshold", "1"), "calibrate the .padim model and export it again"),
        ((tmp_path / "missing.padim", "--threshold", "1"), "missing.padim: model file not found"),
    ]
    before = tiny_padim.read_bytes()
    for arguments, needle in cases:
        assert_one_line_error(run(capsys, "calibrate", *arguments), needle)
    code, _, err = run(capsys, "calibrate", tiny_padim, "--threshold", "nan")
    assert code == 2 and "expected a finite number" in err
    assert tiny_padim.read_bytes() == before


@pytest.mark.parametrize("model", ["tiny_padim", "tiny_onnx"])
def test_info_shows_what_the_file_holds(model, tiny_model, capsys, request):

    model_file = request.getfixturevalue(model)
    code, out, _ = run(capsys, "info", model_file)
    assert code == 0
    # The .padim file keeps the factors' packed float16 triangles; the ONNX graph, the float32 matrices.
    factors = {
        "tiny_padim": "precision_cholesky_packed (256, 136) F16",
        "tiny_onnx": "precision_cholesky (256, 16, 16) F32",
    }
    assert file_sha256(model_file) in out
    for needle in ("resnet18", "layer1, layer2, layer3", "64 x 64 px", "d = 16", "trained on        7 good images",
                   f"{tiny_model.calibration_.threshold:.6g}", "quantile 0.99", factors[model]):  # fmt: skip
        assert needle in out, needle
    code, out, _ = run(capsys, "info", model_file, "--json")
    info = json.loads(out)
    version = {"tiny_padim": model_file_format.FORMAT_VERSION, "tiny_onnx": onnx_format.FORMAT_VERSION}[model]
    assert info["n_images"] == 7 and info["format_version"] == version and info["config"]["n_features"] == 16
    assert info["calibration"]["threshold"] == pytest.approx(tiny_model.calibration_.threshold)
    sizes = {t["name"]: t["bytes"] for t in info["tensors"]}
    factor_bytes = {
        "tiny_padim": ("precision_cholesky_packed", 256 * 136 * 2),
        "tiny_onnx": ("precision_cholesky", 256 * 16 * 16 * 4),
    }
    name, size = factor_bytes[model]
    assert sizes["mean"] == 256 * 16 * 4 and sizes[name] == size


def test_info_refuses_other_files(tmp_path, capsys):
    (tmp_path / "x.padim").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    assert_one_line_error(run(capsys, "info", tmp_path / "x.padim"), "x.padim")
    assert_one_line_error(run(capsys, "info", tmp_path / "none.padim"), "model file not found")


@pytest.mark.parametrize("model", ["tiny_padim", "tiny_onnx"])
def test_predict_threshold_overrides_the_model(model, tiny_model, mvtec_tree, tmp_path, capsys, request):
    model_file = request.getfixturevalue(model)
    folder = mvtec_tree / "test" / "scratch"
    scores = _scores(tiny_model, folder)
    threshold = float(np.mean(scores))  # one of the two above, one below
    out = tmp_path / "out"
    options = ["--quiet", "--no-overlays", "--workers", "0"] + (["--backend", "torch"] if model == "tiny_padim" else [])
    assert run(capsys, "predict", model_file, folder, "-o", out, "--threshold", threshold, *options)[0] == 0
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert [r["label"] for r in rows] == ["anomalous" if s >= threshold else "normal" for s in scores]
    assert sorted(r["label"] for r in rows) == ["anomalous", "normal"]


def test_old_calibration_without_pixel_threshold_still_loads(tiny_padim, tmp_path):
    """A model calibrated before pixel thresholds existed: regions use the image threshold, as then."""
    from padim.modelfile.padim_file import read_model_file, write_model_file

    tensors, meta = read_model_file(tiny_padim)
    old = {k: meta["calibration"][k] for k in ("threshold", "center", "quantile", "source")}
    write_model_file(tmp_path / "old.padim", tensors, {**meta, "calibration": old})
    predictor = open_model(tmp_path / "old.padim", backend="torch")
    assert predictor.calibration.pixel_threshold is None and predictor.calibration.good_scores is None
    assert predictor.calibration.region_threshold == old["threshold"]
    prediction = predictor.predict(np.zeros((1, 3, 64, 64), np.float32))
    expected = (prediction.anomaly_map >= old["threshold"]) & prediction.label[:, None, None]
    np.testing.assert_array_equal(prediction.region, expected)


def test_serve_passes_its_options(tiny_onnx, tmp_path, monkeypatch, capsys):
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append(app))
    log = tmp_path / "v.jsonl"
    arguments = ["--threshold", "3.5", "--verdict-log", log, "--drift-window", "7", "--drift-factor", "2"]
    assert run(capsys, "serve", tiny_onnx, *arguments)[0] == 0
    state = calls[-1].state
    assert state.model.calibration.threshold == 3.5 and state.verdict_log.path == log
    assert state.drift.window == 7 and state.drift.factor == 2.0
    assert run(capsys, "serve", tiny_onnx, "--no-verdict-log")[0] == 0 and calls[-1].state.verdict_log is None
    code, _, err = run(capsys, "serve", tiny_onnx, "--drift-factor", "1")
    assert code == 2 and "--drift-factor" in err
