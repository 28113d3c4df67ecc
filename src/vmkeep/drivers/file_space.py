"""Reserving and releasing a file's disk space: Linux ``fallocate(2)``.

Python's ``os`` module has only ``posix_fallocate``, and glibc emulates that by writing zeros
where the filesystem cannot allocate (NFSv3, older ZFS): a restore would then write every
byte twice. ``fallocate(2)`` itself says EOPNOTSUPP instead, and has the hole-punching mode
``os`` lacks; no maintained package wraps it, hence these few lines of ctypes.
"""

from __future__ import annotations

import ctypes
import errno
import os
from typing import Any

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02

_UNSUPPORTED = (errno.EOPNOTSUPP, errno.ENOSYS, errno.ENOTTY)


def _load(libc: Any = None) -> Any | None:
    """libc's fallocate with a 64-bit offset: ``fallocate64`` on glibc (also on 32-bit
    systems), plain ``fallocate`` where off_t is always 64 bits (musl 1.2.4 dropped the
    ``*64`` names); None if neither exists (nothing is then reserved)."""
    libc = libc if libc is not None else ctypes.CDLL(None, use_errno=True)
    for name in ("fallocate64", "fallocate"):
        function = getattr(libc, name, None)
        if function is not None:
            function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
            function.restype = ctypes.c_int
            return function
    return None


_fallocate = _load()


def _call(fd: int, mode: int, offset: int, length: int) -> bool:
    """fallocate; False where the filesystem (or libc) does not support ``mode``. Raises
    OSError for other failures (ENOSPC, EDQUOT, EIO, ...); retries when interrupted."""
    if length <= 0:
        return True
    if _fallocate is None:
        return False
    while _fallocate(fd, mode, offset, length) != 0:
        code = ctypes.get_errno()
        if code == errno.EINTR:
            continue  # as Python's own system calls do (PEP 475)
        if code in _UNSUPPORTED:
            return False
        raise OSError(code, os.strerror(code))
    return True


def reserve(fd: int, offset: int, length: int) -> bool:
    """Allocate the blocks of ``[offset, offset + length)`` (they read as zeros until
    written) without changing the file's size. False if the filesystem cannot; OSError
    (ENOSPC, EDQUOT, ...) if it has no room."""
    return _call(fd, FALLOC_FL_KEEP_SIZE, offset, length)


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Give the blocks of ``[offset, offset + length)`` back (they read as zeros). False if
    the filesystem cannot."""
    return _call(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
