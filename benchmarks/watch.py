"""``padim watch`` on a line, measured as a user runs it: latency, backlog throughput, a soak, a crash.

Run from the repository root, with a model fitted on 512x512 JPEGs and exported:

    python -m padim.cli.main fit ../shared/data/hazelnut_toy/hazelnut -o /tmp/padim-watch-bench/hazelnut.padim
    python -m padim.cli.main export /tmp/padim-watch-bench/hazelnut.padim -o /tmp/padim-watch-bench/hazelnut.onnx
    python benchmarks/watch.py --model /tmp/padim-watch-bench/hazelnut.onnx \\
        --images ../shared/data/hazelnut_toy/hazelnut --out benchmarks/results/watch --soak-seconds 1200

Every command runs as its own process (``python -m padim.cli.main``), as a user starts it. The
images are hazelnut's 51 JPEGs (512x512), copied under new names. Arrivals are renames into the
watched folder (``.NAME.part`` -> ``NAME.jpg``), the way camera software should write; a row's time is
when this script, polling ``predictions.csv`` every 2 ms, first reads it.

1. latency: ``--rate`` images per second (10) for ``--latency-images`` (600) after 20 not counted;
   the time from each rename to its row: p50, p90, p99, max;
2. backlog: ``--backlog`` files (500) renamed in at once into a running watcher, against
   ``padim predict`` on the same files, alternating, ``--rounds`` rounds; throughput from the first
   row to the last (both pay their first batch alike), and the watcher's from the first rename too;
3. soak: ``--soak-rate`` images per second (5) for ``--soak-seconds`` with ``--move-to`` and a
   webhook: resident memory and open files of the watcher every 5 s after a 30 s warm-up;
4. crash: 300 files at 20 per second, SIGKILL after 100 rows, the rest arrives while it is down,
   a restart: every file one row, every verdict delivered (webhook, and MQTT when mosquitto is
   installed), repeats counted.

The machine is usually shared: the load average is recorded at each step; compare ratios.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


class RowClock:
    """When each row of a ``predictions.csv`` first appears (polled every 2 ms, whole lines only)."""

    def __init__(self, path: Path) -> None:
        self.path, self.seen, self.order = path, {}, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        offset, buffer, header = 0, b"", True
        while not self._stop.is_set():
            try:
                with open(self.path, "rb") as handle:
                    handle.seek(offset)
                    chunk = handle.read()
            except FileNotFoundError:
                chunk = b""
            now = time.monotonic()
            if chunk:
                offset += len(chunk)
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if header:
                        header = False
                        continue
                    name = os.path.basename(line.split(b",")[0].decode())
                    if name not in self.seen:
                        self.seen[name] = now
                        self.order.append(name)
            time.sleep(0.002)

    def wait(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.seen) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.path}: {len(self.seen)} rows of {count} after {timeout:g} s")
            time.sleep(0.01)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class Receiver:
    """A webhook receiver on 127.0.0.1 counting the verdicts it gets, by path."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/verdicts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def padim(*argv: str, log: Path) -> subprocess.Popen:
    environment = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    with open(log, "ab") as handle:
        return subprocess.Popen([sys.executable, "-m", "padim.cli.main", *argv], env=environment,
                                stdout=subprocess.DEVNULL, stderr=handle)  # fmt: skip


def start_watch(model: Path, folder: Path, out: Path, log: Path, *options: str) -> subprocess.Popen:
    log.write_text("")
    process = padim("watch", str(model), str(folder), "-o", str(out), *options, log=log)
    deadline = time.monotonic() + 120
    while "watching" not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"padim watch did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.05)
    return process


