"""CPU and wall time of one ``POST /predict`` answer, in process: decode, predict, regions, heatmap.

Times :func:`padim.serve.answer.predict_upload` (everything the service does per request but HTTP)
on one image, with and without the heatmap, median of ``--rounds`` calls after a warm-up.
Compare two checkouts by running it with each on the path, alternating:

    PYTHONPATH=../main/src python benchmarks/serve_request_cost.py --model hz.onnx --image IMG
    PYTHONPATH=src python benchmarks/serve_request_cost.py --model hz.onnx --image IMG

Prints one JSON line: ``{heatmap: false|true, cpu_ms, wall_ms}`` for each mode.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from padim.runtime.opening import open_model
from padim.serve.answer import predict_upload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    model, data = open_model(args.model), args.image.read_bytes()
    for heatmap in (False, True):
        predict_upload(model, data, heatmap)
        cpu, wall = [], []
        for _ in range(args.rounds):
            c, w = time.process_time(), time.perf_counter()
            predict_upload(model, data, heatmap)
            cpu.append(time.process_time() - c)
            wall.append(time.perf_counter() - w)
        row = {"heatmap": heatmap, "cpu_ms": statistics.median(cpu) * 1e3, "wall_ms": statistics.median(wall) * 1e3}
        print(json.dumps(row))


if __name__ == "__main__":
    main()
