"""The whole batch job as a user runs it: ``padim predict MODEL FOLDER -o OUT``, against the previous release.

Run from the repository root (the previous release checked out beside it, and its own model,
since it reads only model format 1):

    git worktree add /tmp/padim-old 5f7836d
    PYTHONPATH=/tmp/padim-old/src python -m padim.cli fit ../shared/data/mvtec_ad/bottle -o /tmp/bottle-old.padim
    python -m padim.cli fit ../shared/data/mvtec_ad/bottle -o /tmp/bottle.padim
    python benchmarks/batch_job.py --model /tmp/bottle.padim --old-model /tmp/bottle-old.padim \\
        --old-src /tmp/padim-old/src --data ../shared/data/mvtec_ad/bottle --out benchmarks/results/batch_job

It builds, under ``--work`` (default ``/tmp/padim-batch-job``): a folder of MVTec bottle's 83 test
images copied to ``--copies`` x 83 files, and a folder of ``--big`` 8000x8000 PNG images (4
bottle images enlarged, then hard links). Then, each measurement in its own process (its wall
time, CPU time and peak RSS from ``wait4``), alternating the commands round by round:

1. the job on the folder: the previous release with its default outputs (a PNG overlay per
   image) and with ``--no-overlays``; this version with its default outputs (JPEG overlays of
   the anomalous images), ``--overlays all`` and ``--overlays none``;
2. the limit: every image decoded and pre-processed (threads, both cores), then the model on
   the decoded tensors (onnxruntime, both cores), timed apart and added;
3. peak RSS on the folder of 8000x8000 images (default batch size), this version and the
   previous release (on 12 of them: it holds a whole batch of full-size images);
4. the time per image of each stage on one thread, before and after (``stages``);
5. picture encoders: size against time on the overlays of the test images (``encoders``).

The machine is usually shared: compare the ratios, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- running a command


def run_measured(command: list[str], src: Path) -> dict[str, Any]:
    """Run ``command`` with ``PYTHONPATH=src``: wall s, CPU s (user + system) and peak RSS MiB of that
    process (``wait4``), its stdout, and the job time the command printed (``in X s``), if any."""
    environment = {**os.environ, "PYTHONPATH": str(src)}
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=err, text=True)
        out = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        messages = err.read()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed with status {process.returncode}:\n{messages[-2000:]}")
    job = re.search(r" in ([0-9.]+) s, [0-9.]+ images/s", messages)
    return dict(
        wall_s=wall,
        job_s=float(job.group(1)) if job else None,
        cpu_s=usage.ru_utime + usage.ru_stime,
        peak_rss_mib=usage.ru_maxrss / 1024,
        stdout=out,
    )


def predict_command(model: Path, inputs: Path, out: Path, *options: str) -> list[str]:
    return [sys.executable, "-m", "padim.cli", "predict", str(model), str(inputs), "-o", str(out), *options]


# --------------------------------------------------------------------------- data


def make_folder(data: Path, folder: Path, copies: int) -> int:
    """``copies`` copies of the category's test images in one folder; returns the number of files."""
    tests = sorted((data / "test").glob("*/*.png"))
    if not folder.is_dir() or len(list(folder.iterdir())) != copies * len(tests):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for copy in range(copies):
            for path in tests:
                shutil.copy(path, folder / f"{copy}_{path.parent.name}_{path.name}")
    return copies * len(tests)


