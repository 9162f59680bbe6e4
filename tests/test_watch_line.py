"""``padim watch`` with real parts: a crash (SIGKILL) and a restart, a video written by OpenCV, a live stream.

The command runs as a process of its own where a signal matters; a Mosquitto broker and an HTTP
receiver listen on 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import collections
import io
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import padim
from padim.io.inputs import image_samples
from padim.jobs.predict import predict_files
from padim.runtime.opening import open_model

from watching import Broker, Receiver, Subscriber, drop, rows, wait_for, watching

cv2 = pytest.importorskip("cv2")
SRC = Path(padim.__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def predictor(tiny_onnx):
    return open_model(tiny_onnx)


def frames_of(mvtec_tree: Path, count: int) -> list[np.ndarray]:
    """``count`` RGB frames (64 x 64) cycling through the test images."""
    images = sorted((mvtec_tree / "test").rglob("*.png"))
    return [np.asarray(Image.open(images[i % len(images)]).convert("RGB")) for i in range(count)]


def start_watch(*argv: str, log: Path) -> subprocess.Popen:
    environment = {**os.environ, "PYTHONPATH": str(SRC)}
    with open(log, "ab") as handle:
        return subprocess.Popen([sys.executable, "-m", "padim.cli.main", "watch", *argv], env=environment,
                                stdout=subprocess.DEVNULL, stderr=handle)  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sigkill_and_restart_every_file_one_row_every_verdict_delivered(tiny_onnx, mvtec_tree, tmp_path):
    watched, out, log = tmp_path / "in", tmp_path / "out", tmp_path / "watch.log"
    watched.mkdir()
    images = sorted((mvtec_tree / "test").rglob("*.png"))
    receiver, broker = Receiver(), Broker(tmp_path).start()
    subscriber = Subscriber(broker.port, "line/verdicts")
    argv = (str(tiny_onnx), str(watched), "-o", str(out), "--webhook", receiver.url, "--mqtt",
            f"mqtt://127.0.0.1:{broker.port}/line/verdicts")  # fmt: skip
    total, dropped = 60, []

    def dropper() -> None:  # 25 parts a second, on through the crash
        for i in range(total):
            dropped.append(drop(images[i % len(images)], watched, f"part-{i:03d}.png"))
            time.sleep(0.04)

    process = start_watch(*argv, log=log)
    try:
        wait_for(lambda: "watching" in log.read_text(), 60, "the watcher to start")
        thread = threading.Thread(target=dropper)
        thread.start()
        wait_for(lambda: len(rows(out / "predictions.csv")) >= 10, 60, "ten rows")
        process.send_signal(signal.SIGKILL)  # a crash, in the middle of the stream of parts
        process.wait(10)
        judged_before = len(rows(out / "predictions.csv"))
        thread.join(30)
        assert judged_before < total  # some arrived while it was down
        process = start_watch(*argv, log=log)
        wait_for(lambda: len(rows(out / "predictions.csv")) >= total, 90, "a row for every part")
        wait_for(lambda: {b["path"] for b in receiver.bodies} >= {str(p) for p in dropped}, 30, "every webhook message")
        wait_for(lambda: len({m["path"] for m in subscriber.messages}) >= total, 30, "every MQTT message")
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        subscriber.close()
        broker.stop()
        receiver.close()
    text = log.read_text()
    assert "SIGTERM: finishing the image in hand" in text and "Traceback" not in text
    got = rows(out / "predictions.csv")
    assert sorted(r["path"] for r in got) == sorted(str(p) for p in dropped)  # each file exactly one row
    assert all(r["label"] in ("normal", "anomalous") for r in got)
    for messages in (receiver.bodies, subscriber.messages):
        counts = collections.Counter(m["path"] for m in messages)
        assert set(counts) == {str(p) for p in dropped}
        assert sum(n - 1 for n in counts.values()) <= 1  # only the message in flight at the crash may repeat
        seqs = [m["seq"] for m in messages]
        assert seqs == sorted(seqs)  # in order
        by_path = {r["path"]: r for r in got}
        assert all(m["label"] == by_path[m["path"]]["label"] for m in messages)


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (64, 64))
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame[..., ::-1])
    writer.release()


def test_a_video_written_by_opencv_is_judged_frame_by_frame(predictor, mvtec_tree, tmp_path):
    video = tmp_path / "clip.avi"
    write_video(video, frames_of(mvtec_tree, 12))
    # The reference: the same frames read by OpenCV, saved losslessly, judged by padim predict.
    capture, stills = cv2.VideoCapture(str(video)), tmp_path / "stills"
    stills.mkdir()
    while (frame := capture.read())[0]:
        Image.fromarray(frame[1][..., ::-1]).save(stills / f"{len(list(stills.iterdir())):03d}.png")
    capture.release()
    reference = rows(predict_files(predictor, image_samples(stills), tmp_path / "ref").csv_path)
    out = tmp_path / "out"
    with watching(predictor, video, out) as run:
        wait_for(lambda: len(rows(out / "predictions.csv")) == 12)
    got = rows(out / "predictions.csv")
    assert [r["path"] for r in got] == [f"{video}@00:00:{i / 10:06.3f}" for i in range(12)]
    np.testing.assert_allclose([float(r["score"]) for r in got], [float(r["score"]) for r in reference], rtol=1e-5)
    assert [r["label"] for r in got] == [r["label"] for r in reference]
    assert all(r["overlay"].startswith("overlays/clip.avi/00-00-") for r in got if r["overlay"])
    # Again, at 5 frames a second, into the same folder: only the frames not judged yet (none).
    with watching(predictor, video, out, fps=5) as run:
        wait_for(lambda: run["thread"].is_alive() is False or run.get("summary"), 30, "the end of the video")
    assert len(rows(out / "predictions.csv")) == 12
    with watching(predictor, video, tmp_path / "sampled", fps=5):
        wait_for(lambda: len(rows(tmp_path / "sampled" / "predictions.csv")) == 6)
    assert [r["path"][-6:] for r in rows(tmp_path / "sampled" / "predictions.csv")] == [
        f"{t:06.3f}" for t in (0, 0.2, 0.4, 0.6, 0.8, 1.0)]  # fmt: skip


class MjpegServer:
    """A live camera's HTTP stream (multipart JPEG) on 127.0.0.1: ``per_connection`` frames, then it drops."""

    def __init__(self, frames: list[np.ndarray], per_connection: int, interval: float) -> None:
        encoded = []
        for frame in frames:
            buffer = io.BytesIO()
            Image.fromarray(frame).save(buffer, "JPEG", quality=95)
            encoded.append(buffer.getvalue())
        self.served, self.connections = 0, 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.connections += 1
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                for k in range(per_connection):
                    data = encoded[k % len(encoded)]
                    self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(data))
                    self.wfile.write(data + b"\r\n")
                    server.served += 1
                    time.sleep(interval)

            def log_message(self, *args) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/camera.mjpg"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


