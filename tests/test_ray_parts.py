"""The parts of the Ray jobs that need no cluster: locations, the decoding stage, the plan, merge trees' pieces.

The decoding stage must hand the actors the pixels the local pipeline normalises; the pieces a
shard cuts its statistics into must merge (in any tree) into the one-stream statistics; a
:class:`padim.model.fitting.Factored` must give the model what factoring on the driver gives.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from padim.io.images import load_image, normalize, preprocess
from padim.jobs import storage
from padim.jobs.ray_cluster import block_images, plan, user_error
from padim.jobs.ray_stages import decode_batch
from padim.model import fitting
from padim.model.distributed import _cut, _joined, patch_ranges
from padim.stats.gaussian import GaussianStats, precision_cholesky_from_stats


def test_urls_and_paths_are_told_apart() -> None:
    assert storage.is_url("s3://bucket/a.png") and storage.is_url("https://host/a.png")
    assert not storage.is_url("/data/a.png") and not storage.is_url("c:/data/a.png") and not storage.is_url(Path("x"))
    assert storage.location(Path("s3://bucket/out")) == "s3://bucket/out"  # argparse made it a Path
    assert storage.join("s3://bucket/out/", "overlays/a.jpg") == "s3://bucket/out/overlays/a.jpg"
    assert storage.join("/out", "overlays/a.jpg") == Path("/out/overlays/a.jpg")


def test_image_locations_read_folders_lists_and_urls(mvtec_tree: Path, tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text(f"# a list\n{mvtec_tree / 'test' / 'good'}\nhttps://example.invalid/x.png\n")
    found = storage.image_locations([str(mvtec_tree / "test" / "scratch"), f"@{listing}"])
    assert found[-1] == "https://example.invalid/x.png"  # an http(s) image is named, never listed
    assert [Path(p).parent.name for p in found[:-1]] == ["scratch"] * 2 + ["good"] * 3
    with pytest.raises(Exception, match="cannot be read"):
        storage.read_bytes("http://127.0.0.1:9/none.png")  # nothing listens on the discard port


def test_the_decoding_stage_hands_on_the_pixels_the_local_pipeline_normalises(mvtec_tree: Path, tmp_path: Path) -> None:
    paths = sorted((mvtec_tree / "test").rglob("*.png"))[:3]
    (tmp_path / "bad.png").write_bytes(b"not an image")
    batch = {"index": np.arange(4), "location": np.array([str(p) for p in paths] + [str(tmp_path / "bad.png")])}
    out = decode_batch(batch, (48, 40), {})
    assert out["pixels"].dtype == np.uint8 and out["pixels"].shape == (4, 48, 40, 3)
    assert out["error"][3].startswith(str(tmp_path / "bad.png")) and not any(out["error"][:3])
    local = preprocess([load_image(p) for p in paths], (48, 40))
    assert np.array_equal(normalize(out["pixels"][:3]), local)  # bit for bit: the same rows
    assert [tuple(x) for x in zip(out["width"][:3], out["height"][:3])] == [load_image(p).size for p in paths]


def test_the_plan_leaves_the_decoding_some_cpus() -> None:
    assert plan({"CPU": 2}, 500, 16, False) == (1, 1, 1, 1.0)
    assert plan({"CPU": 16}, 500, 16, False, threads=2) == (4, 2, 2, 1.0)
    assert plan({"CPU": 16}, 20, 16, False)[0] == 2  # never more actors than batches
    n_actors, threads, actor_cpus, decode_cpus = plan({"CPU": 1}, 500, 16, False)
    assert n_actors * actor_cpus + decode_cpus <= 1
    assert block_images(100_000, (256, 256), 16, 64) == 64 and block_images(8, (256, 256), 16, 1) == 16


def test_a_user_error_is_found_among_a_failures_causes() -> None:
    from padim.errors import OutputError

    class Wrapped(Exception):
        pass

    error = Wrapped("actor failed")
    error.__cause__ = OutputError("out: this node does not see the output folder")
    assert isinstance(user_error(error), OutputError) and user_error(Wrapped("x")) is None


def random_stats(n_images: int, generator: torch.Generator, offset: float = 0.0) -> GaussianStats:
    stats = GaussianStats.empty(10, 4, dtype=torch.float64)
    return stats.update(torch.randn(10, n_images, 4, generator=generator, dtype=torch.float64) + offset)


def test_pieces_merged_as_trees_give_the_one_stream_statistics() -> None:
    generator = torch.Generator().manual_seed(0)
    shards = [random_stats(n, generator, offset=i) for i, n in enumerate((3, 5, 2, 7, 4))]
    whole = shards[0]
    for stats in shards[1:]:
        whole = whole.merge(stats)
    ranges = patch_ranges(10, 3)
    pieces = [_cut(stats, ranges) for stats in shards]
    for r, (a, b) in enumerate(ranges):  # a tree: pairs first, then their results
        left = _cut(_joined([pieces[0][r], pieces[1][r], None]), [(0, b - a)])[0]
        right = _cut(_joined([pieces[2][r], pieces[3][r], pieces[4][r]]), [(0, b - a)])[0]
        merged = _joined([left, right])
        assert merged.count == whole.count == 21
        assert torch.allclose(merged.mean, whole.mean[a:b], atol=1e-12)
        assert torch.allclose(merged.m2, whole.m2[a:b], atol=1e-10)
    assert _joined([None, None]) is None


def test_gaussians_factored_on_the_workers_are_the_model_s() -> None:
    stats = random_stats(6, torch.Generator().manual_seed(1))
    factors = precision_cholesky_from_stats(stats, 0.01, packed=True)
    factored = fitting.Factored(stats.count, stats.mean.float(), factors, 0.01, None)
    count, mean, packed = fitting.gaussians(factored, 0.01)
    assert count == 6 and torch.equal(packed, fitting.gaussians(stats, 0.01)[2]) and fitting.kept(factored) is None
    with_stats = fitting.Factored(stats.count, stats.mean.float(), torch.zeros_like(factors), 0.5, stats)
    assert torch.equal(fitting.gaussians(with_stats, 0.01)[2], factors)  # another eps: factored again here
    assert fitting.kept(with_stats) is stats and fitting.kept(stats) is stats


class _Cluster:
    """A stand-in for the ``ray`` module's ``nodes()``: two nodes, the second gone after ``lose_at`` calls."""

    class exceptions:  # noqa: N801 - the name ``ray.exceptions`` has
        RayError = RuntimeError

    def __init__(self, lose_at: int) -> None:
        self.calls, self.lose_at = 0, lose_at

    def nodes(self) -> list[dict]:
        self.calls += 1
        return [{"NodeID": "a", "Alive": True}, {"NodeID": "b", "Alive": self.calls < self.lose_at}]