def make_big(data: Path, folder: Path, count: int, side: int = 8000) -> list[Path]:
    """``count`` side x side PNGs: 4 test images enlarged (bilinear), the rest hard links to them."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    sources = (
        sorted((data / "test" / "broken_large").glob("*.png"))[:3] + sorted((data / "test" / "good").glob("*.png"))[:1]
    )
    paths = []
    for i in range(count):
        path = folder / f"big_{i:03d}.png"
        paths.append(path)
        if path.exists():
            continue
        if i < len(sources):  # written under another name first: an interrupted run leaves no half file
            image = Image.open(sources[i]).convert("RGB").resize((side, side), Image.BILINEAR)
            image.save(path.with_suffix(".tmp"), format="PNG", compress_level=1)
            os.replace(path.with_suffix(".tmp"), path)
        else:
            os.link(paths[i % len(sources)], path)
    return paths


# --------------------------------------------------------------------------- in-process workers


def limit_worker(model: str, folder: str, batch_size: int) -> None:
    """Decode and pre-process every image (threads), then the model on the tensors; print JSON."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from padim.io.images import load_image, preprocess
    from padim.machine import default_workers
    from padim.runtime.opening import open_model

    predictor = open_model(model)
    paths = sorted(Path(folder).iterdir())
    start = time.perf_counter()
    with ThreadPoolExecutor(default_workers()) as pool:
        tensors = list(pool.map(lambda p: preprocess(load_image(p), predictor.image_size)[0], paths))
    decode = time.perf_counter() - start
    batches = [np.stack(tensors[i : i + batch_size]) for i in range(0, len(tensors), batch_size)]
    start = time.perf_counter()
    for batch in batches:
        predictor.predict_batch(batch)
    model_cold = time.perf_counter() - start
    start = time.perf_counter()
    for batch in batches:
        predictor.predict_batch(batch)
    model_warm = time.perf_counter() - start
    print(json.dumps(dict(n=len(paths), decode_s=decode, model_s=model_cold, model_warm_s=model_warm)))


def stages_worker(which: str, model: str, folder: str, n: int) -> None:
    """Time per image of each stage, one thread, ``n`` images (the previous release's or this version's code)."""
    import numpy as np

    paths = sorted(Path(folder).iterdir())[:n]
    timings: dict[str, float] = {}
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f"padim-stages-{os.getpid()}"
    scratch.mkdir(parents=True, exist_ok=True)

    def timed(name: str, function, items):
        start = time.process_time()
        results = [function(item) for item in items]
        timings[name] = (time.process_time() - start) / len(items) * 1000
        return results

    if which == "old":
        # The previous release's modules (its checkout is on the path), in its flat layout.
        from padim.cli import overlay_at_image_size  # noqa: I001
        from padim.files import write_bytes
        from padim.runtime import open_model
        from padim.transforms import load_image, preprocess
        from padim.visualize import heatmap_range, png_bytes

        predictor = open_model(model)
        images = timed("decode", load_image, paths)
        tensors = timed("preprocess", lambda im: preprocess(im, predictor.image_size)[0], images)
        batch = np.stack(tensors)
        predictor.predict(batch[:2])  # warm-up
        start = time.process_time()
        prediction = predictor.predict(batch)
        timings["model"] = (time.process_time() - start) / len(paths) * 1000
        vmin, vmax = heatmap_range(predictor.calibration, prediction.anomaly_map)
        pairs = list(zip(images, prediction.anomaly_map))
        pictures = timed(
            "overlay compose", lambda p: overlay_at_image_size(p[0], p[1], predictor.calibration, vmin, vmax), pairs
        )
        encoded = timed("encode (PNG, level 6)", png_bytes, pictures)
        timed("write", lambda d: write_bytes(scratch / "x.png", d), encoded)
    else:
        from padim.io.decoding import reduced
        from padim.io.files import LineAppender, write_bytes
        from padim.io.images import load_image, preprocess
        from padim.io.pictures import picture_bytes
        from padim.jobs.predict import OVERLAY_MAX_SIDE
        from padim.outputs.rows import Row
        from padim.report.heatmap import overlay_at_image_size
        from padim.report.overlays import heatmap_range
        from padim.runtime.opening import open_model
        from padim.scoring.regions import region_extent

        predictor = open_model(model)
        images = timed("decode", load_image, paths)
        tensors = timed("preprocess", lambda im: preprocess(im, predictor.image_size)[0], images)
        pictures = timed("picture (reduced to 1024)", lambda im: reduced(im, OVERLAY_MAX_SIDE), images)
        batch = np.stack(tensors)
        predictor.predict_batch(batch[:2])  # warm-up
        start = time.process_time()
        prediction = predictor.predict_batch(batch)
        timings["model"] = (time.process_time() - start) / len(paths) * 1000
        calibration = predictor.calibration
        pairs = list(zip(images, prediction.anomaly_map))
        boxes = timed("region box (anomalous)", lambda p: region_extent(p[1], p[0].size, calibration), pairs)
        vmin, vmax = heatmap_range(calibration, prediction.anomaly_map)
        drawn = timed(
            "overlay compose",
            lambda p: overlay_at_image_size(p[0], p[1], calibration, vmin, vmax, max_side=OVERLAY_MAX_SIDE),
            list(zip(pictures, prediction.anomaly_map)),
        )
        encoded = timed("encode (JPEG, quality 90)", lambda a: picture_bytes(a, "jpeg"), drawn)
        timed("write", lambda d: write_bytes(scratch / "x.jpg", d), encoded)
        with LineAppender(scratch / "rows.csv", "h\n") as rows:
            row = Row(paths[0], 1.0, 0.5, "anomalous", "overlays/x.jpg", (900, 900), boxes[0])
            timed("CSV row", lambda _: rows.append(row.csv_line()), range(len(paths)))
    shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(timings))


