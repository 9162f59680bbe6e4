"""What the runtime-install tests compare against, made by the full install (torch): a model and its answers.

``python tests/runtime_fixture.py OUT`` (run by ``.ci/run`` in the full environment) writes into
OUT: a tiny MVTec-style set, a model fitted on it as ``model.padim`` and exported as
``model.onnx``, and what the full install answers with them: ``expected/predictions.csv``
(``padim predict``), ``expected/info.json`` (``padim info``) and ``expected/metrics.json``
(``padim evaluate``). ``tests/test_runtime_install.py`` then runs the same commands in an
environment with ``pip install .`` alone (no torch) and compares.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from support import TINY


def build(out: Path) -> Path:
    """Write the fixture into ``out`` (once: an existing one is kept); returns ``out``."""
    from padim.cli.main import main
    from padim.io.synthetic import make_demo_dataset
    from padim.model.export import export_onnx
    from padim.model.padim import Padim

    done = out / "expected" / "metrics.json"
    if done.is_file():
        return out
    data = make_demo_dataset(out, n_train=8, n_test_good=3, n_test_defect=4, size=64, name="data")
    model = Padim(**TINY).fit(data)
    model.save(out / "model.padim")
    export_onnx(model, out / "model.onnx")
    expected = out / "expected"
    expected.mkdir(parents=True, exist_ok=True)
    args = ["--quiet", "--workers", "0"]
    assert main(["predict", str(out / "model.onnx"), str(data / "test"), "-r", "-o", str(expected), "--overlays",
                 "none", *args]) == 0  # fmt: skip
    (expected / "info.json").write_text(json.dumps(info_json(out / "model.onnx"), indent=2))
    assert main(["evaluate", str(out / "model.onnx"), str(data), "--json", str(done), *args]) == 0
    return out


def info_json(path: Path) -> dict:
    """``padim info --json`` of a file, without its path (the two installs see it at the same place anyway)."""
    from padim.modelfile.info import model_info

    return {key: value for key, value in model_info(path).items() if key != "path"}


if __name__ == "__main__":
    print(build(Path(sys.argv[1])))
