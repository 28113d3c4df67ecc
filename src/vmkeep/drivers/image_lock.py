"""Keeping writers out of an image file while it is read, with QEMU's own file locks.

QEMU (and qemu-img, qemu-nbd, qemu-io) coordinate through open-file-description byte-range
locks on the image: a process holding a permission read-locks byte ``100 + bit``, and one
that refuses to share a permission read-locks byte ``200 + bit``; whoever wants a permission
first takes its own byte, then fails if another process locks the matching refusal byte.
``qemu-nbd --read-only`` refuses writers for qcow2 images, but not for raw ones: a VM could
start on a raw disk in the middle of its backup and the backup would be torn without an
error. Taking the "refuses write" byte ourselves closes that for every format.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import struct
from collections.abc import Iterator
from pathlib import Path

from vmkeep.domain.errors import LockedError, NotFoundError, ToolError

log = logging.getLogger(__name__)

_HOLDS_BASE, _REFUSES_BASE = 100, 200
_WRITE_BIT = 1  # BLK_PERM_WRITE = 1 << 1
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL)  # e.g. some network filesystems
_FLOCK = "hhqqi4x"  # struct flock on 64-bit Linux: type, whence, start, len, pid (32 bytes)


def _flock(kind: int, byte: int) -> bytes:
    return struct.pack(_FLOCK, kind, os.SEEK_SET, byte, 1, 0)


@contextlib.contextmanager
def writers_excluded(path: Path) -> Iterator[None]:
    """While the block runs, no QEMU process can open ``path`` for writing. Raises
    LockedError if one has it open for writing already (a running VM, qemu-nbd, qemu-img).

    The refusal byte is locked *before* looking for writers, the order QEMU uses too, so a
    writer opening at the same moment either is seen here or sees our lock and fails.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFoundError(f"{path} does not exist") from None
    except OSError as exc:
        raise ToolError(f"cannot open {path}: {exc.strerror}") from exc
    try:
        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_RDLCK, _REFUSES_BASE + _WRITE_BIT))
            answer = fcntl.fcntl(
                fd, fcntl.F_OFD_GETLK, _flock(fcntl.F_WRLCK, _HOLDS_BASE + _WRITE_BIT)
            )
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):  # a conflicting lock is held
                raise LockedError(f"{path} is open for writing (by a running VM?)") from None
            if exc.errno not in _NO_LOCKS:
                raise ToolError(f"cannot lock {path}: {exc.strerror}") from exc
            # QEMU itself goes on without locks on such filesystems: so can we, saying so.
            log.warning("%s: the filesystem has no file locks; writers are not kept out", path)
            answer = _flock(fcntl.F_UNLCK, 0)
        if struct.unpack(_FLOCK, answer)[0] != fcntl.F_UNLCK:
            raise LockedError(
                f"{path} is open for writing (by a running VM or another QEMU tool): "
                "back it up through its VM, or stop the writer first"
            )
        yield
    finally:
        os.close(fd)
