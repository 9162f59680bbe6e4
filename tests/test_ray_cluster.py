"""A real cluster: two Ray nodes started with ``ray start``, token authentication, object storage, lost workers.

One cluster for the module (:class:`ray_nodes.LocalCluster`: a head and a second node on this
machine, loopback addresses, ``RAY_AUTH_MODE=token``) and, where moto installs, an S3-compatible
server on 127.0.0.1 that both nodes reach. Every driver is a subprocess (the ``padim`` command, or
``tests/ray_job.py`` for the jobs that kill a worker half way), so this process never joins the
cluster. The oracle is the local command: its rows (scores within 1e-5, the same labels) and its
pictures; a fitted model's scores within 2e-4 (float16 stored factors, sums in another order).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from padim.cli.main import main

from ray_nodes import LocalCluster
from support import TINY

pytest.importorskip("ray")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

FLAGS = ["--backbone", "resnet18", "--random-weights", "--image-size", "64", "--n-features", "16",
         "--seed", "0", "--backend", "torch", "--quiet"]  # fmt: skip
MANY = 96
S3 = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1 (None where moto is not installed), stopped at the end."""
    if shutil.which("moto_server", path=str(Path(sys.executable).parent)) is None:
        yield None
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail("the S3 server did not start")
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.kill()
        server.wait(10)


@pytest.fixture(scope="module")
def cluster(s3_endpoint):
    env = {} if s3_endpoint is None else {**S3, "AWS_ENDPOINT_URL": s3_endpoint}
    with LocalCluster(cpus=(2, 2), env=env) as running:
        yield running


