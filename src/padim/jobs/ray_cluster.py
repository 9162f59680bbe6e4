"""Connecting to a Ray cluster, and cutting work into shards: what every ``--ray`` job shares.

``padim fit --ray`` (:mod:`padim.model.distributed`) and ``padim predict --ray``
(:mod:`padim.jobs.ray_predict`) connect here. Ray is an extra (``pip install
'padim-toolkit[ray]'``): without it, one line says so.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from padim.errors import OptionError, PadimError
from padim.extras import require
from padim.jobs.predict import JobSummary

#: int8 backbones are calibrated on the first images of one stream; a sharded fit does not do that.
INT8_REFUSAL = "--ray fits a float32 backbone only; fit an int8 model without --ray (--backbone-dtype int8)"


def connect(address: str | None = None, num_cpus: int | None = None) -> Any:
    """Connect to the Ray cluster at ``address`` (None: ``RAY_ADDRESS``, else a local one); returns ``ray``.

    Raises:
        OptionError: when Ray is not installed, or the address cannot be reached.
    """
    require("ray", "--ray")
    import ray

    if not ray.is_initialized():
        try:
            ray.init(address=address, num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)  # fmt: skip
        except (ConnectionError, ValueError, RuntimeError, ray.exceptions.RayError) as error:
            where = address or os.environ.get("RAY_ADDRESS") or "a local cluster"
            hint = "" if where == "a local cluster" else (
                "; a cluster with token authentication needs RAY_AUTH_MODE=token and its token here "
                "(RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token)"
            )  # fmt: skip
            raise OptionError(
                f"--ray {where}: cannot start or reach Ray ({str(error).splitlines()[0]}){hint}"
            ) from None
    return ray


def shards(items: Sequence[Any], n_shards: int) -> list[list[Any]]:
    """``items`` cut into ``n_shards`` contiguous shards of sizes differing by at most one (none empty).

    >>> shards(list("abcde"), 2)
    [['a', 'b', 'c'], ['d', 'e']]
    """
    n_shards = max(1, min(n_shards, len(items)))
    size, extra = divmod(len(items), n_shards)
    bounds = [i * size + min(i, extra) for i in range(n_shards + 1)]
    return [list(items[bounds[i] : bounds[i + 1]]) for i in range(n_shards)]


def retryable(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) is a lost worker, actor, node or object: running again may succeed.

    An exception raised by padim's own code (an unreadable image, a bug) is not: it would fail again.
    """
    import ray.exceptions as failures

    lost = (failures.RayActorError, failures.ObjectLostError, failures.NodeDiedError, failures.WorkerCrashedError,
            failures.LocalRayletDiedError, failures.RaySystemError, failures.TaskUnschedulableError,
            failures.ActorUnschedulableError)  # fmt: skip
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, lost):
            return True
        if isinstance(error, failures.RayTaskError) and not isinstance(error.cause, failures.RayError):
            return False  # the task itself raised: padim's code, not the cluster
        error = error.__cause__ or getattr(error, "cause", None)
    return False


