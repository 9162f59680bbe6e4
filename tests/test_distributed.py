"""Ray: the distributed fit equals the one-process fit, survives a killed worker; updates; predict rows.

One local Ray cluster (2 CPUs, loopback, no dashboard) is started for the module. The oracle of
the fit is the one-process ``Padim.fit`` with float64 statistics; of the update, a fit on both
sets; of ``predict --ray``, the local command's CSV and pictures.
"""

from __future__ import annotations

import csv
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from padim.cli.main import main
from padim.io.datasets import split_holdout, train_samples
from padim.model import distributed, fitting
from padim.model.incremental import update
from padim.model.padim import Padim

from support import TINY

ray = pytest.importorskip("ray")
F64 = {**TINY, "stats_dtype": "float64", "backend": "torch"}  # eager: no graph traced per task

pytestmark = pytest.mark.slow  # a Ray cluster or a browser starts for these


@pytest.fixture(scope="module", autouse=True)
def cluster():
    # The workers run one thread each; so does this process here: the backbone's float32 sums
    # depend on the thread count (5e-7), which near-singular covariances amplify.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield
    ray.shutdown()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def local(mvtec_tree: Path) -> Padim:
    return Padim(**F64).fit(mvtec_tree, keep_stats=True)


def precision64(stats, eps: float = 0.01) -> torch.Tensor:
    """The reference precision: the float64 inverse of the covariance (no Cholesky, no float16)."""
    return torch.linalg.inv(stats.covariance(eps))


def relative(x, reference) -> float:
    """Largest difference, relative to the reference's largest magnitude."""
    return float(np.abs(np.asarray(x) - np.asarray(reference)).max() / np.abs(np.asarray(reference)).max())


def assert_same_model(a: Padim, b: Padim, test_images: Path) -> None:
    assert a.n_images_ == b.n_images_
    assert torch.equal(a.channel_idx_, b.channel_idx_)
    assert a.holdout_paths_ == b.holdout_paths_
    assert a.stats_.count == b.stats_.count
    assert relative(b.stats_.mean, a.stats_.mean) < 1e-6
    assert relative(precision64(b.stats_), precision64(a.stats_)) < 1e-6
    assert b.calibration_.threshold == pytest.approx(a.calibration_.threshold, rel=1e-6)
    ma, mb = a.predict(test_images).anomaly_map, b.predict(test_images).anomaly_map
    assert relative(mb, ma) < 1e-5


@pytest.mark.slow
def test_fit_on_ray_equals_one_process_fit(mvtec_tree: Path, local: Padim) -> None:
    merged = distributed.fit(Padim(**F64), mvtec_tree, n_shards=3, keep_stats=True)
    assert_same_model(local, merged, mvtec_tree / "test" / "scratch")


@pytest.mark.slow
def test_an_aligned_fit_on_ray_registers_each_shard_to_the_models_reference(mvtec_tree: Path) -> None:
    # The default fit registers each image to a reference of the good ones (padim.align): the shards too.
    aligned = {**F64, "align": "translate"}
    local = Padim(**aligned).fit(mvtec_tree, keep_stats=True)
    merged = distributed.fit(Padim(**aligned), mvtec_tree, n_shards=3, keep_stats=True)
    assert merged.alignment_ is not None and np.array_equal(merged.alignment_.gray, local.alignment_.gray)
    assert_same_model(local, merged, mvtec_tree / "test" / "scratch")


@pytest.mark.slow
def test_a_deeper_merge_tree_and_factors_from_the_workers(mvtec_tree: Path, local: Padim) -> None:
    # 7 images in 7 shards: two levels of merge tasks (4 pieces each), the patches in 7 ranges. Each
    # task embeds one image at a time: the backbone's float32 sums differ with the batch (1e-6 apart).
    merged = distributed.fit(Padim(**F64), mvtec_tree, n_shards=7, keep_stats=True)
    assert merged.stats_.count == local.stats_.count and merged.holdout_paths_ == local.holdout_paths_
    assert relative(merged.stats_.mean, local.stats_.mean) < 1e-6
    assert relative(precision64(merged.stats_), precision64(local.stats_)) < 1e-5
    assert merged.calibration_.threshold == pytest.approx(local.calibration_.threshold, rel=1e-5)
    # Without keep_stats the driver receives the means and float16 factors only, never the scatter matrices.
    model = Padim(**F64)
    setup = fitting.prepare(model, mvtec_tree, None)
    model = Padim.from_fitted(setup.fitted, **model.get_params())
    factored, _ = distributed.shard_statistics(model, setup.source, {**setup.options, "keep_stats": False}, n_shards=3)
    assert isinstance(factored, fitting.Factored) and factored.stats is None
    assert factored.count == local.n_images_
    assert relative(factored.mean, local.mean_) < 1e-6
    assert relative(factored.precision_cholesky_packed.float(), local.precision_cholesky_packed_.float()) < 2e-3


