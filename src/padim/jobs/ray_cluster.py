"""Connecting to a Ray cluster, and cutting work into shards: what every ``--ray`` job shares.

``padim fit --ray`` (:mod:`padim.model.distributed`) and ``padim predict --ray``
(:mod:`padim.jobs.ray_predict`) connect here. Ray is an extra (``pip install
'padim-toolkit[ray]'``): without it, one line says so.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from padim.errors import OptionError
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
        except (ConnectionError, ValueError, RuntimeError) as error:
            where = address or os.environ.get("RAY_ADDRESS") or "a local cluster"
            raise OptionError(f"--ray {where}: cannot start or reach Ray ({str(error).splitlines()[0]})") from None
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
