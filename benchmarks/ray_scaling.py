"""Ray at scale: predict throughput against the local command, each stage's cost per image, and where it saturates.

Run from the repository root (the same command on any machine):

    PYTHONPATH=src python benchmarks/ray_scaling.py --data ../shared/data/mvtec_ad/bottle \\
        --out benchmarks/results/ray_scaling

1. predict: for each number of workers W (default 1, 2, 4, 8, those the machine's CPUs hold), a
   one-node cluster of 2W CPUs started with ``ray start --head`` (token authentication, loopback),
   and, in fresh processes as a user runs them, ``padim predict``'s job on that cluster (W scoring
   actors of one CPU, W CPUs of decoding tasks: :func:`padim.jobs.ray_cluster.plan`) against the
   local job on the same files (every CPU). Rounds alternate; medians. Each Ray run reports, per
   image: the driver's CPU (whole job, and once rows flow), the bytes handed to the actors and back
   to the driver, and each stage's time (:class:`padim.jobs.ray_cluster.RaySummary`);
2. the object store's bandwidth on this machine (``ray.put`` of 64 MB blocks in a worker);
3. the fit's merge: k shards' statistics (P = 4096, D = 100, float32) merged on the driver and
   factored there (before) against merge trees and factoring on the workers (now): the driver's
   CPU and the bytes it receives;
4. a table of the workers at which the driver or the object store would saturate, extrapolated
   from 1-3 (a network of ``--network-gbps`` between nodes assumed).

A pure-Python control (one task against two on the same work) shows the machine's own ceiling:
other jobs share it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")


# ---------------------------------------------------------------- one job, in a fresh process


def run_one(args: argparse.Namespace) -> None:
    """A job as a user runs it (imports included); prints its JSON on the last line."""
    start = time.perf_counter()
    from padim.io.inputs import image_samples

    samples = image_samples([f"@{args.list}"])
    if args.kind == "local":
        from padim.jobs.predict import predict_files
        from padim.runtime.opening import open_model

        summary = predict_files(open_model(args.model), samples, args.output, batch_size=16)
        print(json.dumps({"seconds": time.perf_counter() - start, "images": summary.n_images}))
        return
    from padim.jobs.ray_cluster import connect
    from padim.jobs.ray_predict import predict_files

    connect(args.address)
    s = predict_files(args.model, samples, args.output, batch_size=16)
    n = s.n_images + len(s.skipped)
    print(json.dumps({"seconds": time.perf_counter() - start, "images": s.n_images, "actors": s.actors,
                      "driver_ms": 1e3 * s.driver_cpu_s / n, "driver_steady_ms": s.driver_ms_per_image(),
                      "setup_cpu_s": s.setup_cpu_s, "bytes_to_actors": s.bytes_to_actors / n,
                      "bytes_to_driver": s.bytes_to_driver / n, "job_s": s.seconds,
                      "stage_ms": {k: 1e3 * v / n for k, v in s.stage_s.items()}, "line": s.line()}))  # fmt: skip


# ---------------------------------------------------------------- a one-node cluster


class Head:
    """``ray start --head --num-cpus CPUS --block`` in a session of its own, token authentication, 127.0.0.2."""

    def __init__(self, cpus: int) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="rb", dir="/tmp"))
        (self.root / "token").write_text(secrets.token_hex(32))
        with socket.socket() as probe:
            probe.bind(("127.0.0.2", 0))
            port = probe.getsockname()[1]
        self.address = f"127.0.0.2:{port}"
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.root / "token"),
                    "PYTHONPATH": str(ROOT / "src"), "RAY_USAGE_STATS_ENABLED": "0"}  # fmt: skip
        log = open(self.root / "head.log", "wb")
        self.process = subprocess.Popen([str(RAY), "start", "--head", "--node-ip-address", "127.0.0.2", "--port",
                                         str(port), "--num-cpus", str(cpus), "--include-dashboard", "false",
                                         "--disable-usage-stats", "--temp-dir", str(self.root / "t"), "--block"],
                                        stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 120
        while b"Ray runtime started" not in (self.root / "head.log").read_bytes():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((self.root / "head.log").read_text()[-2000:])
            time.sleep(0.5)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            pass
        for entry in Path("/proc").iterdir():  # what is left of the session (Ray's workers), by process id
            try:
                if entry.name.isdigit() and os.getsid(int(entry.name)) == self.process.pid:
                    os.kill(int(entry.name), signal.SIGKILL)
            except OSError:
                continue
        self.process.wait(20)


def job(kind: str, model: Path, listing: Path, env: dict, address: str = "") -> dict:
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, __file__, "run-one", kind, str(model), str(listing), out, "--address", address]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def predict_scaling(model: Path, listing: Path, n_images: int, workers: list[int], rounds: int) -> dict:
    results = {}
    for w in workers:
        head = Head(2 * w)
        try:
            job("ray", model, listing, head.env, head.address)  # the cluster's first job: workers and caches warm
            runs: dict[str, list] = {"ray": [], "local": []}
            for _ in range(rounds):
                runs["ray"].append(job("ray", model, listing, head.env, head.address))
                runs["local"].append(job("local", model, listing, {**os.environ, "PYTHONPATH": str(ROOT / "src")}))
                print(f"W={w}: ray {n_images / runs['ray'][-1]['seconds']:.2f} img/s, local "
                      f"{n_images / runs['local'][-1]['seconds']:.2f} img/s", file=sys.stderr)  # fmt: skip
        finally:
            head.stop()
        ray_s = statistics.median(r["seconds"] for r in runs["ray"])
        local_s = statistics.median(r["seconds"] for r in runs["local"])
        median = sorted(runs["ray"], key=lambda r: r["seconds"])[len(runs["ray"]) // 2]
        results[w] = {"ray_img_s": n_images / ray_s, "local_img_s": n_images / local_s, "ratio": local_s / ray_s,
                      "runs": runs, "median_run": median}  # fmt: skip
    return results


def object_store_bandwidth(blocks: int = 8) -> float:
    """GB/s of ``ray.put`` of 64 MB NumPy blocks from a worker (serialise and copy into the store)."""
    import numpy as np
    import ray

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:

        @ray.remote(num_cpus=1)
        def put(n: int) -> float:
            block = np.ones(64 * 2**20, np.uint8)
            start = time.perf_counter()
            refs = [ray.put(block) for _ in range(n)]
            seconds = time.perf_counter() - start
            del refs
            return n * block.nbytes / seconds / 1e9

        return max(ray.get(put.remote(blocks)) for _ in range(3))
    finally:
        ray.shutdown()


def merge_costs(shards: tuple[int, ...] = (2, 4, 8, 16, 32), patches: int = 4096, dim: int = 100) -> dict:
    """The driver's CPU and the bytes it receives, for k shards: merged and factored here, or on the workers."""
    import ray
    import torch

    from padim.model.distributed import _cut, collect, merge_tree, patch_ranges
    from padim.stats.gaussian import GaussianStats, precision_cholesky_from_stats

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    torch.set_num_threads(1)  # as each merge task: batched Cholesky on 2 threads ran 5-10x slower on busy cores
    rows = {}
    try:
        generator = torch.Generator().manual_seed(0)
        stats = GaussianStats.empty(patches, dim, dtype=torch.float32)
        stats.update(torch.randn(patches, 3, dim, generator=generator))
        size = stats.mean.nbytes + stats.m2.nbytes
        warm = [[ray.put(piece) for piece in _cut(stats, patch_ranges(patches, 2))] for _ in range(2)]
        collect(ray, merge_tree(ray, warm, 0.01, False), 0.01)  # the workers' first start, not timed
        for k in shards:
            cpu, wall = time.process_time(), time.perf_counter()
            merged = stats
            for _ in range(k - 1):
                merged = merged.merge(stats)
            precision_cholesky_from_stats(merged, 0.01, packed=True)
            before = {"driver_cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall,
                      "driver_bytes": k * size}  # fmt: skip
            ranges = patch_ranges(patches, k)
            pieces = [[ray.put(piece) for piece in _cut(stats, ranges)] for _ in range(k)]  # the shards' results
            cpu, wall = time.process_time(), time.perf_counter()
            factored = collect(ray, merge_tree(ray, pieces, 0.01, False), 0.01)
            after = {"driver_cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall,
                     "driver_bytes": factored.mean.nbytes + factored.precision_cholesky_packed.nbytes}  # fmt: skip
            rows[k] = {"driver_merge": before, "worker_tree": after}
            print(f"merge {k} shards: driver {before['driver_cpu_s']:.2f} s CPU, tree {after['driver_cpu_s']:.2f} s",
                  file=sys.stderr)  # fmt: skip
            del pieces
    finally:
        ray.shutdown()
    return {"patches": patches, "dim": dim, "per_shards": rows}


