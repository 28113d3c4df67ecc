"""HostLocks over flock(2): per-VM locks that the kernel releases when the holder dies, so a
SIGKILLed backup never blocks the next one, and a running one always blocks a second.

Backups and snapshot operations of one VM share its lock (a block commit and a backup job on
the same disks would fail each other half-way). The holder writes what it is doing into the
lock file, so whoever finds the lock taken can say what holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from vmkeep.domain.errors import LockedError


class FileLocks:
    """Lock files in ``directory`` (created 0700 on first use)."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    @contextlib.contextmanager
    def hold(self, key: str, what: str) -> Iterator[None]:
        self._directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self._directory / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                raise LockedError(
                    f"cannot start {what}: {holder or 'another vmkeep command'} is running "
                    "on this host"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{what} (pid {os.getpid()})\n".encode(), 0)
            yield
        finally:
            os.close(fd)  # closing releases the lock


def _read_holder(fd: int) -> str:
    """What the holder wrote; empty if it has not written yet (it may be just starting)."""
    try:
        return os.pread(fd, 4096, 0).decode(errors="replace").strip()
    except OSError:
        return ""
