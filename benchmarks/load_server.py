"""Load test of ``padim serve``: K concurrent clients on loopback send a fixed number of requests.

Starts the server (:func:`padim.serve.run.run`) in a subprocess on 127.0.0.1, waits for
``/health``, then K client threads (one keep-alive httpx connection each) each POST the same
real image R times to ``/predict``. Reports throughput, client-side latency (p50, p99, max),
the server's own ``latency_ms``, the error count (goal 0: any answer other than 200, or a
failed connection) and the server's peak resident memory (VmHWM from /proc, over the server
process and its children; psutil samples as a cross-check where installed). Everything is
bounded: K x R requests, a per-request timeout and ``--max-seconds`` for the whole run, after
which clients stop and the requests not sent are counted as errors.

Writes ``benchmarks/results/load_server.md`` and ``.json``.

    # fit a model on the hazelnut toy set (256 px), export it, serve the .onnx, 8 clients x 200 requests
    python benchmarks/load_server.py --fit ../shared/data/hazelnut_toy/hazelnut --clients 8 --requests 200
    # or serve a model file you have
    python benchmarks/load_server.py --model bottle.onnx --image bottle/test/good/000.png
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its descendants (from /proc), for servers with worker processes."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        stack.extend(children.get(current, []))
    return found


def status_kib(pid: int, key: str) -> int:
    """A ``/proc/<pid>/status`` memory field in KiB (0 if the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class MemoryWatch(threading.Thread):
    """Samples the server tree's RSS every 50 ms; keeps each process's VmHWM (kernel-tracked peak)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_rss_sampled = 0
        self.hwm: dict[int, int] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            pids = tree_pids(self.pid)
            self.peak_rss_sampled = max(self.peak_rss_sampled, sum(status_kib(p, "VmRSS") for p in pids))
            for p in pids:
                self.hwm[p] = max(self.hwm.get(p, 0), status_kib(p, "VmHWM"))
            self.stop.wait(0.05)


def start_server(model: Path, port: int, workers: int, log: Path) -> subprocess.Popen:
    code = (
        "import sys; from padim.serve.app import run; "
        f"run({str(model)!r}, host='127.0.0.1', port={port}, workers={workers}, access_log=False)"
    )
    with open(log, "wb") as handle:
        return subprocess.Popen([sys.executable, "-c", code], stdout=handle, stderr=subprocess.STDOUT)


def wait_healthy(url: str, process: subprocess.Popen, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode} before answering /health")
        try:
            answer = httpx.get(url + "/health", timeout=2)
            if answer.status_code == 200:
                return answer.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server did not answer /health within {timeout:.0f} s")


def client(
    url: str, image: bytes, name: str, requests: int, heatmap: bool, timeout: float, deadline: float, out: list
) -> None:
    """One client: a keep-alive connection sending ``requests`` requests one after another."""
    with httpx.Client(base_url=url, timeout=timeout) as session:
        for _ in range(requests):
            if time.monotonic() > deadline:
                out.append({"ok": False, "error": "not sent: --max-seconds reached"})
                continue
            start = time.perf_counter()
            try:
                answer = session.post(
                    "/predict",
                    params={"heatmap": int(heatmap)},
                    files={"file": (name, image, mimetypes.guess_type(name)[0] or "application/octet-stream")},
                )
                seconds = time.perf_counter() - start
                if answer.status_code == 200:
                    out.append({"ok": True, "seconds": seconds, "server_ms": answer.json()["latency_ms"]})
                else:
                    out.append(
                        {"ok": False, "seconds": seconds, "error": f"HTTP {answer.status_code}: {answer.text[:200]}"}
                    )
            except httpx.HTTPError as error:
                out.append(
                    {"ok": False, "seconds": time.perf_counter() - start, "error": f"{type(error).__name__}: {error}"}
                )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def fit_and_export(category: Path, image_size: int, folder: Path) -> Path:
    from padim.model.export import export_onnx
    from padim.model.padim import Padim

    model = Padim(image_size=image_size).fit(category)
    return export_onnx(model, folder / f"{category.name}-{image_size}.onnx")


def markdown(result: dict) -> str:
    r = result
    return "\n".join(
        [
            "# Web service under load",
            "",
            f"`padim serve` ({r['server_workers']} worker process) on 127.0.0.1, {r['clients']} concurrent clients x "
            f"{r['requests_per_client']} requests = {r['requests']} POST /predict{'?heatmap=1' if r['heatmap'] else ''} "
            f"of one {r['image_bytes'] / 1024:.0f} KiB image ({r['image']}).",
            f"Model: {r['model']} ({r['model_kind']}, {r['image_size'][0]}x{r['image_size'][1]} px; {r['model_note']}).",
            f"Machine: {r['machine']}, {r['cpus']} CPUs (shared with other work), Python {r['python']}.",
            f"Command: `{r['command']}`",
            "",
            "| clients x requests | errors | throughput (req/s) | p50 ms | p99 ms | max ms | server p50 ms | server peak RSS (MiB) |",
            "|---|---|---|---|---|---|---|---|",
            f"| {r['clients']} x {r['requests_per_client']} | {r['errors']} | {r['throughput_rps']:.1f} | "
            f"{r['latency_p50_ms']:.0f} | {r['latency_p99_ms']:.0f} | {r['latency_max_ms']:.0f} | "
            f"{r['server_latency_p50_ms']:.0f} | {r['server_peak_rss_mib']:.0f} |",
            "",
            "Latency is the client's, from sending the request to the parsed answer; the server's own",
            "`latency_ms` runs from the request handler's start to the answer, without connection handling and transfer.",
            f"Peak RSS is the kernel's high-water mark (VmHWM) summed over the server's processes; "
            f"RSS after start-up was {r['server_rss_idle_mib']:.0f} MiB.",
            "",
        ]
        + ([f"First errors: {r['error_examples']}", ""] if r["errors"] else [])
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="a .onnx or .padim file to serve")
    source.add_argument(
        "--fit", type=Path, help="an MVTec-style category: fit (efficientnet_lite0), export, serve the .onnx"
    )
    parser.add_argument("--image-size", type=int, default=256, help="image size when fitting (default 256)")
    parser.add_argument("--image", type=Path, help="the image to send (default: the category's first test image)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200, help="requests per client")
    parser.add_argument("--heatmap", action="store_true", help="ask for the overlay PNG too")
    parser.add_argument("--workers", type=int, default=1, help="server worker processes")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="bound on the whole run")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "load_server")
    args = parser.parse_args()
    if not (1 <= args.clients <= 64 and 1 <= args.requests <= 10_000):
        parser.error(f"--clients must be 1..64 and --requests 1..10000, got {args.clients} and {args.requests}")

    with tempfile.TemporaryDirectory(prefix="padim-load-") as workdir:
        workdir = Path(workdir)
        if args.fit:
            print(f"fitting {args.fit} at {args.image_size} px ...", flush=True)
            model_path = fit_and_export(args.fit, args.image_size, workdir)
            model_note = f"fitted on {args.fit}/train/good, efficientnet_lite0 pretrained, exported to ONNX"
            category = args.fit
        else:
            model_path, model_note, category = args.model, "given with --model", None
        image_path = args.image
        if image_path is None:
            if category is None:
                parser.error("--image is needed with --model")
            from padim.io.images import list_images

            image_path = list_images(sorted(p for p in (category / "test").iterdir() if p.is_dir())[0])[0]
        image = image_path.read_bytes()

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = workdir / "server.log"
        server = start_server(model_path, port, args.workers, log)
        watch = MemoryWatch(server.pid)
        try:
            health = wait_healthy(url, server, timeout=180)
            time.sleep(0.5)
            idle_rss = sum(status_kib(p, "VmRSS") for p in tree_pids(server.pid))
            watch.start()
            outcomes: list[list[dict]] = [[] for _ in range(args.clients)]
            deadline = time.monotonic() + args.max_seconds
            threads = [
                threading.Thread(
                    target=client,
                    args=(
                        url,
                        image,
                        image_path.name,
                        args.requests,
                        args.heatmap,
                        args.timeout,
                        deadline,
                        outcomes[k],
                    ),
                )
                for k in range(args.clients)
            ]
            start = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            wall = time.perf_counter() - start
            watch.stop.set()
            watch.join()
            peak_kib = sum(
                max(watch.hwm.get(p, 0), status_kib(p, "VmHWM")) for p in set(watch.hwm) | set(tree_pids(server.pid))
            )
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        flat = [o for per_client in outcomes for o in per_client]
        good = [o for o in flat if o["ok"]]
        errors = [o for o in flat if not o["ok"]]
        latencies = [o["seconds"] * 1000 for o in good]
        server_ms = [o["server_ms"] for o in good]
        result = {
            "model": Path(model_path).name,
            "model_kind": health["kind"],
            "model_note": model_note,
            "image_size": health["image_size"],
            "image": str(image_path),
            "image_bytes": len(image),
            "clients": args.clients,
            "requests_per_client": args.requests,
            "requests": len(flat),
            "heatmap": args.heatmap,
            "server_workers": args.workers,
            "ok": len(good),
            "errors": len(errors),
            "error_examples": sorted({e["error"] for e in errors})[:5],
            "wall_s": wall,
            "throughput_rps": len(good) / wall,
            "latency_p50_ms": percentile(latencies, 50),
            "latency_p99_ms": percentile(latencies, 99),
            "latency_mean_ms": statistics.fmean(latencies) if latencies else float("nan"),
            "latency_max_ms": max(latencies, default=float("nan")),
            "server_latency_p50_ms": percentile(server_ms, 50),
            "server_latency_p99_ms": percentile(server_ms, 99),
            "server_peak_rss_mib": peak_kib / 1024,
            "server_peak_rss_sampled_mib": watch.peak_rss_sampled / 1024,
            "server_rss_idle_mib": idle_rss / 1024,
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "command": "python benchmarks/load_server.py " + " ".join(sys.argv[1:]),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