def driver_cost(blocks: int = 40) -> dict:
    """Ray Data's own cost to the driver, the job's two stages with no work in them: CPU per second of the job
    (its polling loops) and per block (scheduling, ownership, metrics), from a fast and a slow run."""
    import numpy as np
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False

    class Actor:
        def __init__(self, seconds: float) -> None:
            self.seconds = seconds

        def __call__(self, batch: dict) -> dict:
            time.sleep(self.seconds)
            return {"i": batch["i"]}

    def timed(seconds: float) -> tuple[float, float]:
        data = ray.data.from_items([{"i": i} for i in range(blocks)], override_num_blocks=blocks)
        data = data.map_batches(lambda b: {**b, "x": np.zeros((len(b["i"]), 8), np.uint8)}, num_cpus=1, memory=1)
        data = data.map_batches(Actor, fn_constructor_args=(seconds,), compute=ray.data.ActorPoolStrategy(size=1))
        wall, cpu = time.perf_counter(), time.process_time()
        sum(len(b["i"]) for b in data.iter_batches(batch_size=None))
        return time.process_time() - cpu, time.perf_counter() - wall

    try:
        timed(0.0)  # the actors' first start
        (cpu_fast, wall_fast), (cpu_slow, wall_slow) = timed(0.0), timed(0.25)
    finally:
        ray.shutdown()
    per_second = max(0.0, (cpu_slow - cpu_fast) / (wall_slow - wall_fast))
    return {"cpu_per_second_s": per_second, "cpu_per_block_s": max(0.0, (cpu_fast - per_second * wall_fast) / blocks)}


