"""Reading an idle image's data straight from its file, where QEMU says where it lies.

``qemu-img map`` tells, for every range of the virtual disk, whether it is allocated and at
which offset of the image *file* its bytes are stored. For raw images and for plain qcow2
clusters (not compressed, not encrypted, no external data file) those bytes are the guest's
bytes as they are, so they can be read with ``pread`` on the file: no copy through qemu-nbd's
socket and process, which cost about 5 CPU seconds per 3 GiB here, a fifth of a first
backup's CPU time (image_file.py reads them, with O_DIRECT). Everything else (compressed
clusters, backing files, formats QEMU must decode) is still read through NBD.

Only for images nothing writes to: the caller keeps writers out with QEMU's file locks
(image_lock.py) and keeps qemu-nbd serving the image read-only while this reader is used.
"""

from __future__ import annotations

import bisect
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmkeep.domain.errors import ToolError
from vmkeep.domain.extents import Extent
from vmkeep.drivers.image_file import ImageFile
from vmkeep.drivers.nbd_client import NbdReader
from vmkeep.drivers.process import run_tool

log = logging.getLogger(__name__)

DIRECT_FORMATS = ("raw", "qcow2")


@dataclass(frozen=True, slots=True)
class MappedRange:
    """``length`` bytes of the virtual disk from ``start``: zeros, at ``host_offset`` of the
    image file, or (``host_offset`` None, not zero) only readable through QEMU."""

    start: int
    length: int
    host_offset: int | None
    zero: bool


def _in_order(entries: list[dict[str, Any]]) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """(start, length, entry) of ``qemu-img map`` entries; raises ToolError for output that
    does not cover the disk in order."""
    position = 0
    for entry in entries:
        start, length = int(entry["start"]), int(entry["length"])
        if start != position or length <= 0:
            raise ToolError(f"qemu-img map: unexpected range at {start} (expected {position})")
        position = start + length
        yield start, length, entry


def parse_map(entries: list[dict[str, Any]]) -> list[MappedRange]:
    """``qemu-img map --output=json`` entries as MappedRanges, in order.

    A range's bytes are in this file only at depth 0 with a valid offset; data that comes from
    a backing file (depth > 0) or has no offset (compressed) is left to QEMU. Raises
    ToolError for output that does not cover the disk in order.
    """
    ranges = []
    for start, length, entry in _in_order(entries):
        zero = bool(entry.get("zero"))
        direct = not zero and entry.get("depth") == 0 and entry.get("data") and "offset" in entry
        ranges.append(MappedRange(start, length, int(entry["offset"]) if direct else None, zero))
    return ranges


def parse_preallocated_map(entries: list[dict[str, Any]]) -> list[MappedRange]:
    """The map of a qcow2 image made with ``preallocation=metadata``: every range allocated
    in the file (reading as zeros until written). Raises ToolError if one is not."""
    ranges = []
    for start, length, entry in _in_order(entries):
        # "data": false would be a zero-flagged cluster, whose file bytes QEMU never reads.
        if entry.get("depth") != 0 or "offset" not in entry or not entry.get("data"):
            raise ToolError(f"qemu-img map: the range at {start} is not preallocated")
        ranges.append(MappedRange(start, length, int(entry["offset"]), zero=False))
    return ranges


MAX_MAP_ENTRIES = 1 << 18
"""Above this many ranges (a much-fragmented image) the map would cost more memory than it
saves time (about 0.5 KiB each while parsed): such images are read through NBD only."""


def image_map(path: Path, image_format: str) -> list[MappedRange] | None:
    """Where the data of ``path`` lies in the file, or None when it is better read through
    NBD only: another format, encryption, an external data file, a map too large to hold,
    or qemu-img failing to map it (logged; the NBD path reads the same bytes, slower)."""
    if image_format not in DIRECT_FORMATS:
        return None
    try:
        if image_format == "qcow2":
            info = json.loads(
                run_tool(["qemu-img", "info", "--output=json", "-f", "qcow2", "--", str(path)])
            )
            specific = info.get("format-specific", {}).get("data", {})
            if info.get("encrypted") or "data-file" in specific:
                return None
        argv = ["qemu-img", "map", "--output=json", "-f", image_format, "--", str(path)]
        output = run_tool(argv)
        if output.count("\n") > MAX_MAP_ENTRIES:  # qemu-img prints one range per line
            log.info("%s: more than %d mapped ranges; reading through NBD", path, MAX_MAP_ENTRIES)
            return None
        return parse_map(json.loads(output))
    except (ToolError, ValueError, KeyError) as exc:
        log.warning("%s: cannot map the image (%s); reading it through NBD", path, exc)
        return None


def preallocated_map(path: Path) -> list[MappedRange]:
    """Where every cluster of the preallocated qcow2 image ``path`` lies in its file."""
    output = run_tool(["qemu-img", "map", "--output=json", "-f", "qcow2", "--", str(path)])
    return parse_preallocated_map(json.loads(output))


class MappedFileReader:
    """An ExportReader that reads directly mapped ranges from the image file and everything
    else through ``fallback`` (NBD), which also answers ``extents`` and ``dirty_ranges``.
    ``pread`` is thread-safe. ``file`` is the image file (the caller opens and closes it);
    ``direct_bytes`` says how much of the disk the map lets it read directly."""

    def __init__(self, fallback: NbdReader, file: ImageFile, ranges: list[MappedRange]) -> None:
        self._fallback = fallback
        self._file = file
        self._ranges = ranges
        self._starts = [r.start for r in ranges]
        self.direct_bytes = sum(r.length for r in ranges if r.host_offset is not None)

    @property
    def size(self) -> int:
        return self._fallback.size

    def extents(self) -> list[Extent]:
        return self._fallback.extents()

    def dirty_ranges(self) -> list[Extent] | None:
        return self._fallback.dirty_ranges()

    def pread(self, offset: int, length: int) -> bytes | bytearray:
        pieces = self._pieces(offset, length)
        if len(pieces) == 1 and pieces[0].host_offset is not None:
            return self._file.read(pieces[0].host_offset, length)
        buffer = bytearray(length)  # zeros where a piece is zero
        for piece in pieces:
            at, end = piece.start - offset, piece.start - offset + piece.length
            if piece.host_offset is not None:
                buffer[at:end] = self._file.read(piece.host_offset, piece.length)
            elif not piece.zero:
                buffer[at:end] = self._fallback.pread(piece.start, piece.length)
        return buffer

    def _pieces(self, offset: int, length: int) -> list[MappedRange]:
        """The parts of the map the request overlaps, cut to it; a request past the map's
        end (never expected) goes to the fallback."""
        end = offset + length
        pieces: list[MappedRange] = []
        number = max(bisect.bisect_right(self._starts, offset) - 1, 0)
        position = offset
        while position < end:
            if number >= len(self._ranges):
                pieces.append(MappedRange(position, end - position, None, zero=False))
                break
            mapped = self._ranges[number]
            stop = min(end, mapped.start + mapped.length)
            if stop > position:
                host = None
                if mapped.host_offset is not None:
                    host = mapped.host_offset + (position - mapped.start)
                pieces.append(MappedRange(position, stop - position, host, mapped.zero))
                position = stop
            number += 1
        return pieces
