"""Connecting to a Ray cluster, and cutting work into shards: what every ``--ray`` job shares.

``padim fit --ray`` (:mod:`padim.model.distributed`) and ``padim predict --ray``
(:mod:`padim.jobs.ray_predict`) connect here. Ray is an extra (``pip install
'padim-toolkit[ray]'``): without it, one line says so.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from padim.errors import OptionError, PadimError
from padim.extras import require

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