def control(rounds: int) -> float:
    """The machine's ceiling: the same pure-Python work as 1 process and as 2 at once (speed-up of 2 over 1)."""
    code = "import time; s=time.perf_counter(); t=0\nfor i in range(10**7): t+=i\nprint(time.perf_counter()-s)"

    def timed(n: int) -> float:
        start = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL) for _ in range(n)]
        for p in procs:
            p.wait(600)
        return (time.perf_counter() - start) / n

    return statistics.median(timed(1) / timed(2) for _ in range(rounds))


# ---------------------------------------------------------------- the saturation table


def saturation(result: dict, network_gbps: float) -> list[dict]:
    """Workers at which each shared resource saturates, from one worker's throughput and the per-image costs."""
    one = result["predict"][min(result["predict"])]["median_run"]
    per_worker = result["predict"][min(result["predict"])]["ray_img_s"] / min(result["predict"])
    nic, store = network_gbps * 1e9 / 8, result["object_store_gb_s"] * 1e9
    model, block = result["driver_cost"], 64  # blocks of 64 images, as a job of 256 images or more per worker has
    per_block_ms = 1e3 * model["cpu_per_block_s"] / block
    costs = [
        (f"driver CPU, Ray Data's own ({1e3 * model['cpu_per_second_s']:.0f} ms per second + "
         f"{1e3 * model['cpu_per_block_s']:.0f} ms per block of {block})", f"{per_block_ms:.2f} ms + polling",
         (1 - model["cpu_per_second_s"]) / (model["cpu_per_block_s"] / block)),
        ("driver CPU, this job once rows flow (as measured, at its speed)", f"{one['driver_steady_ms']:.2f} ms",
         1e3 / one["driver_steady_ms"]),
        ("driver CPU, this whole job (set-up included)", f"{one['driver_ms']:.2f} ms", 1e3 / one["driver_ms"]),
        ("rows into the driver (its network)", f"{one['bytes_to_driver']:.0f} B", nic / one["bytes_to_driver"]),
        ("decoded pixels into a node's object store", f"{one['bytes_to_actors'] / 1e3:.0f} kB",
         store / one["bytes_to_actors"]),
        ("decoded pixels across the network (decode and score on other nodes)",
         f"{one['bytes_to_actors'] / 1e3:.0f} kB", nic / one["bytes_to_actors"]),
    ]  # fmt: skip
    return [{"resource": name, "per_image": cost, "images_per_s": limit, "workers": limit / per_worker,
             "per_node": "node" in name or "across" in name} for name, cost, limit in costs]  # fmt: skip


