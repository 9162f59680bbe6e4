"""A Ray cluster of two nodes on this machine, for tests: ``ray start --head`` and ``ray start --address``.

Each node is one ``ray start --block`` process, the leader of a session of its own that its
raylet and workers share, so a node is stopped, or its raylet killed, by process id. Both use
loopback addresses (127.0.0.2 and 127.0.0.3: Ray on Linux replaces 127.0.0.1 by the machine's
network address for a node that joins a cluster, other loopback addresses it keeps) and Ray's
token authentication (``RAY_AUTH_MODE=token``, a fresh token in ``RAY_AUTH_TOKEN_PATH``). Drivers
are subprocesses given :attr:`LocalCluster.env`. Every wait is bounded in time; :meth:`stop` kills
what is left of both sessions.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import padim

RAY = Path(sys.executable).with_name("ray")
SRC = Path(padim.__file__).resolve().parents[1]
#: Ray's settings for the tests: a lost node is declared dead in about two seconds, not thirty.
FAST_FAILURE = {"RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "1000",
                "RAY_health_check_failure_threshold": "3", "RAY_health_check_initial_delay_ms": "1000"}  # fmt: skip


def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def session_pids(leader: int) -> list[int]:
    """The processes of the session ``leader`` started (Ray's workers have process groups of their own)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == leader:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def named(leader: int, text: str) -> list[int]:
    """The processes of a session whose command line holds ``text``."""
    found = []
    for pid in session_pids(leader):
        try:
            if text in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                found.append(pid)
        except OSError:
            continue
    return found


class LocalCluster:
    """Two Ray nodes on this machine (``cpus`` each); :attr:`address` and :attr:`env` for the drivers."""

    def __init__(self, cpus: tuple[int, int] = (2, 2), env: dict | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
        token = self.root / "token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        self.cpus, self.address = cpus, ""
        self.env = {**os.environ, **FAST_FAILURE, **(env or {}), "RAY_AUTH_MODE": "token",
                    "RAY_AUTH_TOKEN_PATH": str(token), "PYTHONPATH": os.pathsep.join([str(SRC), str(SRC.parent / "tests")]),
                    "RAY_USAGE_STATS_ENABLED": "0"}  # fmt: skip
        self.env.pop("RAY_ADDRESS", None)
        self.nodes: list[subprocess.Popen | None] = [None, None]

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 120) -> None:
        port = free_port("127.0.0.2")
        self.address = f"127.0.0.2:{port}"
        head = ["--head", "--node-ip-address", "127.0.0.2", "--port", str(port), "--include-dashboard", "false",
                "--temp-dir", str(self.root / "t")]  # fmt: skip
        self._start(0, head, timeout)
        self.start_node(1, timeout)

    def start_node(self, index: int, timeout: float = 120) -> None:
        self._start(index, ["--address", self.address, "--node-ip-address", f"127.0.0.{2 + index}"], timeout)
        self.wait_nodes(2 if index else 1, timeout)

    def _start(self, index: int, args: list[str], timeout: float) -> None:
        log = self.root / f"node{index}.log"
        command = [str(RAY), "start", *args, "--num-cpus", str(self.cpus[index]), "--disable-usage-stats", "--block",
                   "--dashboard-agent-listen-port", str(free_port("127.0.0.1"))]  # fmt: skip
        with open(log, "ab") as out:
            self.nodes[index] = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                                 start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + timeout
        while b"Ray runtime started" not in log.read_bytes():
            if self.nodes[index].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray node {index} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)

    def alive(self, timeout: float = 60) -> int:
        """Nodes the cluster counts alive (asked by a driver of its own)."""
        probe = "import ray; ray.init(address=%r, log_to_driver=False); print(sum(n['Alive'] for n in ray.nodes()))"
        done = subprocess.run([sys.executable, "-c", probe % self.address], env=self.env, capture_output=True,
                              text=True, timeout=timeout)  # fmt: skip
        return int(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 and done.stdout.strip() else 0

    def wait_nodes(self, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.alive() != count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not reach {count} alive node(s) in {timeout:.0f} s")
            time.sleep(1)

    def session(self, index: int) -> int:
        node = self.nodes[index]
        return -1 if node is None else node.pid

    def stop_node(self, index: int, timeout: float = 20) -> None:
        """SIGTERM the node's ``ray start`` (it stops its raylet and workers), then SIGKILL what is left of its session."""
        node = self.nodes[index]
        if node is None:
            return
        if node.poll() is None:
            node.send_signal(signal.SIGTERM)
            try:
                node.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + timeout
        while (left := session_pids(node.pid)) and time.monotonic() < deadline:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.2)
        if node.poll() is None:
            node.kill()
        node.wait(timeout)
        self.nodes[index] = None

    def stop(self) -> None:
        for index in (1, 0):
            self.stop_node(index)
        shutil.rmtree(self.root, ignore_errors=True)

    def logs(self) -> str:
        """The end of each node's ``ray start`` output (for a failed test's message)."""
        return "\n".join(p.read_text(errors="replace")[-2000:] for p in sorted(self.root.glob("node*.log")))
