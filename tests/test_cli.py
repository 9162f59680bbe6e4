"""The padim command end to end on a tiny synthetic MVTec tree, and every bad input."""

import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from padim.cli import main
from padim.model import Padim

FAST = ["--backbone", "resnet18", "--random-weights", "--image-size", "64", "--n-features", "16", "--workers", "0", "--quiet"]


@pytest.fixture(scope="module")
def model_file(mvtec_tree, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.padim"
    assert main(["fit", str(mvtec_tree), "-o", str(path), *FAST]) == 0
    return path


def test_fit_writes_a_calibrated_model(model_file):
    model = Padim.load(model_file)
    assert model.calibration_ is not None and model.n_images_ == 7  # 8 good, 1 held out
    assert model.image_size == (64, 64) and model.n_features == 16


def test_predict_writes_csv_and_overlays(model_file, mvtec_tree, tmp_path):
    out = tmp_path / "out"
    assert main(["predict", str(model_file), str(mvtec_tree / "test" / "scratch"), str(mvtec_tree / "test" / "good"), "-o", str(out), "--quiet"]) == 0
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert list(rows[0]) == ["path", "score", "normalized_score", "label"]
    assert len(rows) == 2 + 3
    model = Padim.load(model_file)
    expected = model.predict([r["path"] for r in rows])
    np.testing.assert_allclose([float(r["score"]) for r in rows], expected.score, rtol=1e-5)
    assert [r["label"] for r in rows] == ["anomalous" if x else "normal" for x in expected.label]
    pngs = sorted(p.name for p in out.glob("*_overlay.png"))
    assert len(pngs) == 5
    # Stems repeat across folders (scratch/000.png, good/000.png): names carry the folder then.
    assert "scratch_000_overlay.png" in pngs and "good_000_overlay.png" in pngs
    assert Image.open(out / "scratch_000_overlay.png").size == Image.open(rows[0]["path"]).size


def test_evaluate_prints_table_and_writes_json_and_report(model_file, mvtec_tree, tmp_path, capsys):
    assert main(["evaluate", str(model_file), str(mvtec_tree), "--json", str(tmp_path / "m.json"),
                 "--report", str(tmp_path / "report"), "--workers", "0", "--quiet"]) == 0
    table = capsys.readouterr().out
    assert "overall" in table and "scratch" in table and "spot" in table
    metrics = json.loads((tmp_path / "m.json").read_text())
    for key in ("image_auroc", "pixel_auroc", "aupro", "image_f1_max", "threshold", "n_images"):
        assert key in metrics
    assert metrics["n_images"] == 7 and set(metrics["per_defect"]) == {"scratch", "spot"}
    assert (tmp_path / "report" / "index.html").is_file()


def run_cli(*args):
    """The installed console script in a subprocess: exit code and stderr, as a user sees them."""
    proc = subprocess.run([sys.executable, "-m", "padim.cli", *map(str, args)], capture_output=True, text=True)
    return proc.returncode, proc.stderr


def assert_one_line_error(code, stderr, *needles):
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])


def test_missing_and_empty_folders(tmp_path):
    assert_one_line_error(*run_cli("fit", tmp_path / "nope", "-o", tmp_path / "m.padim", *FAST), "nope")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(*run_cli("fit", tmp_path / "empty", "-o", tmp_path / "m.padim", *FAST), "empty")


def test_bad_option_values(mvtec_tree, tmp_path):
    for option, value in (("--image-size", "0"), ("--holdout", "1"), ("--quantile", "0"), ("--batch-size", "0")):
        code, err = run_cli("fit", mvtec_tree, "-o", tmp_path / "m.padim", option, value)
        assert code == 2 and option in err and repr(value) in err and "Traceback" not in err
    code, err = run_cli("fit", mvtec_tree, "-o", tmp_path / "m.padim", "--backbone", "resnet18",
                        "--random-weights", "--n-features", "9999")
    assert_one_line_error(code, err, "n_features", "9999", "448")


def test_corrupt_image_is_named_and_skip_bad_lists_it(mvtec_tree, tmp_path):
    data = tmp_path / "good"
    shutil.copytree(mvtec_tree / "train" / "good", data)
    good = sorted(data.iterdir())[0].read_bytes()
    (data / "zz_truncated.png").write_bytes(good[: len(good) // 3])
    (data / "zz_text.png").write_text("hello")
    assert_one_line_error(*run_cli("fit", data, "-o", tmp_path / "m.padim", *FAST), "zz_")
    assert not (tmp_path / "m.padim").exists()
    code, err = run_cli("fit", data, "-o", tmp_path / "m.padim", *FAST, "--skip-bad")
    assert code == 0 and "zz_truncated.png" in err and "zz_text.png" in err


def test_bad_model_files(tmp_path, mvtec_tree, model_file):
    (tmp_path / "text.padim").write_text("not a model")
    (tmp_path / "half.padim").write_bytes(model_file.read_bytes()[:1000])
    image = next((mvtec_tree / "test" / "good").iterdir())
    for name in ("text.padim", "half.padim", "missing.padim"):
        assert_one_line_error(*run_cli("predict", tmp_path / name, image, "-o", tmp_path / "out"), name)
        assert_one_line_error(*run_cli("evaluate", tmp_path / name, mvtec_tree), name)


def test_failed_fit_keeps_the_existing_model(mvtec_tree, tmp_path, model_file):
    target = tmp_path / "m.padim"
    shutil.copy(model_file, target)
    before = target.read_bytes()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_text("broken")
    (tmp_path / "bad" / "b.png").write_text("broken")
    assert_one_line_error(*run_cli("fit", tmp_path / "bad", "-o", target, *FAST), "a.png")
    assert target.read_bytes() == before


def test_mask_of_another_size_is_resized_with_a_warning(mvtec_tree, tmp_path, model_file):
    data = tmp_path / "cat"
    shutil.copytree(mvtec_tree, data)
    mask = sorted((data / "ground_truth" / "spot").iterdir())[0]
    Image.open(mask).resize((100, 100), Image.NEAREST).save(mask)
    with pytest.warns(UserWarning, match=mask.name):
        assert main(["evaluate", str(model_file), str(data), "--workers", "0", "--quiet"]) == 0


def test_help_everywhere():
    for command in ([], ["fit"], ["predict"], ["evaluate"], ["demo"], ["export"], ["serve"]):
        proc = subprocess.run([sys.executable, "-m", "padim.cli", *command, "--help"], capture_output=True, text=True)
        assert proc.returncode == 0 and "usage: padim" in proc.stdout