def user_error(error: BaseException) -> PadimError | None:
    """The :class:`padim.errors.PadimError` a Ray task raised (an unreadable folder, an output it cannot write),
    found in ``error``'s causes; None for anything else."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, PadimError):
            return error
        error = getattr(error, "cause", None) or error.__cause__
    return None


def plan(resources: dict, n_images: int, batch_size: int, gpu: bool, n_actors: int | None = None,
         threads: int | None = None, decode_cpus: float | None = None) -> tuple[int, int, float, float]:  # fmt: skip
    """(scoring actors, threads per actor, CPUs per actor, CPUs per decoding task) on a cluster with ``resources``.

    With GPUs, one actor per GPU. On CPUs, half the CPUs score (actors of ``threads`` CPUs, default
    1) and half decode (tasks of ``decode_cpus``, default 1): decoding a 900x900 PNG costs about
    what scoring and drawing it cost, and an actor's drawing threads use what decoding leaves idle.
    Never more actors than batches; on a cluster too small for both, the two share its CPUs.

    >>> plan({"CPU": 16}, 1000, 16, False), plan({"CPU": 1}, 1000, 16, False), plan({"CPU": 8, "GPU": 2}, 1000, 16, True)
    ((8, 1, 1, 1.0), (1, 1, 0.5, 0.5), (2, 1, 1, 1.0))
    """
    cpus = float(resources.get("CPU", 1))
    threads = 1 if threads is None else threads
    decode_cpus = 1.0 if decode_cpus is None else decode_cpus
    if n_actors is None:
        n_actors = int(resources.get("GPU", 0)) if gpu else max(1, int(cpus) // 2 // threads)
    n_actors = max(1, min(n_actors, -(-n_images // batch_size)))
    actor_cpus: float = threads
    if n_actors * threads + decode_cpus > cpus:  # too small for both: they share it
        decode_cpus = min(decode_cpus, cpus / 2)
        actor_cpus = min(threads, (cpus - decode_cpus) / n_actors)
    return n_actors, threads, actor_cpus, decode_cpus


#: Images per Ray Data block at most, and the block's decoded pixels at most (bytes).
BLOCK_IMAGES, BLOCK_BYTES = 64, 64 * 2**20


def block_images(n_images: int, image_size: Sequence[int], batch_size: int, n_workers: int) -> int:
    """Images per Ray Data block: a multiple of ``batch_size``, at most :data:`BLOCK_IMAGES` and :data:`BLOCK_BYTES`
    of decoded pixels, and small enough that every worker gets about four blocks.

    >>> block_images(10_000, (256, 256), 16, 8), block_images(100, (256, 256), 16, 2), block_images(500, (2048, 2048), 4, 1)
    (64, 16, 4)
    """
    most = max(1, min(BLOCK_IMAGES, BLOCK_BYTES // (3 * int(image_size[0]) * int(image_size[1]))))
    share = -(-n_images // (4 * max(1, n_workers)))
    return max(batch_size, min(most, share) // batch_size * batch_size)


class ClusterError(PadimError, RuntimeError):
    """Images still without a row after :data:`padim.jobs.ray_predict.MAX_PASSES` runs over a cluster that keeps losing workers."""


@dataclass
class RaySummary(JobSummary):
    """:class:`padim.jobs.predict.JobSummary` of a Ray job, with what the cluster did.

    Attributes:
        nodes, actors, threads: alive nodes at the start, scoring actors, CPUs (threads) per actor.
        passes: runs over the images (1 unless a failed stream left images without a row).
        redone: images scored more than once (their first attempt was lost with an actor or a node).
        restarted_actors: scoring actors started again (a later pass's, after one was lost). lost_nodes: nodes
            that died during the job.
        duplicates: rows that arrived again for an image already written (dropped).
        failures: the errors that ended a pass early.
        seconds, driver_cpu_s: the job's wall time and the driver process's CPU time (every thread).
        setup_cpu_s, first_rows: the driver's CPU time until the first block of rows arrived, and its rows: the
            rest, divided by the rows after it, is the driver's cost per image in the steady state.
        stage_s: seconds per stage summed over the images: ``decode``, ``score``, ``finish`` (overlays included).
        bytes_to_actors: bytes of the decoded batches handed to the actors. bytes_to_driver: bytes of the rows.
    """

    nodes: int = 0
    actors: int = 0
    threads: int = 1
    passes: int = 0
    redone: int = 0
    restarted_actors: int = 0
    lost_nodes: int = 0
    duplicates: int = 0
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    driver_cpu_s: float = 0.0
    setup_cpu_s: float = 0.0
    first_rows: int = 0
    stage_s: dict[str, float] = field(default_factory=lambda: dict(decode=0.0, score=0.0, finish=0.0))
    bytes_to_actors: float = 0.0
    bytes_to_driver: int = 0

    def driver_ms_per_image(self) -> float:
        """The driver's CPU milliseconds per image once rows flow (after the first block; the whole job if one block)."""
        rows = self.n_images + len(self.skipped)
        if rows > self.first_rows > 0:
            return 1e3 * (self.driver_cpu_s - self.setup_cpu_s) / (rows - self.first_rows)
        return 1e3 * self.driver_cpu_s / max(rows, 1)

    def line(self) -> str:
        """One line for the person who ran the job: the cluster, what it lost and redid, the driver's cost."""
        n = max(self.n_images + len(self.skipped), 1)
        lost = f"lost {self.lost_nodes} node(s), {self.restarted_actors} actor(s) started again; redid {self.redone} image(s)"
        if self.passes > 1:
            lost += f" in {self.passes} passes ({'; '.join(self.failures)})"
        return (f"ray: {self.nodes} node(s), {self.actors} scoring actor(s) of {self.threads} CPU(s); {lost}; driver "
                f"{self.driver_ms_per_image():.2f} ms CPU/image ({self.setup_cpu_s:.1f} s to start); object store "
                f"{self.bytes_to_actors / n / 1e3:.0f} kB/image to the actors, {self.bytes_to_driver / n:.0f} B/image "
                f"to the driver")  # fmt: skip