def stop(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(120)


def drop(data: bytes, folder: Path, name: str) -> float:
    """Write ``name`` under a hidden temporary name and rename it into place; the time of the rename."""
    hidden = folder / f".{name}.part"
    hidden.write_bytes(data)
    os.replace(hidden, folder / name)
    return time.monotonic()


def paced(images: list[bytes], folder: Path, count: int, rate: float, prefix: str, start: int = 0) -> dict[str, float]:
    """Drop ``count`` images at ``rate`` per second (an absolute schedule); name -> time of arrival."""
    arrived, origin = {}, time.monotonic()
    for i in range(count):
        delay = origin + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        name = f"{prefix}-{start + i:05d}.jpg"
        arrived[name] = drop(images[(start + i) % len(images)], folder, name)
    return arrived


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def latency(model: Path, images: list[bytes], work: Path, rate: float, count: int) -> dict[str, Any]:
    folder, out, log = work / "latency-in", work / "latency-out", work / "latency.log"
    folder.mkdir()
    process = start_watch(model, folder, out, log)
    clock = RowClock(out / "predictions.csv")
    load = os.getloadavg()[0]
    try:
        paced(images, folder, 20, rate, "warm")
        clock.wait(20, 60)
        arrived = paced(images, folder, count, rate, "part")
        clock.wait(20 + count, 120)
    finally:
        code = stop(process)
        clock.close()
    waits = [(clock.seen[name] - t) * 1000 for name, t in arrived.items()]
    return dict(rate=rate, images=count, p50_ms=percentile(waits, 50), p90_ms=percentile(waits, 90),
                p99_ms=percentile(waits, 99), max_ms=max(waits), mean_ms=statistics.mean(waits), exit=code,
                load_average=[load, os.getloadavg()[0]])  # fmt: skip


def backlog(model: Path, images: list[bytes], work: Path, count: int, rounds: int) -> dict[str, Any]:
    staging = work / "backlog-staging"
    staging.mkdir()
    names = [f"part-{i:05d}.jpg" for i in range(count)]
    for i, name in enumerate(names):
        (staging / name).write_bytes(images[i % len(images)])
    results: dict[str, list] = {"predict": [], "watch": [], "watch_from_arrival": []}
    loads = []
    for r in range(rounds):
        loads.append(os.getloadavg()[0])
        out = work / f"predict-{r}"
        clock = RowClock(out / "predictions.csv")
        process = padim("predict", str(model), str(staging), "-o", str(out), "--quiet", log=work / "predict.log")
        if process.wait(600) != 0:
            raise RuntimeError((work / "predict.log").read_text()[-2000:])
        clock.wait(count, 30)
        clock.close()
        first, last = min(clock.seen.values()), max(clock.seen.values())
        results["predict"].append((count - 1) / (last - first))
        folder, out = work / f"backlog-in-{r}", work / f"watch-{r}"
        folder.mkdir()
        process = start_watch(model, folder, out, work / "backlog.log")
        clock = RowClock(out / "predictions.csv")
        time.sleep(1.0)
        start = time.monotonic()
        for name in names:  # all at once: renames from a folder on the same file system
            os.rename(staging / name, folder / name)
        try:
            clock.wait(count, 600)
        finally:
            stop(process)
            clock.close()
        first, last = min(clock.seen.values()), max(clock.seen.values())
        results["watch"].append((count - 1) / (last - first))
        results["watch_from_arrival"].append(count / (last - start))
        for name in names:
            os.rename(folder / name, staging / name)
    median = {k: statistics.median(v) for k, v in results.items()}
    return dict(files=count, rounds=rounds, images_per_s=results, median_images_per_s=median,
                ratio=median["watch"] / median["predict"],
                ratio_rounds=[w / p for w, p in zip(results["watch"], results["predict"])], load_average=loads)  # fmt: skip


def proc_numbers(pid: int) -> tuple[float, int]:
    """(resident memory in MiB, open file descriptors) of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return rss / 1024, len(os.listdir(f"/proc/{pid}/fd"))


def soak(model: Path, images: list[bytes], work: Path, rate: float, seconds: float) -> dict[str, Any]:
    folder, out, sorted_, log = work / "soak-in", work / "soak-out", work / "soak-sorted", work / "soak.log"
    folder.mkdir()
    receiver = Receiver()
    process = start_watch(model, folder, out, log, "--move-to", str(sorted_), "--webhook", receiver.url)
    samples: list[tuple[float, float, int]] = []
    done = threading.Event()

    def sample() -> None:
        start = time.monotonic()
        while not done.wait(5.0):
            samples.append((time.monotonic() - start, *proc_numbers(process.pid)))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    loads = [os.getloadavg()[0]]
    try:
        count = int(seconds * rate)
        paced(images, folder, count, rate, "soak")
        loads.append(os.getloadavg()[0])
        deadline = time.monotonic() + 60
        while len(receiver.bodies) < count and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        done.set()
        sampler.join()
        code = stop(process)
        receiver.close()
    rows = (out / "predictions.csv").read_text().count("\n") - 1
    steady = [s for s in samples if s[0] >= 30.0]
    window = max(1, len(steady) // 5)
    first = statistics.mean(s[1] for s in steady[:window])
    last = statistics.mean(s[1] for s in steady[-window:])
    return dict(rate=rate, seconds=seconds, images=count, rows=rows, delivered=len(receiver.bodies), exit=code,
                rss_first_mib=first, rss_last_mib=last, rss_growth=(last - first) / first,
                rss_max_mib=max(s[1] for s in steady), fds_min=min(s[2] for s in steady),
                fds_max=max(s[2] for s in steady), samples=samples, load_average=loads)  # fmt: skip


def crash(model: Path, images: list[bytes], work: Path, total: int = 300, kill_at: int = 100) -> dict[str, Any]:
    folder, out, log = work / "crash-in", work / "crash-out", work / "crash.log"
    folder.mkdir()
    receiver, broker, messages = Receiver(), None, []
    options = ["--webhook", receiver.url]
    mosquitto = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if mosquitto:
        import paho.mqtt.client as mqtt

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        (work / "mosquitto.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
        broker = subprocess.Popen([mosquitto, "-c", str(work / "mosquitto.conf")], stderr=subprocess.DEVNULL,
                                  start_new_session=True)  # fmt: skip
        time.sleep(0.5)
        subscriber = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        subscriber.on_message = lambda c, u, m: messages.append(json.loads(m.payload))
        subscriber.connect("127.0.0.1", port)
        subscriber.subscribe("line/verdicts", qos=1)
        subscriber.loop_start()
        options += ["--mqtt", f"mqtt://127.0.0.1:{port}/line/verdicts"]
    process = start_watch(model, folder, out, log, *options)
    clock = RowClock(out / "predictions.csv")
    feeder = threading.Thread(target=paced, args=(images, folder, total, 20.0, "crash"))
    feeder.start()
    clock.wait(kill_at, 120)
    process.send_signal(signal.SIGKILL)
    process.wait(30)
    before = len(clock.seen)
    feeder.join()
    process = start_watch(model, folder, out, log, *options)
    clock.wait(total, 300)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (len({b["path"] for b in receiver.bodies}) < total
                                           or (broker and len({m["path"] for m in messages}) < total)):  # fmt: skip
        time.sleep(0.1)
    code = stop(process)
    clock.close()
    receiver.close()
    if broker is not None:
        subscriber.loop_stop()
        os.killpg(broker.pid, signal.SIGTERM)
        broker.wait(10)
    rows = collections.Counter(
        line.split(",")[0] for line in (out / "predictions.csv").read_text().splitlines()[1:]
    )  # fmt: skip

    def counted(found: list[dict]) -> dict[str, int]:
        c = collections.Counter(m["path"] for m in found)
        return dict(paths=len(c), repeats=sum(n - 1 for n in c.values()),
                    in_order=[m["seq"] for m in found] == sorted(m["seq"] for m in found))  # fmt: skip

    return dict(files=total, rows_before_kill=before, rows=sum(rows.values()), files_with_rows=len(rows),
                files_with_two_rows=sum(n > 1 for n in rows.values()), webhook=counted(receiver.bodies),
                mqtt=counted(messages) if broker is not None else None, exit_after_sigterm=code)  # fmt: skip


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def markdown(r: dict[str, Any]) -> str:
    env, lat, back, soak_, crash_ = r["environment"], r["latency"], r["backlog"], r["soak"], r["crash"]
    ok = lambda good: "met" if good else "not met"  # noqa: E731
    lines = [
        "# `padim watch` on a line",
        "",
        f"{env['cpu']}, {env['cpus']} CPUs shared with other jobs; Python {env['python']}; model: "
        f"{env['model']} (hazelnut, efficientnet_lite0, 256 px, `.onnx`); images: hazelnut's 512x512 JPEGs, "
        "renamed into the watched folder. Command: `python benchmarks/watch.py` (see its docstring).",
        "",
        "| goal | measured | |",
        "|---|---|---|",
        f"| arrival (rename) to CSV row at {lat['rate']:g} images/s: p50 <= 100 ms | p50 {lat['p50_ms']:.0f} ms "
        f"(p90 {lat['p90_ms']:.0f}, max {lat['max_ms']:.0f}; {lat['images']} images) | {ok(lat['p50_ms'] <= 100)} |",
        f"| the same: p99 <= 250 ms | p99 {lat['p99_ms']:.0f} ms | {ok(lat['p99_ms'] <= 250)} |",
        f"| a backlog of {back['files']} files judged at >= 0.9 of `padim predict`'s throughput | "
        f"{back['ratio']:.2f} (rounds: {', '.join(f'{x:.2f}' for x in back['ratio_rounds'])}) | {ok(back['ratio'] >= 0.9)} |",
        f"| soak at {soak_['rate']:g} images/s, {soak_['seconds'] / 60:g} min: resident memory flat (within 5%) | "
        f"{100 * soak_['rss_growth']:+.1f}% ({soak_['rss_first_mib']:.0f} -> {soak_['rss_last_mib']:.0f} MiB, max "
        f"{soak_['rss_max_mib']:.0f}) | {ok(abs(soak_['rss_growth']) <= 0.05)} |",
        f"| the same: no growth in open files | {soak_['fds_min']} to {soak_['fds_max']} descriptors | "
        f"{ok(soak_['fds_max'] - soak_['fds_min'] <= 2)} |",
        f"| SIGKILL and restart: every file one row | {crash_['files_with_rows']} of {crash_['files']} files, "
        f"{crash_['files_with_two_rows']} with two rows | {ok(crash_['files_with_rows'] == crash_['files'] and not crash_['files_with_two_rows'])} |",
        f"| the same: every verdict delivered | webhook {crash_['webhook']['paths']} of {crash_['files']} "
        f"({crash_['webhook']['repeats']} repeated)"
        + ("" if crash_["mqtt"] is None else f", MQTT {crash_['mqtt']['paths']} ({crash_['mqtt']['repeats']} repeated)")
        + f" | {ok(crash_['webhook']['paths'] == crash_['files'])} |",
        "",
        f"Backlog throughput, images/s (median of {back['rounds']} rounds, first row to last row): `padim predict` "
        f"{back['median_images_per_s']['predict']:.1f}, `padim watch` {back['median_images_per_s']['watch']:.1f} "
        f"({back['median_images_per_s']['watch_from_arrival']:.1f} from the first rename, its first batch included).",
        "",
        f"Load average (1 min) during: latency {', '.join(f'{x:.1f}' for x in lat['load_average'])}; backlog "
        f"{', '.join(f'{x:.1f}' for x in back['load_average'])}; soak {', '.join(f'{x:.1f}' for x in soak_['load_average'])}. "
        "Measured: "
        + ", ".join(f"{k} {r[k].get('measured', '?')}" for k in ("latency", "backlog", "soak", "crash"))
        + ".",
        "",
        f"Soak: {soak_['images']} images with `--move-to` and `--webhook`, {soak_['rows']} rows, {soak_['delivered']} "
        f"verdicts delivered; memory and descriptors sampled every 5 s after a 30 s warm-up, first and last fifth "
        f"of the samples compared. Crash: {crash_['rows_before_kill']} rows before the SIGKILL, the rest judged "
        "after the restart (files that arrived while it was down included).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True, help="a folder with 512x512 JPEGs (searched below)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "watch")
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--latency-images", type=int, default=600)
    parser.add_argument("--backlog", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--soak-rate", type=float, default=5.0)
    parser.add_argument("--soak-seconds", type=float, default=1200.0)
    parser.add_argument("--skip", nargs="*", default=[], choices=["latency", "backlog", "soak", "crash"],
                        help="steps not run: their results are kept from the JSON already at --out")  # fmt: skip
    args = parser.parse_args()
    images = [p.read_bytes() for p in sorted(args.images.rglob("*.jpg"))]
    if not images:
        raise SystemExit(f"{args.images}: no .jpg images")
    kept = args.out.with_suffix(".json")
    results: dict[str, Any] = json.loads(kept.read_text()) if args.skip and kept.exists() else {}
    results["environment"] = dict(cpu=cpu_model(), cpus=len(os.sched_getaffinity(0)),
                                  python=platform.python_version(), model=args.model.name)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="padim-watch-bench-") as work:
        steps = dict(latency=lambda w: latency(args.model, images, w, args.rate, args.latency_images),
                     backlog=lambda w: backlog(args.model, images, w, args.backlog, args.rounds),
                     soak=lambda w: soak(args.model, images, w, args.soak_rate, args.soak_seconds),
                     crash=lambda w: crash(args.model, images, w))  # fmt: skip
        for name, step in steps.items():
            if name in args.skip:
                continue
            folder = Path(work) / name
            folder.mkdir()
            print(f"watch benchmark: {name} ...", file=sys.stderr, flush=True)
            results[name] = {**step(folder), "measured": time.strftime("%Y-%m-%d %H:%M")}
            print(json.dumps({k: v for k, v in results[name].items() if k != "samples"}), file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    if all(step in results for step in ("latency", "backlog", "soak", "crash")):
        args.out.with_suffix(".md").write_text(markdown(results))


if __name__ == "__main__":
    main()
