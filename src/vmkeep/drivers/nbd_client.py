"""libnbd clients: a pool of connections to one NBD export, read and written block-wise.

Used for images served by our own qemu-nbd (nbd_image.py) and for the exports QEMU serves
during a libvirt pull-mode backup (libvirt_backup.py). libnbd handles are used by one thread at
a time, so a queue lends them out; N connections keep N requests in flight.
"""

from __future__ import annotations

import contextlib
import queue
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nbd

from vmkeep.domain.errors import ToolError
from vmkeep.domain.extents import Extent

CONNECT_TIMEOUT = 30.0
_MAX_STATUS_LENGTH = 1 << 30  # servers answer block status in pieces; ask 1 GiB at a time
_DIRTY_FLAG = 1  # qemu:dirty-bitmap contexts: bit 0 set = dirty


class NbdPool:
    """N libnbd handles to one export; ``borrow`` lends one to the calling thread."""

    def __init__(self, handles: list[Any]) -> None:
        self._handles = handles
        # SimpleQueue: lending a handle per chunk through queue.Queue's condition variables
        # held the GIL several times longer.
        self._free: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for handle in handles:
            self._free.put(handle)

    @contextlib.contextmanager
    def borrow(self) -> Iterator[Any]:
        handle = self._free.get()
        try:
            yield handle
        finally:
            self._free.put(handle)

    @property
    def first(self) -> Any:
        return self._handles[0]

    def close(self, flush: bool) -> None:
        """Disconnect every handle (flushing first if asked). Never raises."""
        for handle in self._handles:
            with contextlib.suppress(nbd.Error):
                if flush:
                    handle.flush()
                handle.shutdown()


def connect_pool(
    socket_path: Path,
    count: int,
    *,
    export_name: str = "",
    contexts: tuple[str, ...] = (),
    server_alive: Callable[[], bool] = lambda: True,
) -> NbdPool:
    """Connect ``count`` handles to the export. A server creates its socket a moment before
    it listens, so refused connections are retried while ``server_alive()`` (a failed libnbd
    handle cannot be reused: each attempt makes a new one)."""
    handles = []
    try:
        for _ in range(count):
            handles.append(_connect_one(socket_path, export_name, contexts, server_alive))
    except nbd.Error as exc:
        NbdPool(handles).close(flush=False)
        raise ToolError(f"cannot connect to the NBD export {export_name!r}: {exc}") from exc
    return NbdPool(handles)


def _connect_one(
    socket_path: Path, export_name: str, contexts: tuple[str, ...], server_alive: Callable[[], bool]
) -> Any:
    deadline = time.monotonic() + CONNECT_TIMEOUT
    while True:
        handle = nbd.NBD()
        # libnbd zeroes every read buffer first, for callers that use a buffer after a failed
        # read; ours raise instead, and a successful read fills the whole buffer.
        handle.set_pread_initialize(False)
        for context in contexts:
            handle.add_meta_context(context)
        handle.set_export_name(export_name)
        try:
            handle.connect_unix(str(socket_path))
            return handle
        except nbd.Error:
            if not server_alive() or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class NbdReader:
    """BlockReader over a pool; with ``dirty_context`` it also reports dirty ranges."""

    def __init__(self, pool: NbdPool, dirty_context: str | None = None) -> None:
        self._pool = pool
        self._size = int(pool.first.get_size())
        self._dirty_context = dirty_context

    @property
    def size(self) -> int:
        return self._size

    def extents(self) -> list[Extent]:
        """Allocation: ``zero`` where the server says the range reads as zeros."""
        found = self._walk(nbd.CONTEXT_BASE_ALLOCATION, lambda flags: bool(flags & nbd.STATE_ZERO))
        return found if found is not None else [Extent(0, self._size, zero=False)]

    def dirty_ranges(self) -> list[Extent] | None:
        """Ranges changed since the checkpoint the export was made for; None when the export
        has no dirty bitmap (a full backup: everything counts)."""
        if self._dirty_context is None:
            return None
        found = self._walk(self._dirty_context, lambda flags: not flags & _DIRTY_FLAG)
        if found is None:
            raise ToolError(f"the NBD export does not offer {self._dirty_context}")
        return [e for e in found if not e.zero]

    def _walk(self, context: str, zero_when: Callable[[int], bool]) -> list[Extent] | None:
        """Every extent of ``context`` over the whole disk, or None if it is not offered.
        ``Extent.zero`` is ``zero_when(flags)``."""
        found: list[Extent] = []
        offset = 0
        with self._pool.borrow() as handle:
            if not handle.can_meta_context(context):
                return None
            while offset < self._size:
                batch = _status_batch(handle, context, offset, self._size, zero_when)
                if not batch:
                    raise ToolError(f"the NBD server returned no {context} status")
                for extent in batch:
                    end = min(extent.offset + extent.length, self._size)
                    found.append(Extent(extent.offset, end - extent.offset, extent.zero))
                    offset = end
                    if offset >= self._size:
                        break
        return found

    def pread(self, offset: int, length: int) -> bytearray:
        # libnbd returns a new bytearray; handing it on as it is spares copying every chunk
        # into a bytes object, which took the GIL for a seventh of the time it was held.
        with self._pool.borrow() as handle:
            data: bytearray = handle.pread(length, offset)
            return data


def _status_batch(
    handle: Any, context: str, offset: int, size: int, zero_when: Callable[[int], bool]
) -> list[Extent]:
    """One block-status round trip from ``offset``; the server may answer less."""
    batch: list[Extent] = []

    def collect(meta: str, _offset: int, entries: list[int], _err: Any) -> int:
        if meta == context:
            position = offset + sum(e.length for e in batch)
            for i in range(0, len(entries), 2):
                length, flags = entries[i], entries[i + 1]
                batch.append(Extent(position, length, zero_when(flags)))
                position += length
        return 0

    handle.block_status(min(_MAX_STATUS_LENGTH, size - offset), offset, collect)
    return batch


class NbdWriter:
    """BlockWriter over a pool."""

    def __init__(self, pool: NbdPool) -> None:
        self._pool = pool

    def pwrite(self, offset: int, data: bytes) -> None:
        with self._pool.borrow() as handle:
            handle.pwrite(data, offset)

    def reserve(self, offset: int, length: int) -> None:
        """Nothing: qemu-nbd allocates as it writes (the images it writes are small)."""


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Terminate a server we started, killing it if it does not exit within 10 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stderr is not None:
        process.stderr.close()
