"""ImageIO over qemu-nbd and libnbd: any format QEMU knows, read and written block-wise.

One qemu-nbd process serves the image on a Unix socket in a private temporary directory, with
``--shared=N`` so N libnbd connections can keep N requests in flight (libnbd handles are
used by one thread at a time, so a queue hands them out). The process and the socket are
gone when the context manager exits, whatever happened inside.
"""

from __future__ import annotations

import contextlib
import json
import queue
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbd

from vmkeep.domain.errors import AlreadyExistsError, NotFoundError, ToolError, UsageError
from vmkeep.domain.extents import Extent
from vmkeep.drivers.process import run_tool

_STARTUP_TIMEOUT = 30.0
_MAX_STATUS_LENGTH = 1 << 30  # qemu-nbd answers block status in pieces; ask for 1 GiB at a time
_CREATE_OPTIONS = {"qcow2": ["-o", "compat=1.1"]}


def probe_format(path: Path) -> str:
    """The image format qemu-img detects. Raw images whose first bytes look like another
    format would be misdetected: callers that know the format should say so."""
    if not path.exists():
        raise NotFoundError(f"{path} does not exist")
    if not path.is_file() and not path.is_block_device():
        raise UsageError(f"{path} is not a disk image")
    info = json.loads(run_tool(["qemu-img", "info", "--output=json", "-U", str(path)], timeout=60))
    return str(info["format"])


class _Connections:
    """N libnbd handles to one qemu-nbd; ``borrow`` lends one to the calling thread."""

    def __init__(self, handles: list[Any]) -> None:
        self._handles = handles
        self._free: queue.Queue[Any] = queue.Queue()
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
        for handle in self._handles:
            with contextlib.suppress(nbd.Error):
                if flush:
                    handle.flush()
                handle.shutdown()


@contextlib.contextmanager
def _served(
    path: Path, image_format: str, connections: int, writable: bool
) -> Iterator[_Connections]:
    """Start qemu-nbd for ``path`` and connect ``connections`` handles to it."""
    if shutil.which("qemu-nbd") is None:
        raise ToolError("qemu-nbd is not installed (run `make setup`)")
    workdir = Path(tempfile.mkdtemp(prefix="vmkeep-nbd-"))
    socket_path = workdir / "nbd.sock"
    argv = [
        "qemu-nbd",
        "--socket",
        str(socket_path),
        "--shared",
        str(connections),
        "--format",
        image_format,
        "--cache",
        "writeback",
    ]
    argv += ["--discard=unmap", "--detect-zeroes=unmap"] if writable else ["--read-only"]
    argv += ["--", str(path)]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    conns: _Connections | None = None
    try:
        _wait_for_socket(process, socket_path)
        handles = [_connect(process, socket_path, writable) for _ in range(connections)]
        conns = _Connections(handles)
        yield conns
        conns.close(flush=writable)
        conns = None
    except nbd.Error as exc:
        raise ToolError(f"NBD access to {path} failed: {exc}") from exc
    finally:
        if conns is not None:
            conns.close(flush=False)
        _stop(process)
        shutil.rmtree(workdir, ignore_errors=True)


def _connect(process: subprocess.Popen[bytes], socket_path: Path, writable: bool) -> Any:
    """A connected handle. qemu-nbd creates the socket a moment before it listens on it, so a
    refused connection is retried (a failed libnbd handle cannot be reused: make a new one)."""
    deadline = time.monotonic() + _STARTUP_TIMEOUT
    while True:
        handle = nbd.NBD()
        if not writable:
            handle.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
        try:
            handle.connect_unix(str(socket_path))
            return handle
        except nbd.Error:
            if process.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _wait_for_socket(process: subprocess.Popen[bytes], socket_path: Path) -> None:
    deadline = time.monotonic() + _STARTUP_TIMEOUT
    while not socket_path.exists():
        if process.poll() is not None:
            stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
            raise ToolError(f"qemu-nbd failed: {stderr.strip().splitlines()[-1:] or 'no output'}")
        if time.monotonic() > deadline:
            raise ToolError("qemu-nbd did not start within 30 s")
        time.sleep(0.01)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stderr is not None:
        process.stderr.close()


class NbdReader:
    """BlockReader over a pool of libnbd connections."""

    def __init__(self, connections: _Connections) -> None:
        self._conns = connections
        self._size = int(connections.first.get_size())

    @property
    def size(self) -> int:
        return self._size

    def extents(self) -> list[Extent]:
        found: list[Extent] = []
        offset = 0
        with self._conns.borrow() as handle:
            if not handle.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION):
                return [Extent(0, self._size, zero=False)]  # unknown: read everything
            while offset < self._size:
                batch = self._status_batch(handle, offset)
                if not batch:
                    raise ToolError("the NBD server returned no block status")
                for extent in batch:
                    end = min(extent.offset + extent.length, self._size)
                    found.append(Extent(extent.offset, end - extent.offset, extent.zero))
                    offset = end
                    if offset >= self._size:
                        break
        return found

    def _status_batch(self, handle: Any, offset: int) -> list[Extent]:
        """One block-status round trip from ``offset``; the server may answer less."""
        batch: list[Extent] = []

        def collect(context: str, _offset: int, entries: list[int], _err: Any) -> int:
            if context == nbd.CONTEXT_BASE_ALLOCATION:
                position = offset + sum(e.length for e in batch)
                for i in range(0, len(entries), 2):
                    length, flags = entries[i], entries[i + 1]
                    batch.append(Extent(position, length, bool(flags & nbd.STATE_ZERO)))
                    position += length
            return 0

        handle.block_status(min(_MAX_STATUS_LENGTH, self._size - offset), offset, collect)
        return batch

    def pread(self, offset: int, length: int) -> bytes:
        with self._conns.borrow() as handle:
            return bytes(handle.pread(length, offset))


class NbdWriter:
    """BlockWriter over a pool of libnbd connections."""

    def __init__(self, connections: _Connections) -> None:
        self._conns = connections

    def pwrite(self, offset: int, data: bytes) -> None:
        with self._conns.borrow() as handle:
            handle.pwrite(data, offset)


class QemuImageIO:
    """ImageIO through qemu-img and qemu-nbd."""

    @contextlib.contextmanager
    def open_reader(self, path: Path, connections: int = 4) -> Iterator[NbdReader]:
        image_format = probe_format(path)
        with _served(path, image_format, connections, writable=False) as conns:
            yield NbdReader(conns)

    @contextlib.contextmanager
    def create_writer(
        self, path: Path, size: int, image_format: str, overwrite: bool = False
    ) -> Iterator[NbdWriter]:
        if path.exists() and not overwrite:
            raise AlreadyExistsError(f"{path} exists (use --force to overwrite it)")
        if not path.parent.is_dir():
            raise NotFoundError(f"directory {path.parent} does not exist")
        partial = path.with_name(f".{path.name}.partial")
        partial.unlink(missing_ok=True)
        try:
            run_tool(
                [
                    "qemu-img",
                    "create",
                    "-q",
                    "-f",
                    image_format,
                    *_CREATE_OPTIONS.get(image_format, []),
                    str(partial),
                    str(size),
                ]
            )
            with _served(partial, image_format, 4, writable=True) as conns:
                yield NbdWriter(conns)
            partial.replace(path)
        finally:
            partial.unlink(missing_ok=True)
