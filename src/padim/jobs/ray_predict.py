"""Batch prediction on a Ray cluster: decoding tasks, a pool of scoring actors, rows back to the driver.

Ray Data streams the file list through two stages (:mod:`padim.jobs.ray_stages`): CPU tasks that
read and decode the files where they are, and a pool of actors (``map_batches`` with
``compute=ActorPoolStrategy``, Ray 2.60's form; ``concurrency`` is deprecated there) that each hold the model, score, finish each image with the local command's code
(:func:`padim.jobs.predict.finish_image`) and write its overlay picture to the output location (a
folder every node shares, or object storage). Only the rows come back: the driver appends each
to ``predictions.csv`` once, in the order they finish (an image's row is keyed by its place in
the input list, so a row that arrives twice is written once).

Faults: decoding tasks are retried and rebuilt from lineage. A scoring actor is not restarted
in place (``max_restarts=0``, where Ray Data's default restarts it for ever): a node that dies
takes its actors' CPUs with it, and an actor restarted on the CPUs that are left takes those the
decoding needs, or waits for ever with its batches queued behind it. The pool shrinks instead
(:func:`_pool`) and Ray Data runs the lost actor's batches on the others. Should the stream
still fail, the driver runs the images that have no row yet again on what is left, planned anew
(fewer actors for fewer CPUs), up to :data:`MAX_PASSES` times. A thread (:func:`_watch_nodes`) notes the nodes
that die, for the summary. The summary says what was lost and
redone: scoring attempts counted by a ledger actor beside the driver, actors restarted, nodes lost.
"""

from __future__ import annotations

import _thread
import logging
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from padim.errors import ImageError
from padim.io.datasets import Sample
from padim.jobs import storage
from padim.jobs.predict import JobSummary, RowWriter, prepare_job
from padim.jobs.ray_cluster import ClusterError, RaySummary, block_images, connect, plan, retryable, user_error
from padim.jobs.ray_stages import Ledger, Scorer, decode_batch
from padim.outputs.rows import overlay_names

#: Runs over the images still without a row after the stream failed (the first run counts).
MAX_PASSES = 3
#: Seconds without a row, after a node was lost, before a pass is given up (Ray Data may wait for ever
#: for CPUs the lost node had).
STALL_S = 60.0
#: Memory a decoding task asks for besides its block's pixels: one large image being decoded. (A resource the
#: actors do not ask for, so Ray Data keeps decoding a stage of its own instead of fusing it into them.)
DECODE_MEMORY = 256 * 2**20
#: Driver-side variables the workers get (a worker's environment is its node's).
FORWARDED = ("PADIM_MAX_MEGAPIXELS",)


