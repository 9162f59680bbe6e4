"""The runtime install (``pip install padim-toolkit``, no extras): exported models give the full install's answers.

``.ci/run`` makes a second environment with the project alone (no torch), and runs this file
there with ``PADIM_RUNTIME_FIXTURE`` naming what the full install made (``tests/runtime_fixture.py``)
and ``PADIM_EXPECT_NO_TORCH=1``. In the full environment the same tests build the fixture
themselves, and the missing extra is simulated where a test needs it.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from padim.cli.main import main
from padim.modelfile.padim_file import read_model_file, write_model_file

pytestmark = pytest.mark.runtime
FIXTURE = os.environ.get("PADIM_RUNTIME_FIXTURE")
NO_TORCH = os.environ.get("PADIM_EXPECT_NO_TORCH") == "1"


@pytest.fixture(scope="module")
def fixture(tmp_path_factory) -> Path:
    if FIXTURE:
        return Path(FIXTURE)
    from runtime_fixture import build

    return build(tmp_path_factory.mktemp("runtime"))


@pytest.fixture
def no_train_extra(monkeypatch):
    """The training extra missing: for real in the runtime install, simulated in the full one."""
    if not NO_TORCH:
        monkeypatch.setattr("padim.extras.missing", lambda extra: ["torch"] if extra == "train" else [])


def rows(path: Path) -> list[dict]:
    return list(csv.DictReader(open(path)))


def test_torch_is_absent_where_the_runtime_is_tested():
    if not NO_TORCH:
        pytest.skip("the full install: torch is there on purpose")
    assert importlib.util.find_spec("torch") is None
    assert "torch" not in sys.modules


def test_predict_gives_the_rows_of_the_full_install(fixture, tmp_path):
    args = ["--quiet", "--workers", "0", "--overlays", "none"]
    assert main(["predict", str(fixture / "model.onnx"), str(fixture / "data" / "test"), "-r", "-o", str(tmp_path),
                 *args]) == 0  # fmt: skip
    found, expected = rows(tmp_path / "predictions.csv"), rows(fixture / "expected" / "predictions.csv")
    assert [r["path"] for r in found] == [r["path"] for r in expected] and len(found) == 7
    assert [r["label"] for r in found] == [r["label"] for r in expected]
    scores = np.array([[float(a["score"]), float(b["score"])] for a, b in zip(found, expected)])
    assert np.abs(scores[:, 0] - scores[:, 1]).max() <= 1e-5 * np.abs(scores[:, 1]).max()
    assert "torch" not in sys.modules or not NO_TORCH


def test_watch_gives_the_rows_of_the_full_install(fixture, tmp_path, monkeypatch):
    expected = rows(fixture / "expected" / "predictions.csv")
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(r["path"] + "\n" for r in expected)))  # padim watch MODEL -
    assert main(["watch", str(fixture / "model.onnx"), "-", "-o", str(tmp_path), "--quiet", "--overlays", "none"]) == 0
    found = rows(tmp_path / "predictions.csv")
    assert [r["path"] for r in found] == [r["path"] for r in expected]
    assert [r["label"] for r in found] == [r["label"] for r in expected]
    np.testing.assert_allclose([float(r["score"]) for r in found], [float(r["score"]) for r in expected], rtol=1e-5)
    assert "torch" not in sys.modules or not NO_TORCH


def test_info_and_evaluate_give_the_full_install_answers(fixture, tmp_path, capsys):
    assert main(["info", str(fixture / "model.onnx"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    expected = json.loads((fixture / "expected" / "info.json").read_text())
    here = ("path", "cpu", "executor")  # where the file is, and what this machine runs it with
    assert {k: v for k, v in info.items() if k not in here} == expected
    report = tmp_path / "metrics.json"
    assert main(["evaluate", str(fixture / "model.onnx"), str(fixture / "data"), "--json", str(report), "--quiet",
                 "--workers", "0"]) == 0  # fmt: skip
    found, wanted = json.loads(report.read_text()), json.loads((fixture / "expected" / "metrics.json").read_text())
    for key in ("image_auroc", "pixel_auroc", "aupro", "threshold"):
        assert found[key] == pytest.approx(wanted[key], abs=1e-4), key
    assert found["confusion"] == wanted["confusion"]


def test_the_service_answers_with_the_rows_of_predict(fixture):
    from fastapi.testclient import TestClient

    from padim.serve.app import create_app

    image = sorted((fixture / "data" / "test" / "scratch").iterdir())[0]
    client = TestClient(create_app(fixture / "model.onnx"))
    answer = client.post("/predict", files={"file": (image.name, image.read_bytes(), "image/png")}).json()
    expected = {
        Path(r["path"]).name + Path(r["path"]).parent.name: r for r in rows(fixture / "expected" / "predictions.csv")
    }
    row = expected[image.name + "scratch"]
    assert answer["score"] == pytest.approx(float(row["score"]), rel=1e-5)
    assert answer["verdict"] == ("DEFECT" if row["label"] == "anomalous" else "OK")


def test_calibrate_by_hand_rewrites_a_padim_file_without_torch(fixture, tmp_path, capsys):
    model = tmp_path / "model.padim"
    shutil.copy(fixture / "model.padim", model)
    before, _ = read_model_file(model)
    assert main(["calibrate", str(model), "--threshold", "12.5"]) == 0
    after, meta = read_model_file(model)
    assert meta["calibration"]["threshold"] == 12.5 and meta["calibration"]["source"] == "manual"
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)


def test_a_padim_model_runs_without_torch_with_the_answers_of_its_export(fixture, tmp_path, no_train_extra):
    args = ["--quiet", "--workers", "0", "--overlays", "none"]
    assert main(["predict", str(fixture / "model.padim"), str(fixture / "data" / "test"), "-r", "-o", str(tmp_path),
                 *args]) == 0  # fmt: skip
    found, expected = rows(tmp_path / "predictions.csv"), rows(fixture / "expected" / "predictions.csv")
    assert [r["label"] for r in found] == [r["label"] for r in expected]
    scores = np.array([[float(a["score"]), float(b["score"])] for a, b in zip(found, expected)])
    assert np.abs(scores[:, 0] - scores[:, 1]).max() <= 1e-5 * np.abs(scores[:, 1]).max()
    assert "torch" not in sys.modules or not NO_TORCH


def without_graph(source: Path, target: Path) -> Path:
    """A copy of a ``.padim`` file as padim-toolkit 0.2 wrote it: no stored graph."""
    tensors, meta = read_model_file(source)
    tensors.pop("onnx_graph")
    write_model_file(target, tensors, {k: v for k, v in meta.items() if k not in ("graph", "tensor_sha256")})
    return target


@pytest.mark.parametrize(
    "argv",
    [
        ["fit", "{data}", "-o", "{tmp}/m.padim"],
        ["export", "{model}", "-o", "{tmp}/m.onnx"],
        ["predict", "{old}", "{image}"],
        ["evaluate", "{old}", "{data}"],
    ],
)
def test_what_needs_torch_says_which_extra_to_install(fixture, tmp_path, capsys, no_train_extra, argv):
    image = sorted((fixture / "data" / "test" / "good").iterdir())[0]
    old = without_graph(fixture / "model.padim", tmp_path / "old.padim")
    argv = [a.format(data=fixture / "data", tmp=tmp_path, model=fixture / "model.padim", image=image, old=old)
            for a in argv]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'padim-toolkit[train]'" in err, err
    assert err.startswith(f"padim {argv[0]}: error: ")


def test_the_python_api_names_the_extra_too(no_train_extra):
    import padim
    from padim.errors import MissingExtraError

    with pytest.raises(MissingExtraError, match=r"padim\.Padim needs the 'train' extra"):
        padim.Padim  # noqa: B018
    assert callable(padim.open_model)
