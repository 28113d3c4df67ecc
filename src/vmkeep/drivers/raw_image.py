"""Writing raw images directly: a sparse file where runs of zeros are never written, so they
stay holes (thin) and read back as zeros (bit-exact)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from vmkeep.domain.errors import StoreFullError, ToolError

_HOLE_GRANULARITY = 64 << 10  # like a qcow2 cluster: smaller holes are not worth a syscall


class SparseFileWriter:
    """BlockWriter over a file descriptor; ``pwrite`` is thread-safe (os.pwrite is)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._zeros = bytes(_HOLE_GRANULARITY)

    def pwrite(self, offset: int, data: bytes) -> None:
        view = memoryview(data)
        start = 0
        while start < len(view):
            # Skip whole zero blocks, then write the longest run of non-zero blocks at once.
            block = view[start : start + _HOLE_GRANULARITY]
            if block == self._zeros[: len(block)]:
                start += len(block)
                continue
            end = start + len(block)
            while end < len(view):
                following = view[end : end + _HOLE_GRANULARITY]
                if following == self._zeros[: len(following)]:
                    break
                end += len(following)
            self._write_all(offset + start, view[start:end])
            start = end

    def _write_all(self, offset: int, data: memoryview) -> None:
        try:
            while data:
                written = os.pwrite(self._fd, data, offset)
                data, offset = data[written:], offset + written
        except OSError as exc:
            if exc.errno in (28, 122):  # ENOSPC, EDQUOT
                raise StoreFullError(f"no space left for the restored image: {exc}") from exc
            raise ToolError(f"writing the restored image failed: {exc.strerror}") from exc


@contextlib.contextmanager
def sparse_file_writer(path: Path, size: int) -> Iterator[SparseFileWriter]:
    """A new sparse file of ``size`` bytes at ``path`` (must not exist), fsynced on success;
    removed on failure."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.ftruncate(fd, size)
        yield SparseFileWriter(fd)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        fd = -1
        path.unlink(missing_ok=True)
        raise
    finally:
        if fd >= 0:
            os.close(fd)
