"""The whole job, ``padim predict MODEL FOLDER -o OUT``, against the first release and against decode plus model alone.

Run from the repository root, with the first release's sources unpacked beside (no worktree needed)
and a model of each (the first release reads only its own format):

    mkdir -p /tmp/padim-old && git archive 5f7836d src | tar -x -C /tmp/padim-old
    PYTHONPATH=/tmp/padim-old/src python -m padim.cli fit ../shared/data/mvtec_ad/bottle -o /tmp/bench/old.padim
    python -m padim.cli.main fit ../shared/data/mvtec_ad/bottle -o /tmp/bench/f32.padim
    python benchmarks/speed_job.py --model /tmp/bench/f32.padim --old-model /tmp/bench/old.padim \\
        --old-src /tmp/padim-old/src --data ../shared/data/mvtec_ad/bottle --out benchmarks/results/speed_job

The folder is bottle's 83 test images (900x900 PNG) copied ``--copies`` times. Each command runs in
a fresh process, the commands alternating round by round; wall time, CPU time and peak RSS come from
``wait4``. "Decode plus model alone" is measured in a process of its own: every image decoded and
pre-processed by this version's loading pipeline (threads), then the model on those tensors, the two
added. Ratios are medians of per-round ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measured(command: list[str], src: Path) -> dict:
    """Wall, CPU (user + system) and peak RSS of one command in a fresh process with ``PYTHONPATH=src``."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": str(src)}, stdout=subprocess.PIPE,
                                   stderr=err, text=True)  # fmt: skip
        out = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
        err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{err.read()[-2000:]}")
    return {"wall_s": time.perf_counter() - start, "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_rss_mib": usage.ru_maxrss / 1024, "stdout": out[-500:]}  # fmt: skip


LIMIT = """
import sys, time, numpy as np
from pathlib import Path
from padim.io.datasets import Sample
from padim.io.loading import iter_batches
from padim.runtime.opening import open_model
model, folder = sys.argv[1], sys.argv[2]
predictor = open_model(model)
samples = [Sample(p, 0, "unknown") for p in sorted(Path(folder).iterdir())]
start = time.perf_counter()
images = np.concatenate([b.images for b in iter_batches(samples, predictor.image_size, batch_size=16)])
decode = time.perf_counter() - start
start = time.perf_counter()
for i in range(0, len(images), 16):
    predictor.predict_batch(images[i : i + 16])
print(decode, time.perf_counter() - start)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--old-model", type=Path, required=True)
    parser.add_argument("--old-src", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--copies", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/padim-speed-job"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "speed_job")
    args = parser.parse_args()
    from padim.machine import cpu_info

    folder = args.work / "images"
    if not folder.is_dir():
        folder.mkdir(parents=True)
        for copy in range(args.copies):
            for path in sorted((args.data / "test").rglob("*.png")):
                shutil.copy(path, folder / f"{copy}_{path.parent.name}_{path.name}")
    n = len(list(folder.iterdir()))
    new, old, python = ROOT / "src", args.old_src, sys.executable
    commands = {
        "first release, default outputs": (old, [python, "-m", "padim.cli", "predict", str(args.old_model)]),
        "this version, default outputs": (new, [python, "-m", "padim.cli", "predict", str(args.model)]),
        "this version, --overlays none": (
            new,
            [python, "-m", "padim.cli", "predict", str(args.model), "--overlays", "none"],
        ),  # fmt: skip
    }
    found: dict[str, list] = {name: [] for name in [*commands, "decode + model alone"]}
    loads = [os.getloadavg()[0]]
    for round_ in range(args.rounds):
        for name, (src, command) in list(commands.items())[round_ % 3 :] + list(commands.items())[: round_ % 3]:
            out = args.work / "out"
            shutil.rmtree(out, ignore_errors=True)
            found[name].append(measured([*command, str(folder), "-o", str(out), "--quiet"], src))
            print(f"round {round_} {name}: {found[name][-1]['wall_s']:.1f} s", file=sys.stderr, flush=True)
        decode, model = map(float, measured([python, "-c", LIMIT, str(args.model), str(folder)], new)["stdout"].split())
        found["decode + model alone"].append({"wall_s": decode + model, "decode_s": decode, "model_s": model})
        loads.append(os.getloadavg()[0])
    report = {"cpu": cpu_info().describe(), "images": n, "load_average": loads, "results": found}
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    args.out.with_suffix(".md").write_text(render(report))
    print(render(report))


def render(report: dict) -> str:
    found, n = report["results"], report["images"]
    old, new, bare = (found[k] for k in ("first release, default outputs", "this version, default outputs",
                                         "this version, --overlays none"))  # fmt: skip
    limit = found["decode + model alone"]

    def ratio(a: list, b: list) -> str:
        return f"{statistics.median(x['wall_s'] / y['wall_s'] for x, y in zip(a, b)):.2f}x"

    lines = [
        f"# The whole job: `padim predict MODEL FOLDER -o OUT` on {n} bottle PNGs (900x900)",
        "",
        f"CPU: {report['cpu']}; load average during the run: {', '.join(f'{x:.1f}' for x in report['load_average'])}."
        " Wall time of each whole command (process start to exit), fresh processes, alternating; medians.",
        "",
        "| command | wall s | images/s | CPU s | peak RSS MiB |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, rounds in found.items():
        wall = statistics.median(r["wall_s"] for r in rounds)
        cpu = statistics.median(r["cpu_s"] for r in rounds) if "cpu_s" in rounds[0] else None
        rss = statistics.median(r["peak_rss_mib"] for r in rounds) if "peak_rss_mib" in rounds[0] else None
        lines.append(f"| {name} | {wall:.1f} | {n / wall:.1f} | {'' if cpu is None else f'{cpu:.1f}'} | "
                     f"{'' if rss is None else f'{rss:.0f}'} |")  # fmt: skip
    lines += ["", f"- default outputs against the first release: **{ratio(old, new)}** (goal 5x)",
              f"- `--overlays none` against decode plus model alone: **{ratio(limit, bare)}** of it (goal 0.9)"]  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