def markdown(result: dict) -> str:
    lines = [
        "# Ray at scale: `padim predict --ray` against the local command, per-image costs, saturation",
        "",
        f"`{result['command']}`",
        "",
        f"Machine: {result['machine']}; load average at the start {result['load']}. Control (the same pure-Python "
        f"work as 2 processes against 1): {result['control']:.2f}x; other jobs share these CPUs. Medians of "
        f"{result['rounds']} alternating rounds; each job a fresh process, as a user runs it (imports, the model "
        "opened, the actors started included), on a running cluster.",
        "",
        f"## predict: {result['images']} images ({result['set']}), CSV rows and the default JPEG overlays",
        "",
        "| workers | cluster CPUs | Ray (img/s) | local, every CPU (img/s) | Ray / local | speed-up over 1 worker "
        "| of linear |",
        "|---|---|---|---|---|---|---|",
    ]
    base = result["predict"][min(result["predict"])]["ray_img_s"]
    for w, row in result["predict"].items():
        speedup = row["ray_img_s"] / base
        lines.append(f"| {w} | {2 * int(w)} | {row['ray_img_s']:.2f} | {row['local_img_s']:.2f} | {row['ratio']:.2f} "
                     f"| {speedup:.2f}x | {speedup / int(w):.2f} |")  # fmt: skip
    one = result["predict"][min(result["predict"])]["median_run"]
    stage = one["stage_ms"]
    lines += [
        "",
        "Per image, one worker (the median run):",
        "",
        "| what | per image |",
        "|---|---|",
        f"| driver CPU, whole job (set-up: {one['setup_cpu_s']:.1f} s until the first rows) | {one['driver_ms']:.2f} ms |",
        f"| driver CPU once rows flow (Ray Data's per-block cost over {result['block']} images a block) "
        f"| {one['driver_steady_ms']:.2f} ms |",
        f"| object store: decoding tasks to the actors (working-size uint8 pixels) | {one['bytes_to_actors'] / 1e3:.1f} kB |",
        f"| object store: actors to the driver (the row) | {one['bytes_to_driver']:.0f} B |",
        f"| decode stage (read, decode, resize) | {stage['decode']:.1f} ms |",
        f"| score stage (normalise, model) | {stage['score']:.1f} ms |",
        f"| finish stage (region, overlay: read again, drawn, encoded, written; in threads) | {stage['finish']:.1f} ms |",
        "",
        f"`{one['line']}`",
        "",
        f"## Where one driver and the object store saturate (object store {result['object_store_gb_s']:.1f} GB/s "
        f"measured here; a {result['network_gbps']:g} Gb/s network assumed)",
        "",
        "| shared resource | per image | saturates at (img/s) | workers (of this machine's speed) |",
        "|---|---|---|---|",
    ]
    for row in result["saturation"]:
        where = " per node" if row["per_node"] else ""
        lines.append(f"| {row['resource']} | {row['per_image']} | {row['images_per_s']:.0f} | "
                     f"{row['workers']:.0f}{where} |")  # fmt: skip
    lines += [
        "",
        f"## The fit's merge (P = {result['merge']['patches']}, D = {result['merge']['dim']}, float32 scatter matrices)",
        "",
        "| shards | driver merges and factors: driver CPU (s) | MB to the driver | trees on the workers: driver CPU (s) "
        "| wall (s) | MB to the driver |",
        "|---|---|---|---|---|---|",
    ]
    for k, row in result["merge"]["per_shards"].items():
        a, b = row["driver_merge"], row["worker_tree"]
        lines.append(f"| {k} | {a['driver_cpu_s']:.2f} | {a['driver_bytes'] / 1e6:.0f} | {b['driver_cpu_s']:.2f} | "
                     f"{b['wall_s']:.2f} | {b['driver_bytes'] / 1e6:.0f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode")
    one = sub.add_parser("run-one")
    for name in ("kind", "model", "list", "output"):
        one.add_argument(name)
    one.add_argument("--address", default="")
    parser.add_argument("--data", type=Path, help="an MVTec category (bottle)")
    parser.add_argument("--out", type=Path, help="results path without suffix")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--set", choices=("all", "mixed"), default="all",
                        help="all: every image of the category; mixed: its test set and 60 training images")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--network-gbps", type=float, default=10.0)
    args = parser.parse_args()
    if args.mode == "run-one":
        run_one(args)
        return
    sys.path.insert(0, str(ROOT / "src"))
    from padim.io.datasets import train_samples
    from padim.io.inputs import image_samples
    from padim.jobs.ray_cluster import block_images
    from padim.model.padim import Padim

    cpus = len(os.sched_getaffinity(0))
    workers = [w for w in args.workers if 2 * w <= cpus] or [1]
    result = {"command": "PYTHONPATH=src python benchmarks/ray_scaling.py " + " ".join(sys.argv[1:]),
              "machine": f"{platform.machine()}, {cpus} CPUs", "load": os.getloadavg()[0], "rounds": args.rounds,
              "network_gbps": args.network_gbps, "control": control(args.rounds), "set": args.set}  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        model = Padim(image_size=256, seed=0).fit(train_samples(args.data)[:32]).save(Path(folder) / "m.padim")
        samples = image_samples(args.data / "test", recursive=True)
        samples += train_samples(args.data)[-60:] if args.set == "mixed" else train_samples(args.data)
        listing = Path(folder) / "images.txt"
        listing.write_text("".join(f"{s.path}\n" for s in samples))
        result["images"], result["block"] = len(samples), block_images(len(samples), (256, 256), 16, 1)
        result["predict"] = predict_scaling(model, listing, len(samples), workers, args.rounds)
    result["object_store_gb_s"] = object_store_bandwidth()
    result["merge"] = merge_costs()
    result["driver_cost"] = driver_cost()
    result["saturation"] = saturation(result, args.network_gbps)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