def test_a_killed_worker_is_retried_without_counting_twice(mvtec_tree: Path, local: Padim, tmp_path: Path) -> None:
    marker = str(tmp_path / "killed")

    def die_once() -> None:  # runs in a Ray worker: the first shard to start kills its process
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return
        os.kill(os.getpid(), signal.SIGKILL)

    merged = distributed.fit(Padim(**F64), mvtec_tree, n_shards=2, keep_stats=True, before_shard=die_once)
    assert os.path.exists(marker)  # a worker did die
    assert merged.n_images_ == local.n_images_ == 7
    assert relative(merged.stats_.mean, local.stats_.mean) < 1e-6


@pytest.mark.slow
def test_update_equals_a_fit_on_both_sets(mvtec_tree: Path, tmp_path: Path) -> None:
    samples = train_samples(mvtec_tree)
    first, second = [s.path for s in samples[:4]], [s.path for s in samples[4:]]
    # One image per batch: the backbone's float32 sums also depend on the batch it runs in.
    Padim(**F64).fit(first, keep_stats=True, batch_size=1).save(tmp_path / "first.padim")
    updated = update(
        tmp_path / "first.padim", second, backend="torch", gather=distributed.gather(n_shards=2), batch_size=1
    )
    updated.save(tmp_path / "updated.padim")
    fit_a, held_a = split_holdout(samples[:4], 0.1, 0)
    fit_b, held_b = split_holdout(samples[4:], 0.1, 0)
    both = Padim(**F64).fit([s.path for s in fit_a + fit_b], validation=[s.path for s in held_a + held_b],
                            keep_stats=True, batch_size=1)  # fmt: skip
    assert_same_model(both, Padim.load(tmp_path / "updated.padim", backend="torch"), mvtec_tree / "test" / "spot")


def rows(folder: Path) -> list[dict]:
    with open(folder / "predictions.csv", newline="") as handle:
        return sorted(csv.DictReader(handle), key=lambda row: row["path"])


@pytest.mark.slow
def test_cli_fit_update_and_predict_on_ray(mvtec_tree: Path, tiny_padim: Path, tmp_path: Path, capsys) -> None:
    flags = [
        "--backbone",
        "resnet18",
        "--random-weights",
        "--image-size",
        "64",
        "--n-features",
        "16",
        "--backend",
        "torch",
        "--quiet",
    ]
    model = tmp_path / "m.padim"
    assert main(["fit", str(mvtec_tree / "train" / "good"), "-o", str(model), *flags, "--keep-stats", "--ray"]) == 0
    assert main(["fit", str(mvtec_tree / "test" / "good"), "--update", str(model), "-o", str(model), "--quiet"]) == 0
    assert Padim.load(model).n_images_ == 7 + 2  # 8 + 3 good images, one of each held out
    test = str(mvtec_tree / "test")
    common = ["-r", "--overlays", "all", "--quiet"]
    assert main(["predict", str(tiny_padim), test, "-o", str(tmp_path / "local"), *common]) == 0
    assert main(["predict", str(tiny_padim), test, "-o", str(tmp_path / "ray"), *common, "--ray"]) == 0
    local_rows, ray_rows = rows(tmp_path / "local"), rows(tmp_path / "ray")
    assert len(local_rows) == 7 and ray_rows == local_rows
    for row in local_rows:
        assert (tmp_path / "ray" / row["overlay"]).read_bytes() == (tmp_path / "local" / row["overlay"]).read_bytes()


@pytest.mark.slow
def test_an_unreadable_image_on_ray_is_one_line(mvtec_tree: Path, tmp_path: Path, capsys) -> None:
    good = tmp_path / "good"
    good.mkdir()
    for path in sorted((mvtec_tree / "train" / "good").iterdir())[:3]:
        (good / path.name).write_bytes(path.read_bytes())
    (good / "broken.png").write_bytes(b"not an image")
    flags = ["--backbone", "resnet18", "--random-weights", "--image-size", "64", "--backend", "torch", "--quiet"]
    assert main(["fit", str(good), "-o", str(tmp_path / "m.padim"), *flags, "--holdout", "0", "--ray"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("padim fit: error:") and "broken.png" in error[0]
