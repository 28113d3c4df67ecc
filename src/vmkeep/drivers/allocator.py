"""Tuning glibc's allocator for a process that handles thousands of 1-4 MiB buffers.

Every chunk a backup or restore moves is a few fresh buffers of about the chunk size (read,
compressed, encrypted; or the reverse). glibc serves allocations above its mmap threshold
with a new ``mmap`` and returns them with ``munmap``, and trims freed heap tops above its
trim threshold; its "dynamic" threshold only rises to a size after such a buffer is freed,
and per-thread arenas trim eagerly. The result, measured on an 8 GiB restore, was that the
kernel zeroed and faulted in every page of every buffer: about 5 of 9 system CPU seconds.
Raising both thresholds once lets the worker threads reuse their heap memory instead, which
roughly halved the system time of backups and restores. Memory stays bounded: the transfer
pipeline keeps one chunk per worker alive, and what the heap retains is reused.

There is no library for this: it is two ``mallopt(3)`` calls, made through ctypes because
Python does not expose them. On a C library other than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import logging

_log = logging.getLogger(__name__)

# From glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

# Well above the largest chunk size (4 MiB, plus compression's worst-case growth); glibc caps
# the mmap threshold at 32 MiB on 64-bit. Larger allocations still get their own mapping.
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 256 << 20

_tuned = False


def tune_for_large_buffers() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (idempotent).

    Returns whether the allocator was tuned (False on non-glibc systems or if glibc refused).
    """
    global _tuned
    if _tuned:
        return True
    try:
        # The process's own symbols, which hold the C library's: find_library("c") would
        # run ldconfig in a subprocess, a few milliseconds of every command's start.
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success, 0 on error.
    _tuned = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    if not _tuned:
        _log.debug("mallopt refused the allocator thresholds; keeping glibc's defaults")
    return _tuned


def allocator_environment() -> dict[str, str]:
    """The same thresholds as environment variables, for child processes that handle chunk-
    sized buffers too (qemu-nbd). glibc reads them at start; other C libraries ignore them."""
    return {
        "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
        "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD),
    }