def predict_files(model_path: str | os.PathLike, inputs: Sequence[Any], output: str | os.PathLike | None, *,
                  overlays: str = "anomalous", overlay_format: str = "jpeg", batch_size: int = 16,
                  n_actors: int | None = None, threads: int | None = None, decode_cpus: float | None = None,
                  device: str = "cpu", backend: str = "auto", executor: str = "auto", threshold: float | None = None,
                  skip_bad: bool = False,
                  quiet: bool = True, on_row: Callable | None = None) -> RaySummary:  # fmt: skip
    """The batch job of :func:`padim.jobs.predict.predict_files` on the connected Ray cluster.

    Args:
        model_path: a ``.padim`` or ``.onnx`` file (sent once to each actor; with its ``.data`` file if it has one).
        inputs: paths, URLs (:mod:`padim.jobs.storage`) or :class:`padim.io.datasets.Sample` records.
        output: a folder every node shares, a URL of object storage (overlays written there by the
            actors, ``predictions.csv`` uploaded when the job ends), or None (``on_row`` gets the rows).
        overlays, overlay_format, batch_size, skip_bad, quiet, on_row: as the local job.
        n_actors, threads, decode_cpus: scoring actors, CPUs per actor, CPUs per decoding task
            (None: :func:`padim.jobs.ray_cluster.plan` from the cluster's resources).
        device, backend, executor, threshold: as ``padim predict``; a CUDA device gives each actor a GPU;
            ``executor`` ``auto`` measures once on each node (nodes may differ).

    Returns:
        a :class:`padim.jobs.ray_cluster.RaySummary`.

    Raises:
        ImageError: for an unreadable image (unless ``skip_bad``), after the rows that arrived before it.
        ClusterError: when images are still without a row after :data:`MAX_PASSES` passes.
        OutputError: when a node does not see the output folder, or a picture cannot be written.
    """
    from padim.modelfile.info import model_info
    from padim.progress import progress

    ray, cpu = connect(), time.process_time()
    ray.data.DataContext.get_current().enable_progress_bars = False  # padim's own progress display
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    image_size = tuple(model_info(model_path)["config"]["image_size"])  # a padim model, or one line why not
    job, locations, names, summary, csv_url = _prepare(inputs, output, overlays, overlay_format)
    gpu = str(device).startswith("cuda")
    nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    summary.nodes = len(nodes)
    ledger = ray.remote(num_cpus=0)(Ledger).options(scheduling_strategy=_here(ray)).remote()
    marker = _mark(job.output) if names is not None else None
    scorer = dict(model=ray.put(_model_files(model_path)), device=str(device), backend=backend, executor=executor,
                  threshold=threshold, job=job, ledger=ledger, marker=marker,
                  environment={k: os.environ[k] for k in FORWARDED if k in os.environ})  # fmt: skip
    asked, lost = (n_actors, threads, decode_cpus), set()  # lost: the nodes seen dying during the job
    bar = progress(total=len(locations), desc="predict (starting the actors)", quiet=quiet, unit="img")
    write, done = RowWriter(summary, bar, on_row), bytearray(len(locations))
    start = time.perf_counter()
    try:
        while summary.passes < MAX_PASSES and not all(done):
            summary.passes += 1
            items = [{"index": i, "location": str(locations[i]), "name": "" if names is None else names[i]}
                     for i in range(len(locations)) if not done[i]]  # fmt: skip
            # Planned on the cluster as it is now: a later pass runs on what a lost node left.
            n_actors, threads, actor_cpus, decode_cpus = plan(
                ray.cluster_resources(), len(items), batch_size, gpu, *asked
            )
            if summary.passes == 1:
                summary.actors, summary.threads = n_actors, threads
            stages = dict(batch_size=batch_size, decode_cpus=decode_cpus, n_actors=n_actors, actor_cpus=actor_cpus,
                          gpu=gpu, scorer=dict(scorer, threads=threads))  # fmt: skip
            stop, stalled, last = threading.Event(), threading.Event(), [time.monotonic()]
            watcher = threading.Thread(target=_watch_nodes, args=(ray, stop, lost, last, stalled), daemon=True)
            watcher.start()
            stream = iter(_stream(ray, items, image_size, stages))
            try:
                for batch in stream:
                    bar.set_description("predict")
                    _take(batch, done, summary, write, bar, skip_bad, locations, cpu)
                    last[0] = time.monotonic()
            except KeyboardInterrupt:
                if not stalled.is_set():
                    raise  # the user's Ctrl-C
                getattr(stream, "close", lambda: None)()  # Ray Data shuts this stream's tasks and actors down
                summary.failures.append(f"no rows for {STALL_S:.0f} s after a node was lost")
            except ray.exceptions.RayError as error:
                if user_error(error) is not None:
                    raise user_error(error) from None
                if not retryable(error):
                    raise
                summary.failures.append(f"{type(error).__name__}: {str(error).splitlines()[0][:120]}")
            finally:
                stop.set()
                watcher.join()
        if not all(done):
            raise ClusterError(f"{len(done) - sum(done)} image(s) have no row after {summary.passes} passes over "
                               f"the cluster ({'; '.join(summary.failures)})")  # fmt: skip
    finally:
        summary.seconds, summary.driver_cpu_s = time.perf_counter() - start, time.process_time() - cpu
        bar.close()
        write.close()
        _account(ray, ledger, nodes, lost, summary)
        _finish_outputs(job.output, marker, summary, csv_url)
    return summary


def _prepare(inputs: Sequence[Any], output: Any, overlays: str, overlay_format: str) -> tuple:
    """(job, locations, overlay names or None, summary, the CSV's URL or None): :func:`prepare_job` for paths and URLs."""
    given = [x.path if isinstance(x, Sample) else x for x in inputs]
    locations = {storage.naming_path(x): x if storage.is_url(x) else Path(x) for x in given}
    url = storage.is_url(output)
    job, kept, names, summary = prepare_job(None, [Sample(p, 0, "unknown") for p in locations], None if url else output,
                                            overlays, overlay_format)  # fmt: skip
    csv_url = None
    if url:
        spool = Path(tempfile.mkdtemp(prefix="padim-ray-")) / "predictions.csv"  # uploaded when the job ends
        csv_url, summary = storage.join(output, "predictions.csv"), JobSummary(spool)
        job = replace(job, output=output)
        if overlays != "none":
            from padim.io.pictures import PICTURE_FORMATS

            names = overlay_names([s.path for s in kept], PICTURE_FORMATS[overlay_format][0])
    result = RaySummary(**{k: getattr(summary, k) for k in JobSummary.__dataclass_fields__})
    return job, [locations[s.path] for s in kept], names, result, csv_url


def _model_files(model_path: str | os.PathLike) -> dict[str, bytes]:
    """The model file's bytes by name, with the external tensors ``MODEL.onnx.data`` when it has them."""
    path = Path(model_path)
    files = {path.name: path.read_bytes()}
    beside = path.with_name(path.name + ".data")
    if beside.is_file():
        files[beside.name] = beside.read_bytes()
    return files


def _watch_nodes(ray: Any, stop: threading.Event, lost: set, last: list, stalled: threading.Event,
                 period: float = 1.0) -> None:  # fmt: skip
    """Until ``stop``: add the nodes that die to ``lost`` (the job's summary says what it lost).

    Once a node is lost, a stream that gives no rows for :data:`STALL_S` seconds (``last[0]``: the
    time of the last block) is stopped: ``stalled`` is set and the driver's thread interrupted, and
    the next pass runs the images without a row on what is left.
    """
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    while not stop.wait(period):
        try:
            now = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        except ray.exceptions.RayError:
            continue
        lost.update(alive - now)
        alive = now
        if lost and time.monotonic() - last[0] > STALL_S and not stalled.is_set():
            stalled.set()
            _thread.interrupt_main()
            return