def encoders_worker(model: str, folder: str, n: int) -> None:
    """Size and time of each picture format on ``n`` overlays; print JSON."""
    import io

    from PIL import Image

    from padim.io.images import load_image, preprocess
    from padim.report.heatmap import overlay_at_image_size
    from padim.report.overlays import heatmap_range
    from padim.runtime.opening import open_model

    predictor = open_model(model)
    paths = sorted(Path(folder).iterdir())[:: max(1, len(list(Path(folder).iterdir())) // n)][:n]
    images = [load_image(p) for p in paths]
    prediction = predictor.predict_batch(preprocess(images, predictor.image_size))
    vmin, vmax = heatmap_range(predictor.calibration, prediction.anomaly_map)
    pictures = [
        Image.fromarray(overlay_at_image_size(im, m, predictor.calibration, vmin, vmax))
        for im, m in zip(images, prediction.anomaly_map)
    ]
    formats = {
        "PNG level 1": dict(format="PNG", compress_level=1),
        "PNG level 3": dict(format="PNG", compress_level=3),
        "PNG level 6 (Pillow's default)": dict(format="PNG", compress_level=6),
        "PNG level 9": dict(format="PNG", compress_level=9),
        "JPEG quality 85": dict(format="JPEG", quality=85),
        "JPEG quality 90": dict(format="JPEG", quality=90),
        "JPEG quality 90, 4:4:4": dict(format="JPEG", quality=90, subsampling=0),
        "JPEG quality 95": dict(format="JPEG", quality=95),
        "WebP quality 90, method 0": dict(format="WEBP", quality=90, method=0),
        "WebP quality 80, method 4": dict(format="WEBP", quality=80, method=4),
        "WebP lossless, method 0": dict(format="WEBP", lossless=True, quality=0, method=0),
    }
    results = {}
    for name, options in formats.items():
        sizes, start = [], time.process_time()
        for picture in pictures:
            buffer = io.BytesIO()
            picture.save(buffer, **options)
            sizes.append(len(buffer.getvalue()))
        results[name] = dict(ms=(time.process_time() - start) / len(pictures) * 1000, kb=statistics.mean(sizes) / 1000)
    print(json.dumps(dict(n=len(pictures), size=list(pictures[0].size), formats=results)))


def worker(name: str, src: Path, *args: str) -> dict[str, Any]:
    result = run_measured([sys.executable, __file__, "--worker", name, *args], src)
    return {**json.loads(result["stdout"].strip().splitlines()[-1]), "peak_rss_mib": result["peak_rss_mib"]}


# --------------------------------------------------------------------------- the benchmark


def rows_in(csv_path: Path) -> int:
    """Rows written by a job (to check that it did the whole folder)."""
    with open(csv_path) as handle:
        return sum(1 for _ in handle) - 1


def benchmark(args: argparse.Namespace, result: dict[str, Any], save) -> None:
    """Run the ``--parts`` asked for, adding to ``result`` and calling ``save()`` after each measurement."""
    work = args.work
    folder = work / "bottle_copies"
    n_images = make_folder(args.data, folder, args.copies)
    big = make_big(args.data, work / "big", args.big)
    big_few = work / "big_few"
    big_few.mkdir(exist_ok=True)
    for path in big[: args.big_old]:
        if not (big_few / path.name).exists():
            os.link(path, big_few / path.name)
    new, old = ROOT / "src", args.old_src
    out = work / "out"

    jobs = {
        "previous release, default (PNG overlay per image)": (old, args.old_model, []),
        "previous release, --no-overlays": (old, args.old_model, ["--no-overlays"]),
        "this version, default (JPEG overlays of anomalous images)": (new, args.model, []),
        "this version, --overlays all": (new, args.model, ["--overlays", "all"]),
        "this version, --overlays none": (new, args.model, ["--overlays", "none"]),
    }
    result.update(n_images=n_images, big_images=len(big))
    environment = result.setdefault("environment", {})
    environment.update(python=platform.python_version(), machine=platform.machine(), cpus=len(os.sched_getaffinity(0)))
    environment.setdefault("load_average", []).append(os.getloadavg()[0])
    if "jobs" in args.parts:
        runs = result.setdefault("runs", {name: [] for name in jobs})
        limits = result.setdefault("limits", [])
        environment["rounds"] = args.rounds
        for round_ in range(args.rounds):
            for name, (src, model, options) in jobs.items():
                shutil.rmtree(out, ignore_errors=True)
                measured = run_measured(predict_command(model, folder, out, *options), src)
                rows = rows_in(out / "predictions.csv")
                assert rows == n_images, (name, rows)
                measured.pop("stdout")
                runs[name].append(measured)
                save()
                print(f"round {round_ + 1}: {name}: {measured['wall_s']:.1f} s", file=sys.stderr)
            for name, src, model in (("previous release", old, args.old_model), ("this version", new, args.model)):
                opening = [
                    sys.executable,
                    "-c",
                    f"from padim.runtime.predictor import open_model; open_model({str(model)!r})",
                ]
                measured = run_measured(opening, src)
                measured.pop("stdout")
                result.setdefault("opening", {}).setdefault(name, []).append(measured)
            limits.append(worker("limit", new, str(args.model), str(folder), "32"))
            environment["load_average"].append(os.getloadavg()[0])
            save()
            print(f"round {round_ + 1}: limit {limits[-1]}", file=sys.stderr)
    if "memory" in args.parts:
        memory = result.setdefault("memory", {})
        for name, src, model, inputs, options in (
            (f"this version, default, {len(big)} images", new, args.model, work / "big", []),
            (
                f"this version, --overlays none, {len(big)} images",
                new,
                args.model,
                work / "big",
                ["--overlays", "none"],
            ),
            (f"previous release, default, {args.big_old} images", old, args.old_model, big_few, []),
        ):
            shutil.rmtree(out, ignore_errors=True)
            measured = run_measured(predict_command(model, inputs, out, *options), src)
            measured.pop("stdout")
            memory[name] = measured
            save()
            print(f"memory: {name}: {measured['peak_rss_mib']:.0f} MiB", file=sys.stderr)
        shutil.rmtree(out, ignore_errors=True)
    if "stages" in args.parts:
        result["stages"] = {
            "before": worker("stages", old, "old", str(args.old_model), str(folder), str(args.stage_images)),
            "after": worker("stages", new, "new", str(args.model), str(folder), str(args.stage_images)),
        }
        environment["stage_images"] = args.stage_images
        save()
    if "encoders" in args.parts:
        result["encoders"] = worker("encoders", new, str(args.model), str(folder), "16")
        save()
    environment["load_average"].append(os.getloadavg()[0])


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """Medians, throughputs and the ratios the targets name (empty without job runs)."""
    runs, n = result.get("runs"), result.get("n_images")
    if not runs or not all(runs.values()) or not result.get("limits"):
        return {}
    names = list(runs)
    old_default, new_default, new_none = names[0], names[2], names[4]
    median = {name: statistics.median(r["wall_s"] for r in rs) for name, rs in runs.items()}
    cpu = {name: statistics.median(r["cpu_s"] for r in rs) for name, rs in runs.items()}
    job = {name: statistics.median(r["job_s"] for r in rs) for name, rs in runs.items() if rs[0]["job_s"] is not None}
    limit_s = statistics.median(x["decode_s"] + x["model_s"] for x in result["limits"])
    return dict(
        names=dict(old_default=old_default, new_default=new_default, new_none=new_none),
        median_wall_s=median,
        median_job_s=job,
        median_cpu_s=cpu,
        peak_rss_mib={name: max(r["peak_rss_mib"] for r in rs) for name, rs in runs.items()},
        images_per_s={name: n / s for name, s in median.items()},
        job_images_per_s={name: n / s for name, s in job.items()},
        limit=dict(
            decode_s=statistics.median(x["decode_s"] for x in result["limits"]),
            model_s=statistics.median(x["model_s"] for x in result["limits"]),
            model_warm_s=statistics.median(x["model_warm_s"] for x in result["limits"]),
            total_s=limit_s,
            images_per_s=n / limit_s,
        ),
        speedup_default=median[old_default] / median[new_default],
        speedup_default_per_round=[a["wall_s"] / b["wall_s"] for a, b in zip(runs[old_default], runs[new_default])],
        cpu_ratio_default=cpu[old_default] / cpu[new_default],
        opening_s={name: statistics.median(r["wall_s"] for r in rs) for name, rs in result.get("opening", {}).items()},
        job_ratio_default=(
            (median[old_default] - statistics.median(r["wall_s"] for r in result["opening"]["previous release"]))
            / job[new_default]
            if result.get("opening")
            else None
        ),
        none_against_limit=limit_s / job[new_none],
        none_against_limit_per_round=[
            (x["decode_s"] + x["model_s"]) / r["job_s"] for x, r in zip(result["limits"], runs[new_none])
        ],
    )


def _jobs_markdown(result: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    n, env = result["n_images"], result["environment"]
    lines = [
        f"MVTec AD bottle's 83 test images (900x900 PNG) copied to {n} files in one folder; model fitted on bottle "
        f"(efficientnet_lite0, 256 px, d=100, a `.padim` file); {env['cpus']} CPUs shared with other jobs "
        f"(load average during the run: {', '.join(f'{x:.1f}' for x in env['load_average'])}); medians of "
        f"{env['rounds']} rounds, the commands alternating. Wall: the whole command (Python start, opening the "
        "model, the job). Job: from the first image to the last row, as the command reports it (opening the model "
        "excluded, as in the limit). CPU: user + system seconds of the process.",
        "",
        "| command | wall s | images/s (wall) | job s | images/s (job) | CPU s | peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in result["runs"]:
        job = summary["median_job_s"].get(name)
        lines.append(
            f"| {name} | {summary['median_wall_s'][name]:.1f} | {summary['images_per_s'][name]:.1f} | "
            + (f"{job:.1f} | {n / job:.1f}" if job else "- | -")
            + f" | {summary['median_cpu_s'][name]:.1f} | {summary['peak_rss_mib'][name]:.0f} |"
        )
    limit = summary["limit"]
    rounds = ", ".join(f"{x:.1f}" for x in summary["speedup_default_per_round"])
    none_rounds = ", ".join(f"{x:.2f}" for x in summary["none_against_limit_per_round"])
    lines += [
        "",
        f"The limit: decoding and pre-processing every image ({limit['decode_s']:.1f} s, threads on all CPUs) plus "
        f"the model on the decoded tensors ({limit['model_s']:.1f} s from a freshly opened model, "
        f"{limit['model_warm_s']:.1f} s warm; onnxruntime on all CPUs): {limit['total_s']:.1f} s, "
        f"{limit['images_per_s']:.1f} images/s.",
        "",
        "| target | measured | |",
        "|---|---:|---|",
        f"| default outputs >= 5x faster than the previous release (wall, same run) | "
        f"{summary['speedup_default']:.1f}x (rounds: {rounds}) | "
        f"{'met' if summary['speedup_default'] >= 5 else '**not met**'} |",
        f"| (the same, in CPU seconds: the work each does) | {summary['cpu_ratio_default']:.1f}x | |",
    ]
    if summary.get("job_ratio_default"):
        opening = summary["opening_s"]
        lines.append(
            f"| (the same, opening the model left out: the previous release's wall less its opening, "
            f"{opening['previous release']:.1f} s, against this version's job; this version opens in "
            f"{opening['this version']:.1f} s) | {summary['job_ratio_default']:.1f}x | |"
        )
    lines += [
        f"| `--overlays none` >= 0.8 of the limit (job time) | {summary['none_against_limit']:.2f} "
        f"(rounds: {none_rounds}) | {'met' if summary['none_against_limit'] >= 0.8 else '**not met**'} |",
    ]
    return lines


def markdown(result: dict[str, Any], summary: dict[str, Any]) -> str:
    lines = ["# The batch job: `padim predict MODEL FOLDER -o OUT`", ""]
    if summary:
        lines += _jobs_markdown(result, summary)
    if result.get("memory"):
        lines += [
            "",
            "Peak RSS on a folder of 8000x8000 PNG images at the default batch size (16 at 256x256); target <= 1.5 GB (1430 MiB):",
            "",
            "| command | peak RSS MiB | wall s |",
            "|---|---:|---:|",
        ]
        lines += [f"| {name} | {m['peak_rss_mib']:.0f} | {m['wall_s']:.1f} |" for name, m in result["memory"].items()]
    if result.get("stages"):
        before, after = result["stages"]["before"], result["stages"]["after"]
        lines += [
            "",
            f"Time per image of each stage, one thread, CPU ms (the first {result['environment']['stage_images']} "
            "images of the folder; the model at batch 32):",
            "",
            "| stage | before (previous release) | after (this version) |",
            "|---|---:|---:|",
        ]
        order = ["decode", "preprocess", "picture (reduced to 1024)", "model", "region box (anomalous)"]
        lines += [f"| {stage} | {before.get(stage, 0):.1f} | {after.get(stage, 0):.1f} |" for stage in order]
        lines += [
            f"| overlay compose | {before['overlay compose']:.1f} | {after['overlay compose']:.1f} |",
            f"| encode | {before['encode (PNG, level 6)']:.1f} (PNG, level 6) | "
            f"{after['encode (JPEG, quality 90)']:.1f} (JPEG, quality 90) |",
            f"| write | {before['write']:.1f} | {after['write']:.1f} |",
            f"| CSV row | - | {after['CSV row']:.2f} |",
        ]
    if result.get("encoders"):
        encoders = result["encoders"]
        lines += [
            "",
            f"Picture formats on {encoders['n']} overlays ({encoders['size'][0]}x{encoders['size'][1]}), one thread:",
            "",
            "| format | ms per picture | kB per picture |",
            "|---|---:|---:|",
        ]
        lines += [f"| {name} | {v['ms']:.1f} | {v['kb']:.0f} |" for name, v in encoders["formats"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help="a model of this version (.padim)")
    parser.add_argument("--old-model", type=Path, help="a model of the previous release (format 1)")
    parser.add_argument("--old-src", type=Path, help="the previous release's src/ folder")
    parser.add_argument("--data", type=Path, help="an MVTec AD category (its test/ images are used)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/padim-batch-job"))
    parser.add_argument("--copies", type=int, default=5, help="copies of the test images (default 5: 415 files)")
    parser.add_argument("--big", type=int, default=70, help="8000x8000 images (default 70: over two batches)")
    parser.add_argument("--big-old", type=int, default=12, help="of them for the previous release (default 12)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["jobs", "memory", "stages", "encoders"],
        choices=["jobs", "memory", "stages", "encoders"],
        help="what to measure (the results of the others, if any, are kept)",
    )
    parser.add_argument("--stage-images", type=int, default=32)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "batch_job")
    args = parser.parse_args()
    if args.worker:
        name, *rest = args.worker
        {"limit": lambda m, f, b: limit_worker(m, f, int(b)),
         "stages": lambda w, m, f, n: stages_worker(w, m, f, int(n)),
         "encoders": lambda m, f, n: encoders_worker(m, f, int(n))}[name](*rest)  # fmt: skip
        return
    # Results are saved after every measurement; a run with some --parts keeps the others' results.
    path = args.out.with_suffix(".json")
    result = json.loads(path.read_text()) if path.is_file() else {}
    result.pop("summary", None)
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        path.write_text(json.dumps(result, indent=1) + "\n")

    benchmark(args, result, save)
    summary = summarize(result)
    path.write_text(json.dumps(dict(summary=summary, **result), indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result, summary))
    print(markdown(result, summary))


if __name__ == "__main__":
    main()
