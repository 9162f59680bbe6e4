"""Real parts for the ``padim watch`` tests: a Mosquitto broker, an HTTP receiver, the watcher in a thread.

Everything listens on 127.0.0.1 only, on a free port; every wait is bounded in time.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def wait_for(condition: Callable[[], object], timeout: float = 20.0, what: str = "the condition") -> object:
    """Poll ``condition`` every 20 ms until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rows(path: Path) -> list[dict]:
    """The rows of a predictions.csv (none if it does not exist yet)."""
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def drop(source: Path, folder: Path, name: str | None = None) -> Path:
    """Copy ``source`` into ``folder`` the way camera software should: a hidden name, then a rename into place."""
    target = folder / (name or source.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    hidden = target.parent / f".{target.name}.part"
    shutil.copyfile(source, hidden)
    os.replace(hidden, target)
    return target


class Broker:
    """A Mosquitto broker on 127.0.0.1 in its own process group; ``persistence`` keeps sessions over a restart."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        if not Path(MOSQUITTO).exists():
            pytest.fail("mosquitto is not installed (.ci/run installs Debian's mosquitto)")
        self.folder, self.port = folder, port or free_port()
        self.config = folder / "mosquitto.conf"
        self.config.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                               f"persistence_location {folder}/\nautosave_interval 1\n")  # fmt: skip
        self.process: subprocess.Popen | None = None

    def start(self) -> Broker:
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        wait_for(self._listening, 10, "mosquitto to listen")
        return self

    def _listening(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
            return True
        return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # its own group: mosquitto alone
            self.process.wait(10)
        self.process = None


class Subscriber:
    """An MQTT subscriber (paho, QoS 1, a persistent session) collecting the JSON messages of one topic."""

    def __init__(self, port: int, topic: str, client_id: str = "padim-test-subscriber") -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[dict] = []
        self.connected = threading.Event()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        client.on_message = lambda c, u, m: self.messages.append(json.loads(m.payload))
        client.on_connect = lambda c, u, f, rc, p: (c.subscribe(topic, qos=1), self.connected.set())
        client.on_disconnect = lambda c, u, f, rc, p: self.connected.clear()
        client.reconnect_delay_set(0.2, 1)
        client.connect("127.0.0.1", port)
        client.loop_start()
        self.client = client
        wait_for(self.connected.is_set, 10, "the subscriber to connect")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Receiver:
    """A webhook receiver on 127.0.0.1: records each POSTed JSON body; answers ``status`` (settable: 503 = down)."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.status == 200:
                    receiver.bodies.append(json.loads(body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/verdicts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def watching(predictor, source, output: Path, **options) -> Iterator[dict]:
    """Run :func:`padim.jobs.watch.watch` in a thread; on exit stop it (as SIGTERM does) and wait for it.

    Yields a dict that holds ``summary`` (or ``error``) once the watcher has returned.
    """
    from padim.jobs.watch import watch

    stop, result = threading.Event(), {}

    def run() -> None:
        try:
            result["summary"] = watch(predictor, str(source), output, stop=stop, **{"quiet": True, **options})
        except BaseException as error:
            result["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    result["thread"], result["stop"] = thread, stop
    try:
        yield result
    finally:
        stop.set()
        thread.join(30)
        assert not thread.is_alive(), "the watcher did not stop within 30 s"
    if "error" in result:
        raise result["error"]