def _here(ray: Any) -> Any:
    """Keep an actor on the head node, which outlives the loss of any other (the driver's own node may be
    another: on a machine with several nodes, Ray picks one)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    head = [n["NodeID"] for n in ray.nodes() if n["Alive"] and "node:__internal_head__" in n.get("Resources", {})]
    return NodeAffinitySchedulingStrategy(head[0] if head else ray.get_runtime_context().get_node_id(), soft=True)


def _mark(output: Any) -> str:
    """Write a marker file into the output location; each actor checks it sees it (a shared folder, or a URL)."""
    name = f".padim-ray-{secrets.token_hex(6)}"
    storage.write_bytes(output, name, b"padim predict --ray: every node must see this folder\n")
    return name


def _stream(ray: Any, items: list[dict], image_size: tuple, stages: dict) -> Iterator[dict]:
    """The finished rows' blocks: files -> decoding tasks -> scoring actors -> here.

    A Ray Data block costs the driver about 15 ms of CPU whatever its size (scheduling, ownership,
    metrics), so blocks hold many images (:func:`padim.jobs.ray_cluster.block_images`); each task
    decodes a whole block, and each actor scores it ``batch_size`` images at a time.
    """
    block = block_images(len(items), image_size, stages["batch_size"], stages["n_actors"])
    data = ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // block)))
    decoded = data.map_batches(decode_batch, fn_kwargs=dict(image_size=image_size, environment=stages["scorer"]["environment"]),
                               batch_size=None, batch_format="numpy", num_cpus=stages["decode_cpus"],
                               memory=DECODE_MEMORY + block * 3 * image_size[0] * image_size[1])  # fmt: skip
    scored = decoded.map_batches(Scorer, fn_constructor_kwargs=stages["scorer"], batch_size=stages["batch_size"],
                                 batch_format="numpy", compute=_pool(ray, stages["n_actors"]),
                                 num_cpus=stages["actor_cpus"], num_gpus=1 if stages["gpu"] else 0,
                                 max_restarts=0)  # fmt: skip
    return scored.iter_batches(batch_size=None, batch_format="numpy")


def _pool(ray: Any, n_actors: int) -> Any:
    """The scoring actors: ``n_actors`` at the start, fewer when the cluster shrinks (see the module's "Faults").

    A pool of fixed size replaces an actor lost with its node at once, on the CPUs that are left,
    taking those the decoding tasks need: the stream would stop. A pool that may shrink to one is
    grown again by Ray Data only within what the decoding leaves free.
    """
    return ray.data.ActorPoolStrategy(min_size=1, max_size=n_actors, initial_size=n_actors)


def _take(batch: dict, done: bytearray, summary: RaySummary, write: RowWriter, bar: Any, skip_bad: bool,
          locations: list, cpu: float) -> None:  # fmt: skip
    """Write each new row of a block (once per image); count the stages' costs."""
    import pickle

    if not summary.first_rows:
        summary.setup_cpu_s, summary.first_rows = time.process_time() - cpu, len(batch["index"])

    for j, index in enumerate(batch["index"].tolist()):
        if done[index]:
            summary.duplicates += 1
            continue
        error, row = batch["error"][j], batch["row"][j]
        summary.bytes_to_driver += len(row) + len(error) + 8 * 5  # the row, the error, five numbers
        summary.bytes_to_actors += float(batch["in_bytes"][j])
        for stage in ("decode", "score", "finish"):
            summary.stage_s[stage] += float(batch[f"{stage}_s"][j])
        if error:
            if not skip_bad:
                raise ImageError(error)
            done[index] = 1
            summary.skipped[locations[index]] = error
            bar.update(1)
            continue
        done[index] = 1
        write(pickle.loads(row))


def _account(ray: Any, ledger: Any, nodes: set, lost: set, summary: RaySummary) -> None:
    """Fill in the nodes lost; and what the ledger saw: images started more than once, actors started again."""
    try:
        summary.lost_nodes = len(lost | (nodes - {n["NodeID"] for n in ray.nodes() if n["Alive"]}))
        starts, actors = ray.get(ledger.report.remote(), timeout=30)
    except (ray.exceptions.RayError, TimeoutError):
        return
    summary.redone = sum(1 for count in starts.values() if count > 1)
    summary.restarted_actors = max(0, len(actors) - summary.actors)
    ray.kill(ledger)


def _finish_outputs(output: Any, marker: str | None, summary: RaySummary, csv_url: str | None) -> None:
    """Remove the marker; upload the CSV when the output is a URL (the rows that arrived, also after an error)."""
    if marker is not None:
        storage.remove(storage.join(output, marker))
    if csv_url is not None:
        spool = Path(summary.csv_path)
        storage.write_bytes(output, "predictions.csv", spool.read_bytes())
        spool.unlink()
        spool.parent.rmdir()
        summary.csv_path = csv_url
