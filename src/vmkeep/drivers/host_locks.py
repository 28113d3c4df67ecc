"""HostLocks over flock(2): per-VM locks that the kernel releases when the holder dies, so a
SIGKILLed backup never blocks the next one, and a running one always blocks a second."""

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
                raise LockedError(f"{what} is already running on this host") from None
            yield
        finally:
            os.close(fd)  # closing releases the lock
