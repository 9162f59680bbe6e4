"""Each executor and precision side by side against anomalib 2.7, on the same pre-processed bottle tensors.

Run from the repository root (the ``bench`` extra: anomalib 2.7; the ``openvino`` extra):

    python -m padim.cli.main fit ../shared/data/mvtec_ad/bottle -o /tmp/bench/f32.padim
    python -m padim.cli.main fit ../shared/data/mvtec_ad/bottle -o /tmp/bench/int8.padim --backbone-dtype int8
    python -m padim.cli.main fit ../shared/data/mvtec_ad/bottle -o /tmp/bench/bf16.padim --backbone-dtype bfloat16
    python benchmarks/speed_executors.py --data ../shared/data/mvtec_ad/bottle --models /tmp/bench \\
        --out benchmarks/results/speed_executors

The 83 bottle test images are decoded and pre-processed once (256 px, the cache of
``compare_anomalib.py``). anomalib's Gaussians are fitted once on the same training tensors, with
padim's backbone weights and channel indices (``compare_anomalib.make_anomalib``). Then each
candidate runs in a fresh process per round, the candidates alternating, for ``--rounds`` rounds:
one warm-up pass, then ``--passes`` timed passes over the 83 images at batch 32; a round's
throughput is the median pass. The table gives medians over rounds and the ratio to anomalib
measured in the same round (median of the per-round ratios), with the CPU's model and flags and the
load average. Scores of each candidate are compared with padim's float32 onnxruntime scores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

#: (label, model file stem, executor); anomalib is the reference of every ratio.
CANDIDATES = [
    ("anomalib 2.7 (torch)", None, None),
    ("padim float32, onnxruntime", "f32", "onnxruntime"),
    ("padim float32, OpenVINO", "f32", "openvino"),
    ("padim float32, auto", "f32", "auto"),
    ("padim int8, onnxruntime", "int8", "onnxruntime"),
    ("padim bfloat16, OpenVINO", "bf16", "openvino"),
]


def worker(job: dict) -> dict:
    """One candidate in this process: img/s of each timed pass, scores of the last."""
    import compare_anomalib as ca

    test = np.load(job["data"] + ".npz")["test"]
    if job["model"] is None:
        import torch

        torch.set_num_threads(job["threads"])
        torch.set_grad_enabled(False)
        model = ca.make_anomalib(job["cfg"])
        stats = torch.load(job["stats"], weights_only=True)
        model.gaussian.mean, model.gaussian.inv_covariance = stats["mean"], stats["inv_covariance"]
        model.eval()

        def run() -> np.ndarray:
            return np.concatenate([model(b).pred_score.numpy().ravel() for b in ca.batches(test, 32)])
    else:
        from padim.runtime.opening import open_model

        predictor = open_model(job["model"], executor=job["executor"])
        job["chosen"] = predictor.describe()

        def run() -> np.ndarray:
            return np.concatenate([predictor.predict_batch(test[i : i + 32]).score for i in range(0, len(test), 32)])

    run()  # warm-up
    rates = []
    for _ in range(job["passes"]):
        start = time.perf_counter()
        scores = run()
        rates.append(len(test) / (time.perf_counter() - start))
    return {"rates": rates, "scores": scores.tolist(), "chosen": job.get("chosen")}


def spawn(job: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(lines[-1][7:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--models", type=Path, required=True, help="folder with f32.padim, int8.padim, bf16.padim")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "speed_executors")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--cache", type=Path, default=Path("/tmp/padim_bench_cache"))
    parser.add_argument("--skip", nargs="*", default=[], help="labels (substrings) to leave out")
    args = parser.parse_args()
    import compare_anomalib as ca
    from padim.machine import cpu_info

    cfg = {"tag": "lite0", "backbone": "efficientnet_lite0", "layers": ca.LITE0_LAYERS, "n_features": 100,
           "size": 256, "pretrained": True, "batch": 32, "threads": args.threads}  # fmt: skip
    prefix = ca.bottle_cache(args.data, 256, args.cache)
    stats = str(args.cache / "anomalib_bottle_stats.pt")
    if not Path(stats).exists():
        print("... fitting anomalib's Gaussians once", file=sys.stderr, flush=True)
        ca.spawn("anomalib_fit", cfg, {"data": prefix, "save": stats}, [])
    candidates = [c for c in CANDIDATES if not any(s in c[0] for s in args.skip)]
    found: dict[str, list[dict]] = {label: [] for label, _, _ in candidates}
    loads = [os.getloadavg()[0]]
    for round_ in range(args.rounds):
        order = candidates[round_ % len(candidates) :] + candidates[: round_ % len(candidates)]
        for label, stem, executor in order:
            model = None if stem is None else str(args.models / f"{stem}.padim")
            job = {"data": prefix, "stats": stats, "cfg": cfg, "model": model, "executor": executor,
                   "passes": args.passes, "threads": args.threads}  # fmt: skip
            result = spawn(job)
            print(
                f"round {round_} {label}: {result.get('error') or statistics.median(result['rates']):.5}",
                file=sys.stderr,
                flush=True,
            )
            found[label].append(result)
        loads.append(os.getloadavg()[0])
    report = {"cpu": cpu_info().describe(), "threads": args.threads, "load_average": loads, "results": found}
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    args.out.with_suffix(".md").write_text(render(report))
    print(render(report))


def render(report: dict) -> str:
    results = report["results"]
    reference = results[CANDIDATES[0][0]]
    base = results.get("padim float32, onnxruntime", [])
    lines = [
        "# Executors and precisions against anomalib, predict on tensors (bottle, 256 px, d=100, batch 32)",
        "",
        f"CPU: {report['cpu']}; {report['threads']} threads; load average during the run: "
        f"{', '.join(f'{x:.1f}' for x in report['load_average'])}. Medians over rounds (each the median of its "
        "passes); the ratio to anomalib is the median of the per-round ratios (same round, fresh processes, "
        "alternating).",
        "",
        "| candidate | images/s | vs anomalib | max score difference / max score, vs padim float32 onnxruntime | chosen |",
        "|---|---:|---:|---:|---|",
    ]
    for label, rounds in results.items():
        good = [r for r in rounds if "error" not in r]
        if not good:
            lines.append(f"| {label} | failed: {rounds[0].get('error', '')[:80]} | | | |")
            continue
        rate = statistics.median(statistics.median(r["rates"]) for r in good)
        ratios = [statistics.median(r["rates"]) / statistics.median(a["rates"]) for r, a in zip(rounds, reference)
                  if "error" not in r and "error" not in a]  # fmt: skip
        diff = ""
        if base and "error" not in base[0] and "padim" in label:
            a, b = np.array(good[0]["scores"]), np.array(base[0]["scores"])
            diff = f"{np.abs(a - b).max() / np.abs(b).max():.1e}"
        ratio = f"{statistics.median(ratios):.2f}x" if ratios else ""
        lines.append(f"| {label} | {rate:.1f} | {ratio} | {diff} | {good[0].get('chosen') or ''} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        print("RESULT " + json.dumps(worker(json.loads(sys.argv[2]))), flush=True)
    else:
        main()
