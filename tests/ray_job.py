"""A driver for the Ray cluster tests, run as a subprocess: a job that loses a worker half way.

    python tests/ray_job.py predict ADDRESS MODEL OUTDIR INPUT --kill actor|raylet --session PID [--at N]
    python tests/ray_job.py fit ADDRESS DATA MODEL --marker FILE

``predict`` runs :func:`padim.jobs.ray_predict.predict_files` and, when the ``--at``-th row has
arrived, kills a scoring actor (any process of the cluster's sessions whose title names
``Scorer``) or the raylet of the node whose session leader is ``--session``; it prints the
summary as JSON, with how many processes it killed. ``fit`` fits the tests' tiny model with
:func:`padim.model.distributed.fit`, its first shard task killing its own worker once (``--marker``
records it), and prints the model's count and statistics' checksum as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path

from ray_nodes import named
from support import TINY


def predict(args: argparse.Namespace) -> dict:
    from padim.io.inputs import image_samples
    from padim.jobs.ray_cluster import connect
    from padim.jobs.ray_predict import predict_files

    connect(args.address)
    killed: list[int] = []
    rows = 0

    def kill_half_way(row) -> None:
        nonlocal rows
        rows += 1
        if rows != args.at:
            return
        leaders = [int(s) for s in args.session.split(",")]
        text = "Scorer" if args.kill == "actor" else "raylet"
        for pid in [p for leader in leaders for p in named(leader, text)][:1]:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    samples = image_samples([args.inputs], recursive=True)
    summary = predict_files(args.model, samples, args.output, overlays="all", batch_size=args.batch_size,
                            on_row=kill_half_way)  # fmt: skip
    return {"killed": len(killed), "rows": rows, "n_images": summary.n_images, "passes": summary.passes,
            "redone": summary.redone, "restarted_actors": summary.restarted_actors, "lost_nodes": summary.lost_nodes,
            "duplicates": summary.duplicates, "line": summary.line()}  # fmt: skip


def fit(args: argparse.Namespace) -> dict:
    from padim.jobs.ray_cluster import connect
    from padim.model import distributed
    from padim.model.padim import Padim

    connect(args.address)
    marker = args.marker

    def die_once() -> None:  # runs in a Ray worker: the first shard to start kills its own process
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return
        os.kill(os.getpid(), signal.SIGKILL)

    model = distributed.fit(Padim(**TINY, stats_dtype="float64", backend="torch"), args.data, n_shards=3,
                            keep_stats=True, before_shard=die_once)  # fmt: skip
    model.save(args.output)
    return {"n_images": model.n_images_, "count": model.stats_.count, "died": Path(marker).exists()}


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="job", required=True)
    job = sub.add_parser("predict")
    for name in ("address", "model", "output", "inputs"):
        job.add_argument(name)
    job.add_argument("--kill", choices=("actor", "raylet"), required=True)
    job.add_argument("--session", required=True, help="session leaders' pids, comma-separated")
    job.add_argument("--at", type=int, default=1)
    job.add_argument("--batch-size", type=int, default=4)
    job = sub.add_parser("fit")
    for name in ("address", "data", "output"):
        job.add_argument(name)
    job.add_argument("--marker", required=True)
    args = parser.parse_args()
    print("RESULT " + json.dumps(predict(args) if args.job == "predict" else fit(args)), flush=True)


if __name__ == "__main__":
    main()