class Slow:
    """A predictor that takes 50 ms more per batch: a camera faster than the model."""

    def __init__(self, predictor) -> None:
        self.predictor, self.image_size, self.calibration = predictor, predictor.image_size, predictor.calibration

    def predict_batch(self, images):
        time.sleep(0.05)
        return self.predictor.predict_batch(images)


@pytest.mark.slow
def test_a_live_stream_skips_frames_it_cannot_judge_and_reconnects(predictor, mvtec_tree, tmp_path, capsys):
    server = MjpegServer(frames_of(mvtec_tree, 7), per_connection=60, interval=0.005)
    out = tmp_path / "out"
    try:
        with watching(Slow(predictor), server.url, out, queue_size=2, batch_size=1) as run:
            wait_for(lambda: server.connections >= 2 and len(rows(out / "predictions.csv")) >= 5, 60,
                     "a dropped stream opened again")  # fmt: skip
        summary = run["summary"]
    finally:
        server.close()
    got = rows(out / "predictions.csv")
    assert summary.skipped > 0 and summary.judged == len(got) and len(got) + summary.skipped <= server.served
    assert all(r["path"].startswith(server.url + "@20") and r["label"] in ("normal", "anomalous") for r in got)
    err = capsys.readouterr().err
    assert "skipping frames" in err and "the stream dropped; opening it again" in err and "the stream is back" in err


def test_video_sources_without_opencv_name_the_extra(tiny_onnx, tmp_path, capsys, monkeypatch):
    from padim.cli.main import main

    monkeypatch.setattr("padim.extras.missing", lambda extra: ["cv2"] if extra == "video" else [])
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")
    assert main(["watch", str(tiny_onnx), str(video), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "needs the 'video' extra" in err and "pip install 'padim-toolkit[video]'" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
