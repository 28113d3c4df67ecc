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

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02

_UNSUPPORTED = (errno.EOPNOTSUPP, errno.ENOSYS, errno.ENOTTY)

_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = _libc.fallocate64
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_fallocate.restype = ctypes.c_int


def _call(fd: int, mode: int, offset: int, length: int) -> bool:
    """fallocate; False where the filesystem does not support ``mode``. Raises OSError for
    other failures (ENOSPC, EDQUOT, EIO, ...)."""
    if length <= 0:
        return True
    if _fallocate(fd, mode, offset, length) == 0:
        return True
    code = ctypes.get_errno()
    if code in _UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code))


def reserve(fd: int, offset: int, length: int) -> bool:
    """Allocate the blocks of ``[offset, offset + length)`` (they read as zeros until
    written) without changing the file's size. False if the filesystem cannot; OSError
    (ENOSPC, EDQUOT, ...) if it has no room."""
    return _call(fd, FALLOC_FL_KEEP_SIZE, offset, length)


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Give the blocks of ``[offset, offset + length)`` back (they read as zeros). False if
    the filesystem cannot."""
    return _call(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
