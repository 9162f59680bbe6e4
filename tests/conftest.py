"""Shared fixtures: tiny generated data sets on disk, built once per test session.

``mvtec_tree`` is an MVTec AD category (64 px, 8 train, 3 good and 4 defective test images);
``plain_tree`` and ``plain_test_tree`` hold the same images in the plain layouts that
:mod:`padim.data` also reads. The trees are shared by every test: treat them as read-only
and copy one into ``tmp_path`` before changing it.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from padim.synthetic import make_demo_dataset


@pytest.fixture(scope="session")
def mvtec_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path to a tiny MVTec-style category: ``train/good``, ``test/{good,scratch,spot}``, ``ground_truth``."""
    return make_demo_dataset(
        tmp_path_factory.mktemp("demo"), n_train=8, n_test_good=3, n_test_defect=4, size=64
    )


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
