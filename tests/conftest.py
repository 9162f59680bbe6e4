"""Shared fixtures: tiny generated data sets on disk and one fitted model, built once per session.

``mvtec_tree`` is an MVTec AD category (64 px, 8 train, 3 good and 4 defective test images);
``plain_tree`` and ``plain_test_tree`` hold the same images in the plain layouts that
:mod:`padim.io.datasets` also reads. ``tiny_model`` is a model fitted on ``mvtec_tree`` (random
ResNet18 weights, 64 px, d=16, one good image held out for the threshold); ``tiny_padim`` and
``tiny_onnx`` are its ``.padim`` file and its ONNX export. All are shared by every test: treat
them as read-only (copy into ``tmp_path`` before changing a tree; ``copy.deepcopy`` a model).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from padim.io.synthetic import make_demo_dataset

from support import TINY


@pytest.fixture(scope="session", autouse=True)
def executor_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where ``--executor auto`` keeps what it measured: a folder of this session, not the user's cache."""
    folder = tmp_path_factory.mktemp("cache")
    os.environ["PADIM_CACHE_DIR"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def mvtec_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path to a tiny MVTec-style category: ``train/good``, ``test/{good,scratch,spot}``, ``ground_truth``."""
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), n_train=8, n_test_good=3, n_test_defect=4, size=64)


@pytest.fixture(scope="session")
def tiny_model(mvtec_tree: Path):
    """:data:`TINY` fitted on ``mvtec_tree`` (7 good images in the Gaussians, 1 held out)."""
    from padim.model.padim import Padim

    return Padim(**TINY).fit(mvtec_tree)


@pytest.fixture(scope="session")
def tiny_padim(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_model`` saved as a ``.padim`` file."""
    return tiny_model.save(tmp_path_factory.mktemp("tiny") / "tiny.padim")


@pytest.fixture(scope="session")
def tiny_onnx(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_model`` exported to ONNX."""
    from padim.model.export import export_onnx

    return export_onnx(tiny_model, tmp_path_factory.mktemp("tiny_onnx") / "tiny.onnx")


@pytest.fixture(scope="session")
def plain_tree(tmp_path_factory: pytest.TempPathFactory, mvtec_tree: Path) -> SimpleNamespace:
    """The same images in the plain layout for :func:`padim.data.folder_samples`.

    Attributes: ``good`` (8 images), ``defect`` (subfolders ``scratch/`` and ``spot/``, 2
    each), ``mask`` (``scratch/<stem>.png`` and ``spot/<stem>.png``: no ``_mask`` suffix).
    """
    root = tmp_path_factory.mktemp("plain")
    shutil.copytree(mvtec_tree / "train" / "good", root / "good")
    for defect_type in ("scratch", "spot"):
        shutil.copytree(mvtec_tree / "test" / defect_type, root / "defect" / defect_type)
        (root / "mask" / defect_type).mkdir(parents=True)
        for mask in (mvtec_tree / "ground_truth" / defect_type).iterdir():
            shutil.copy(mask, root / "mask" / defect_type / mask.name.replace("_mask", ""))
    return SimpleNamespace(root=root, good=root / "good", defect=root / "defect", mask=root / "mask")


@pytest.fixture(scope="session")
def plain_test_tree(tmp_path_factory: pytest.TempPathFactory, mvtec_tree: Path) -> Path:
    """A folder for :func:`padim.data.test_samples`: ``good/``, ``scratch/``, ``spot/``, ``ground_truth/``."""
    root = tmp_path_factory.mktemp("plain_test") / "test"
    shutil.copytree(mvtec_tree / "test", root)
    shutil.copytree(mvtec_tree / "ground_truth", root / "ground_truth")
    return root


@contextlib.contextmanager
def _serving(app):
    """Run an ASGI app with uvicorn on a free loopback port in a thread; yields its base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def serving():
    """``with serving(app) as url:`` runs an ASGI app on a free loopback port (uvicorn in a thread)."""
    return _serving
