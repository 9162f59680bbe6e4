"""What this machine gives a process: CPUs and their features, memory, a cache folder, glibc's allocator settings.

One place for the facts every layer asks about: how many threads to run (:func:`cpu_threads`,
which honours the process's affinity mask and ``PADIM_THREADS``), which processor it is and which
of its instructions matter for speed (:func:`cpu_info`: VNNI for int8, AVX512-BF16 and AMX for
bfloat16), how much memory there is (:func:`machine_memory`, a control group's limit included),
where measurements made once per machine are kept (:func:`cache_dir`), and the two allocator
settings that keep resident memory at what is live (:func:`return_large_blocks`,
:func:`release_freed_memory`). Standard library only.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path

#: Blocks of at least this many bytes are mapped on their own and returned to the system when freed.
MMAP_THRESHOLD = 4 * 2**20
#: Environment variable that caps :func:`cpu_threads` (a Ray worker sets it to the CPUs it holds).
ENV_THREADS = "PADIM_THREADS"
#: Environment variable naming the folder of :func:`cache_dir`.
ENV_CACHE = "PADIM_CACHE_DIR"
#: CPU flags (Linux ``/proc/cpuinfo`` names) that decide what reduced precision gains here.
SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")


@dataclass(frozen=True)
class CpuInfo:
    """The processor: its name and the flags of :data:`SPEED_FLAGS` it has.

    Attributes:
        model: the model name (``AMD EPYC 9R14 96-Core Processor``), or the platform's word for it.
        flags: the subset of :data:`SPEED_FLAGS` this CPU has.
    """

    model: str
    flags: frozenset[str]

    @property
    def int8_dot(self) -> bool:
        """u8 x s8 dot products in one instruction (AVX512-VNNI, AVX-VNNI or AMX-INT8): int8 gains most."""
        return bool(self.flags & {"avx512_vnni", "avx_vnni", "amx_int8"})

    @property
    def bf16(self) -> bool:
        """bfloat16 arithmetic in hardware (AVX512-BF16 or AMX-BF16); without it bfloat16 is emulated, slowly."""
        return bool(self.flags & {"avx512_bf16", "amx_bf16"})

    def describe(self) -> str:
        """``AMD EPYC ... (avx512_vnni, avx512_bf16)``."""
        return f"{self.model} ({', '.join(sorted(self.flags)) or 'none of ' + '/'.join(SPEED_FLAGS[2:])})"


@functools.cache
def cpu_info() -> CpuInfo:
    """This machine's :class:`CpuInfo`, read once from ``/proc/cpuinfo`` (elsewhere: no flags known)."""
    model, named, flags = platform.processor() or platform.machine(), False, set()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not named:
                    model, named = value.strip(), True
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    return CpuInfo(model, frozenset(flags & set(SPEED_FLAGS)))


def cache_dir() -> Path:
    """The folder for what padim measures once per machine: ``$PADIM_CACHE_DIR``, else ``~/.cache/padim``."""
    found = os.environ.get(ENV_CACHE) or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "padim")
    return Path(found).expanduser()


def cpu_threads() -> int:
    """CPUs this process may use: its affinity mask (not the machine's count), capped by ``PADIM_THREADS``."""
    limit = os.environ.get(ENV_THREADS, "")
    if limit.isdigit() and int(limit) > 0:
        return int(limit)
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_workers() -> int:
    """Decoding and drawing threads: the CPUs this process may use, at most 8."""
    return max(1, min(8, cpu_threads()))


def machine_memory() -> int:
    """Bytes of memory this process may use: the machine's, or its control group's limit if lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def release_freed_memory() -> None:
    """Hand memory freed by Python and torch back to the system (glibc's ``malloc_trim``; elsewhere nothing).

    Tracing a graph runs it once at the working size; without this, those activations stay in
    the process's heap after they are freed and count in its resident memory.
    """
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)


@functools.cache
def return_large_blocks() -> bool:
    """Have glibc map every block of :data:`MMAP_THRESHOLD` bytes or more on its own, returned when freed.

    By default glibc raises its mmap threshold each time a large block is freed, up to 32 MB;
    from then on decoded images (Pillow allocates up to 16 MB blocks), activations and embeddings
    come from per-thread heaps whose fragments stay resident: decoding a folder of 8000x8000
    images grew by about 50 MB per image, and a fit at 512x512 by 300 MB. Fixing the threshold
    keeps resident memory at what is live. It costs a page fault per fresh block, which made a
    fit's streamed update 1.5 times slower at 256x256, so a fit sets it only past 256x256
    (:mod:`padim.model.memory`). Returns whether it was set (only glibc has it).
    """
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:  # not glibc (macOS, Windows, musl): nothing to set
        return False
    return bool(mallopt(-3, MMAP_THRESHOLD))  # -3: M_MMAP_THRESHOLD in glibc's malloc.h