def test_a_stream_without_rows_after_a_lost_node_is_interrupted_and_only_then(monkeypatch):
    import threading
    import time

    from padim.jobs import ray_predict

    monkeypatch.setattr(ray_predict, "STALL_S", 0.2)
    # Rows keep coming (the last one just now): the lost node is noted, nothing is interrupted.
    lost, stop, stalled, last = set(), threading.Event(), threading.Event(), [time.monotonic() + 3600]
    watcher = threading.Thread(target=ray_predict._watch_nodes, args=(_Cluster(3), stop, lost, last, stalled, 0.01))
    watcher.start()
    time.sleep(0.5)
    stop.set()
    watcher.join(5)
    assert lost == {"b"} and not stalled.is_set()
    # No row for longer than STALL_S once a node is lost: the driver's thread gets an interrupt.
    lost, stop, stalled, last = set(), threading.Event(), threading.Event(), [time.monotonic()]
    watcher = threading.Thread(target=ray_predict._watch_nodes, args=(_Cluster(3), stop, lost, last, stalled, 0.01))
    with pytest.raises(KeyboardInterrupt):
        watcher.start()
        for _ in range(500):  # bounded: 5 s at most
            time.sleep(0.01)
    stop.set()
    watcher.join(5)
    assert stalled.is_set() and lost == {"b"}
