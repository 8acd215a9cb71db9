"""Keep freed heap memory inside the process (glibc): no page-fault storm in CPU training.

A CPU meta-iteration allocates and frees hundreds of megabytes of activations and gradients.
With glibc's default, adaptive settings, much of it goes back to the kernel at every ``free``
(``munmap`` of medium blocks, ``brk`` trimming of the heap's top) and comes back as fresh,
zero-filled pages at the next allocation: on Conv4-32, 5-way 1-shot, meta-batch 4, K = 5 up to
tens of thousands of minor page faults per meta-iteration, depending on the heap's history
(``docs/performance.md``, "Page faults": the vmapped floor 20% faster without them in a fresh
process, training 6–12% faster). Three ``mallopt`` settings keep that memory in the heap.
Blocks of 32 MiB or more (a Conv4-64 84×84 layer's activations) are still mapped afresh at every
allocation; a fourth setting (``large_blocks=True``) keeps them too, at a cost in peak memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["KEEP_FREED_MEMORY_ENV", "keep_freed_memory"]

#: Set to ``0`` to leave the allocator as it is in the command-line entry points.
KEEP_FREED_MEMORY_ENV = "MIRROROPT_KEEP_FREED_MEMORY"

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -2, -3, -4  # <malloc.h>
_SETTINGS = (
    (_M_MMAP_THRESHOLD, 32 << 20),  # blocks below 32 MiB (glibc's maximum) come from the heap
    (_M_TRIM_THRESHOLD, 2**31 - 1),  # never hand the heap's free top back to the kernel
    (_M_TOP_PAD, 64 << 20),  # grow the heap 64 MiB at a time
)
_LARGE_BLOCKS = ((_M_MMAP_MAX, 0),)  # no separately mapped block: all, however large, from the heap


def keep_freed_memory(*, large_blocks: bool = False) -> bool:
    r"""Make glibc keep freed memory for reuse instead of returning it to the kernel.

    Sets ``M_MMAP_THRESHOLD`` to 32 MiB, ``M_TRIM_THRESHOLD`` to :math:`2^{31} - 1` and
    ``M_TOP_PAD`` to 64 MiB with ``mallopt(3)`` for the whole process (all three are needed: the
    trim threshold alone makes it worse). Results are unchanged bit for bit; the process keeps its
    peak heap instead of shrinking between iterations, and tensors of 32 MiB or more are still
    mapped and unmapped each time (glibc's limit) unless ``large_blocks``. The command-line entry
    points (``python -m mirroropt ...``) call it unless ``MIRROROPT_KEEP_FREED_MEMORY=0``; call it at the
    start of your own CPU training script. CUDA memory has its own caching allocator and is not
    affected.

    Args:
        large_blocks: also set ``M_MMAP_MAX`` to 0, so that no block is mapped on its own and
            blocks of 32 MiB or more are reused from the heap as well. Measured on the vmapped
            Conv4-64 84×84 meta-iteration (5-way 1-shot, meta-batch 4, K = 5, one CPU thread;
            ``docs/performance.md``, "The standard backbone"): 7.5 s instead of 12.8 s (14.0 s
            with glibc's defaults), 0.5 instead of 3.6 million page faults, but a peak resident
            set of 7.7 GiB instead of 4.7 GiB (freed large blocks stay in the heap, fragmented).
            Off by default; the command-line entry points do not set it.

    Returns:
        True if the settings were applied: glibc on Linux, and the environment variable is not
        ``0``; False otherwise (another C library or platform: nothing is changed).

    References:
        ``mallopt(3)``, the GNU C Library manual, "Memory Allocation Tunables".
    """
    if os.environ.get(KEEP_FREED_MEMORY_ENV, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # glibc only (musl's mallopt is a stub)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = _SETTINGS + (_LARGE_BLOCKS if large_blocks else ())
    return all(mallopt(option, value) == 1 for option, value in settings)