@pytest.fixture(scope="module")
def many(mvtec_tree: Path, tmp_path_factory) -> Path:
    """96 images in two folders (the tiny set's images, copied under new names): a job of 24 blocks of 4."""
    root = tmp_path_factory.mktemp("many")
    images = sorted((mvtec_tree / "test").rglob("*.png")) + sorted((mvtec_tree / "train" / "good").glob("*.png"))
    for i in range(MANY):
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(exist_ok=True)
        shutil.copy(images[i % len(images)], folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def slower(mvtec_tree: Path, tmp_path_factory) -> Path:
    """The tiny model at 224 px: each block of 4 takes long enough for a worker to die while it runs."""
    from padim.model.padim import Padim

    return Padim(**{**TINY, "image_size": 224}).fit(mvtec_tree).save(tmp_path_factory.mktemp("slower") / "m.padim")


def run(cluster: LocalCluster, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """A command of the cluster's drivers (``padim`` or ``tests/ray_job.py``), bounded in time."""
    done = subprocess.run([sys.executable, *args], env=cluster.env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args} failed ({done.returncode}):\n{done.stderr[-4000:]}\n{cluster.logs()}"
    return done


def result_of(done: subprocess.CompletedProcess) -> dict:
    """What ``tests/ray_job.py`` printed (Ray's own messages may come before it)."""
    return json.loads([line for line in done.stdout.splitlines() if line.startswith("RESULT ")][-1][7:])


def rows(text: str) -> dict[str, dict]:
    """A predictions.csv's rows by image name (paths and URLs differ between runs; names do not)."""
    return {Path(row["path"]).name: row for row in csv.DictReader(io.StringIO(text))}


def assert_same_rows(got: dict, expected: dict, tolerance: float = 1e-5) -> None:
    assert sorted(got) == sorted(expected)
    for name, row in expected.items():
        assert float(got[name]["score"]) == pytest.approx(float(row["score"]), rel=tolerance, abs=tolerance), name
        assert got[name]["label"] == row["label"], name
        assert (got[name]["width"], got[name]["height"]) == (row["width"], row["height"])


def local_rows(model: Path, inputs: Path, out: Path) -> dict:
    assert main(["predict", str(model), str(inputs), "-o", str(out), "-r", "--overlays", "all", "--quiet"]) == 0
    return rows((out / "predictions.csv").read_text())


def test_predict_on_two_nodes_gives_the_local_rows(cluster, tiny_padim: Path, mvtec_tree: Path, tmp_path: Path) -> None:
    expected = local_rows(tiny_padim, mvtec_tree / "test", tmp_path / "local")
    done = run(cluster, "-m", "padim.cli.main", "predict", str(tiny_padim), str(mvtec_tree / "test"), "-r",
               "-o", str(tmp_path / "ray"), "--overlays", "all", "--ray", cluster.address)  # fmt: skip
    assert "ray: 2 node(s)" in done.stderr
    got = rows((tmp_path / "ray" / "predictions.csv").read_text())
    assert_same_rows(got, expected)
    for name, row in expected.items():  # the actors wrote the pictures, the same bytes as the local command's
        assert (tmp_path / "ray" / row["overlay"]).read_bytes() == (tmp_path / "local" / row["overlay"]).read_bytes()
        assert got[name]["overlay"] == row["overlay"]
    assert not list((tmp_path / "ray").glob(".padim-ray-*"))  # the marker the actors checked is gone


def test_fit_on_two_nodes_gives_the_local_model(cluster, mvtec_tree: Path, tmp_path: Path) -> None:
    train = str(mvtec_tree / "train" / "good")
    run(cluster, "-m", "padim.cli.main", "fit", train, "-o", str(tmp_path / "ray.padim"), *FLAGS, "--ray",
        cluster.address)  # fmt: skip
    assert main(["fit", train, "-o", str(tmp_path / "local.padim"), *FLAGS]) == 0
    expected = local_rows(tmp_path / "local.padim", mvtec_tree / "test", tmp_path / "local")
    assert_same_rows(local_rows(tmp_path / "ray.padim", mvtec_tree / "test", tmp_path / "ray"), expected, 2e-4)


def test_a_fit_whose_shard_dies_on_two_nodes_counts_each_image_once(cluster, mvtec_tree: Path, tmp_path: Path) -> None:
    done = run(cluster, str(Path(__file__).with_name("ray_job.py")), "fit", cluster.address, str(mvtec_tree),
               str(tmp_path / "m.padim"), "--marker", str(tmp_path / "died"))  # fmt: skip
    result = result_of(done)
    assert result["died"] and result["n_images"] == result["count"] == 7  # 8 good images, one held out


@pytest.mark.skipif(shutil.which("moto_server", path=str(Path(sys.executable).parent)) is None,
                    reason="moto (an S3-compatible server) is not installed")  # fmt: skip
def test_images_and_pictures_on_object_storage(cluster, s3_endpoint, tiny_onnx: Path, mvtec_tree: Path,
                                               tmp_path: Path) -> None:  # fmt: skip
    from pyarrow import fs

    bucket = fs.S3FileSystem(endpoint_override=s3_endpoint, allow_bucket_creation=True, **_keys())
    bucket.create_dir("line")
    for path in sorted((mvtec_tree / "test").rglob("*.png")):
        with bucket.open_output_stream(f"line/images/{path.parent.name}/{path.name}") as stream:
            stream.write(path.read_bytes())
    expected = local_rows(tiny_onnx, mvtec_tree / "test", tmp_path / "local")
    done = run(cluster, "-m", "padim.cli.main", "predict", str(tiny_onnx), "s3://line/images", "-r",
               "-o", "s3://line/out", "--overlays", "all", "--ray", cluster.address)  # fmt: skip
    assert "wrote s3://line/out/predictions.csv" in done.stderr
    with bucket.open_input_stream("line/out/predictions.csv") as stream:
        got = rows(stream.read().decode())
    assert_same_rows(got, expected)
    for row in got.values():
        assert row["path"].startswith("s3://line/images/")
        with bucket.open_input_stream(f"line/out/{row['overlay']}") as stream:
            assert stream.read() == (tmp_path / "local" / row["overlay"]).read_bytes()


def _keys() -> dict:
    return {"access_key": S3["AWS_ACCESS_KEY_ID"], "secret_key": S3["AWS_SECRET_ACCESS_KEY"]}


def test_a_scoring_actor_killed_half_way(cluster, slower: Path, many: Path, tmp_path: Path) -> None:
    expected = local_rows(slower, many, tmp_path / "local")
    leaders = f"{cluster.session(0)},{cluster.session(1)}"
    done = run(cluster, str(Path(__file__).with_name("ray_job.py")), "predict", cluster.address, str(slower),
               str(tmp_path / "ray"), str(many), "--kill", "actor", "--session", leaders, "--at", "4")  # fmt: skip
    result = result_of(done)
    assert result["killed"] == 1, result
    text = (tmp_path / "ray" / "predictions.csv").read_text()
    assert len(text.splitlines()) == 1 + MANY  # every file exactly one row
    assert_same_rows(rows(text), expected)
    assert result["restarted_actors"] >= 1 and result["redone"] >= 1, result["line"]


@pytest.mark.xfail(
    strict=False,
    reason="known: Ray Data sometimes waits for ever after a node is lost (about 1 run in 4); "
    "the driver's stall guard does not always end it. Under investigation; see the closing note.",
)
def test_the_second_node_lost_half_way(cluster, slower: Path, many: Path, tmp_path: Path) -> None:
    expected = local_rows(slower, many, tmp_path / "local")
    try:
        done = run(cluster, str(Path(__file__).with_name("ray_job.py")), "predict", cluster.address, str(slower),
                   str(tmp_path / "ray"), str(many), "--kill", "raylet", "--session", str(cluster.session(1)),
                   "--at", "4")  # fmt: skip
        result = result_of(done)
        assert result["killed"] == 1, result
        text = (tmp_path / "ray" / "predictions.csv").read_text()
        assert len(text.splitlines()) == 1 + MANY
        assert_same_rows(rows(text), expected)
        assert cluster.alive() == 1  # the node is gone, and the job said so, with what it redid (if it held work)
        assert result["lost_nodes"] == 1 and "lost 1 node(s)" in result["line"], result["line"]
    finally:  # the next test (if any) gets both nodes again
        cluster.stop_node(1)
        cluster.start_node(1)
