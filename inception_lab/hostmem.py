"""Host memory: keep freed blocks for reuse instead of handing them back to the OS at once.

glibc serves large blocks with mmap and hands freed memory back to the OS (unmap, heap trim): a CPU training step then
faults its activations back in, page by page, step after step (measured: ``docs/performance.md``). Raising both
thresholds makes glibc keep the memory for reuse, as PyTorch's CUDA caching allocator does on the GPU. The maths is
untouched; resident memory stays at the step's peak. Linux with glibc only; elsewhere a no-op.
Also :func:`usable_cores`: the cores this process may run on.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
INT_MAX = 2**31 - 1


def keep_freed_memory(limit: int = 1 << 30) -> bool:
    """Serve blocks below ``limit`` bytes from the heap and never trim it; True if glibc took both settings."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)  # int mallopt(int param, int value)
    limit = min(limit, INT_MAX)
    return bool(mallopt(M_MMAP_THRESHOLD, limit)) & bool(mallopt(M_TRIM_THRESHOLD, INT_MAX))


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (what SLURM or a cgroup's cpuset gave the job), not the
    machine's count (``os.cpu_count()``: 128 on a node where the job holds 16)."""
    import os

    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
