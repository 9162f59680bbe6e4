"""One image, process start to verdict: ``padim predict MODEL ONE.png`` from a ``.padim`` and from an ``.onnx``.

Run from the repository root with a fitted model (its export is made beside it when missing):

    python -m padim.cli.main fit ../shared/data/mvtec_ad/bottle -o /tmp/bench2/f32.padim
    python benchmarks/one_image.py --model /tmp/bench2/f32.padim \\
        --image ../shared/data/mvtec_ad/bottle/test/broken_large/000.png --out benchmarks/results/one_image

Each run is a fresh process (``python -m padim.cli.main predict MODEL IMAGE``, the verdict printed), timed
from before the process starts to its exit; the two models alternate, ``--rounds`` times; the
first run of each is a warm-up (the operating system's file cache, the executor choice written
once per machine) and is not counted. Medians and the spread are reported with the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu() -> str:
    """The CPU's model name and the flags that matter for the executors."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    wanted = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8") if f in flags]
    return f"{name or platform.processor()} ({', '.join(wanted)}), {os.cpu_count()} CPUs"


def once(model: Path, image: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "padim.cli.main", "predict", str(model), str(image)],
                          capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 3):
        raise SystemExit(f"{model}: exit {done.returncode}: {done.stderr.strip()}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a .padim model")
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "one_image")
    args = parser.parse_args()
    onnx = args.model.with_suffix(".onnx")
    if not onnx.exists():
        subprocess.run([sys.executable, "-m", "padim.cli.main", "export", str(args.model), "-o", str(onnx), "--quiet"],
                       check=True, cwd=ROOT)  # fmt: skip
    models = {".padim": args.model, ".onnx": onnx}
    times: dict[str, list[float]] = {kind: [] for kind in models}
    for path in models.values():
        once(path, args.image)  # warm-up
    for _ in range(args.rounds):
        for kind, path in models.items():
            times[kind].append(once(path, args.image))
    goals = {".padim": 2.0, ".onnx": 1.0}
    rows = [
        f"| `{kind}` | {statistics.median(t):.2f} | {min(t):.2f} to {max(t):.2f} | <= {goals[kind]:.0f} s | "
        f"{'met' if statistics.median(t) <= goals[kind] else 'not met'} |"
        for kind, t in times.items()
    ]
    load = os.getloadavg()[0]
    text = "\n".join([
        "# One image: `padim predict MODEL ONE.png`, process start to verdict",
        "",
        f"CPU: {cpu()}; load average (1 min) at the end: {load:.2f}; {time.strftime('%Y-%m-%d %H:%M')}; "
        f"{args.rounds} alternating rounds after one warm-up each; model {args.model.name} and its export; "
        f"image {args.image.name}. Command: `benchmarks/one_image.py`.",
        "",
        "| model | median s | range s | goal | |",
        "|---|---:|---:|---|---|",
        *rows,
        "",
    ])  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps({"cpu": cpu(), "load": load, "seconds": times}, indent=2))
    print(text)


if __name__ == "__main__":
    main()
