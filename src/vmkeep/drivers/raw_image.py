"""Writing restored images straight into their files: raw images, and qcow2 images whose
clusters were preallocated (nbd_image.py), whose guest bytes lie plainly at known offsets.

Runs of zeros are never written, so they stay holes (thin) and read back as zeros
(bit-exact). The writes themselves go through image_file.py (O_DIRECT where aligned).
"""

from __future__ import annotations

import bisect
import contextlib
from collections.abc import Iterator
from pathlib import Path

from vmkeep.domain.errors import StoreFullError, ToolError
from vmkeep.drivers.image_file import ImageFile, open_image_file
from vmkeep.drivers.image_map import MappedRange

HOLE_GRANULARITY = 64 << 10
"""Like a qcow2 cluster: smaller runs of zeros are not worth a syscall, and zeroing a
preallocated qcow2 image afterwards frees whole clusters."""


_UNTOUCHED, _RESERVED, _WRITTEN = b"\x00", b"\x01", b"\x02"
"""States of a block of the image, one byte each in ``SparseFileWriter._blocks``."""
_NOT_WRITTEN = bytes.maketrans(_UNTOUCHED + _RESERVED + _WRITTEN, b"\x01\x01\x00")
_RESERVED_ONLY = bytes.maketrans(_UNTOUCHED + _RESERVED + _WRITTEN, b"\x00\x01\x00")


class SparseFileWriter:
    """BlockWriter into ``file``; ``pwrite`` is thread-safe.

    ``ranges`` places the virtual disk in the file (None: the file *is* the disk, a raw
    image); every range must have a host offset. ``unwritten`` tells afterwards which blocks
    never received data.
    """

    def __init__(
        self, file: ImageFile, size: int, *, ranges: list[MappedRange] | None = None
    ) -> None:
        self._file = file
        self._size = size
        self._ranges = ranges if ranges is not None else [MappedRange(0, size, 0, zero=False)]
        if any(r.host_offset is None for r in self._ranges):
            raise ValueError("every range of a preallocated image needs a host offset")
        self._starts = [r.start for r in self._ranges]
        self._hosts = [r.host_offset or 0 for r in self._ranges]
        self._zeros = bytes(HOLE_GRANULARITY)
        self._blocks = bytearray(-(-size // HOLE_GRANULARITY))  # one _UNTOUCHED.. per block
        self._can_reserve = True

    def pwrite(self, offset: int, data: bytes) -> None:
        data = data if isinstance(data, bytes) else bytes(data)
        view = memoryview(data)
        start = 0
        while start < len(view):
            # Skip whole zero blocks, then write the longest run of non-zero blocks at once.
            if self._zero_block_at(data, start):
                start += min(HOLE_GRANULARITY, len(data) - start)
                continue
            end = min(start + HOLE_GRANULARITY, len(data))
            while end < len(data) and not self._zero_block_at(data, end):
                end = min(end + HOLE_GRANULARITY, len(data))
            self._write_run(offset + start, view[start:end])
            first, last = (
                (offset + start) // HOLE_GRANULARITY,
                (offset + end - 1) // HOLE_GRANULARITY,
            )
            self._blocks[first : last + 1] = _WRITTEN * (last - first + 1)
            start = end

    def reserve(self, offset: int, length: int) -> None:
        """Allocate the file space for data about to be written at ``[offset, offset +
        length)`` of the disk, where the filesystem can and has the room. On ext4 the
        O_DIRECT writes then run side by side: writes into blocks not yet allocated take the
        inode's lock exclusively, into reserved ones they share it (restores of the benchmark
        disk took 15 % less time with 8 writers). Reservations cover whole chunks, zero
        blocks inside them too, so they can ask for more than the image will finally hold:
        when the filesystem has no room for them (ENOSPC, EDQUOT), what was reserved is given
        back and the writes allocate as they go, as without reservations. Blocks reserved and
        never written are given back by ``release_unused``."""
        if not self._can_reserve or length <= 0:
            return
        try:
            for host, _position, piece in self._host_pieces(offset, length):
                if not self._file.reserve(host, piece):
                    self._can_reserve = False  # this filesystem cannot: writes allocate
                    return
        except StoreFullError:
            self._can_reserve = False
            self._mark_reserved(offset, length)  # whatever part of it was allocated
            self.release_unused()
            return
        self._mark_reserved(offset, length)

    def _mark_reserved(self, offset: int, length: int) -> None:
        first, last = offset // HOLE_GRANULARITY, (offset + length - 1) // HOLE_GRANULARITY
        span = self._blocks[first : last + 1]
        self._blocks[first : last + 1] = span.replace(_UNTOUCHED, _RESERVED)

    def release_unused(self) -> None:
        """Punch out every block that was reserved but received no data, so the image stays
        as thin as if nothing had been reserved. Call once the writes are done."""
        for offset, length in self._runs(_RESERVED_ONLY):
            for host, _position, piece in self._host_pieces(offset, length):
                self._file.release(host, piece)
        self._blocks = self._blocks.replace(_RESERVED, _UNTOUCHED)

    def _zero_block_at(self, data: bytes, start: int) -> bool:
        # bytes.startswith is a memcmp in place: comparing memoryview slices goes element by
        # element, ~100 us per 64 KiB block with the GIL held (65 times slower).
        return data.startswith(self._zeros[: len(data) - start], start)

    def unwritten(self) -> list[tuple[int, int]]:
        """(offset, length) of the runs of blocks that received no data, in order."""
        return self._runs(_NOT_WRITTEN)

    def _runs(self, selected: bytes) -> list[tuple[int, int]]:
        """(offset, length) of the runs of blocks whose state ``selected`` (a translation
        table) maps to 1."""
        flags = self._blocks.translate(selected)
        runs: list[tuple[int, int]] = []
        block = 0
        while block < len(flags):
            block = flags.find(1, block)
            if block < 0:
                break
            end = flags.find(0, block)
            end = len(flags) if end < 0 else end
            offset = block * HOLE_GRANULARITY
            runs.append((offset, min(end * HOLE_GRANULARITY, self._size) - offset))
            block = end
        return runs

    def _host_pieces(self, offset: int, length: int) -> Iterator[tuple[int, int, int]]:
        """(host offset, position in the run, length) of the pieces of the disk's
        ``[offset, offset + length)`` in the file, in order."""
        if offset + length > self._size:
            raise ToolError(f"write past the end of the image ({offset + length} bytes)")
        position = 0
        number = bisect.bisect_right(self._starts, offset) - 1
        while position < length:
            mapped = self._ranges[number]
            at = offset + position
            piece = min(length - position, mapped.start + mapped.length - at)
            yield self._hosts[number] + (at - mapped.start), position, piece
            position += piece
            number += 1

    def _write_run(self, offset: int, data: memoryview) -> None:
        for host, position, piece in self._host_pieces(offset, len(data)):
            self._file.write(host, data[position : position + piece])


@contextlib.contextmanager
def sparse_file_writer(path: Path, size: int) -> Iterator[SparseFileWriter]:
    """A new sparse raw image of ``size`` bytes at ``path`` (must not exist), fsynced on
    success; removed on failure."""
    with open_image_file(path, create_size=size) as file:
        try:
            writer = SparseFileWriter(file, size)
            yield writer
            writer.release_unused()
            file.flush()
        except BaseException:
            path.unlink(missing_ok=True)
            raise
