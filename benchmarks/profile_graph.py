"""Where the inference graph's time goes: backbone, embedding (channel selection and resize), PaDiM.

Runs a ``.padim`` model's pipeline graph (:mod:`padim.graph.pipeline`, as onnxruntime runs it in
memory on the CPU) with onnxruntime's profiler on random pre-processed batches and sums the
kernel time of each node by the stage it belongs to: ``/embedder/extractor/...`` is the
backbone, the rest of ``/embedder/...`` the channel selection and nearest resize, and
``/scorer/...`` PaDiM's own part (Mahalanobis distance, up-sampling and blur, score,
calibration). Layout conversions onnxruntime inserts count with the backbone.

    python benchmarks/profile_graph.py MODEL.padim --batch 32 --rounds 5 --out benchmarks/results/graph_profile
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import tempfile
from pathlib import Path

import numpy as np


def stage(node_name: str) -> str:
    if node_name.startswith("/scorer/"):
        return "padim (Mahalanobis, map, score)"
    if node_name.startswith("/embedder/") and not node_name.startswith("/embedder/extractor/"):
        return "embedding (channel selection, resize)"
    return "backbone"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/graph_profile"))
    args = parser.parse_args()

    import onnxruntime as ort
    import torch

    from padim.graph import build
    from padim.graph.build import runtime_factors
    from padim.graph.modules import OUTPUTS
    from padim.graph.trace import onnx_bytes
    from padim.machine import cpu_threads
    from padim.model.padim import Padim

    model = Padim.load(args.model)
    example = {
        "images": torch.zeros(2, 3, *model.image_size_),
        "mean": model.mean_,
        "precision_cholesky": runtime_factors(model.precision_cholesky_packed_),
        "threshold": torch.tensor(1.0),
        "scale": torch.tensor(1.0),
    }
    graph = onnx_bytes(build.pipeline(model.graph_spec()), example, OUTPUTS, {"images": 0, **dict.fromkeys(OUTPUTS, 0)})
    if model.quantization_ is not None:  # an int8 model runs its quantised graph
        from padim.graph.quantize import quantize

        graph = quantize(graph, model.quantization_)
    options = ort.SessionOptions()
    options.intra_op_num_threads = cpu_threads()
    options.enable_mem_pattern = False
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "profile")
    session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {k: v.numpy() for k, v in example.items() if k != "images"}
    feeds["images"] = rng.standard_normal((args.batch, 3, *model.image_size_), dtype=np.float32)
    session.run(None, feeds)  # warm-up, not profiled separately: subtracted below
    first = len(json.load(open(session.end_profiling())))
    session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    for _ in range(args.rounds):
        session.run(None, feeds)
    events = json.load(open(session.end_profiling()))
    per_stage: collections.Counter = collections.Counter()
    per_node: collections.Counter = collections.Counter()
    runs = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            name = event["name"][: -len("_kernel_time")]
            per_stage[stage(name)] += event["dur"]
            if name.startswith("/scorer/"):
                per_node[f"{name} ({event['args']['op_name']})"] += event["dur"]
    total = sum(per_stage.values())
    run_ms = float(np.median([r["dur"] for r in runs[1:] or runs])) / 1000  # the first run warms up
    result = {
        "model": str(args.model),
        "image_size": list(model.image_size_),
        "n_features": len(model.channel_idx_),
        "batch": args.batch,
        "rounds": args.rounds,
        "threads": cpu_threads(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "warmup_events": first,
        "median_run_ms": run_ms,
        "kernel_ms_per_run": {k: v / 1000 / args.rounds for k, v in per_stage.items()},
        "share": {k: v / total for k, v in per_stage.items()},
        "padim_nodes_ms_per_run": {k: v / 1000 / args.rounds for k, v in per_node.most_common()},
    }
    lines = [
        "# Inference graph profile",
        "",
        f"`python benchmarks/profile_graph.py {args.model} --batch {args.batch} --rounds {args.rounds}`: "
        f"{model.image_size_[0]}x{model.image_size_[1]} px, d={len(model.channel_idx_)}, batch {args.batch}, "
        f"{cpu_threads()} threads; median run {run_ms:.1f} ms ({args.batch / run_ms * 1000:.1f} images/s).",
        "",
        "| stage | kernel ms per batch | share of kernel time |",
        "|---|---:|---:|",
        *[
            f"| {k} | {result['kernel_ms_per_run'][k]:.1f} | {result['share'][k]:.1%} |"
            for k in sorted(per_stage, key=per_stage.get, reverse=True)
        ],
        "",
        "PaDiM's nodes:",
        "",
        "| node | ms per batch |",
        "|---|---:|",
        *[f"| `{k}` | {v:.2f} |" for k, v in result["padim_nodes_ms_per_run"].items()],
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
