"""Extents math: which fixed-size chunks of a disk need reading at all."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Extent:
    """A byte range of a disk; ``zero`` when it reads as zeros (a hole or zeroed clusters)."""

    offset: int
    length: int
    zero: bool


def data_chunks(extents: Iterable[Extent], disk_size: int, chunk_size: int) -> list[bool]:
    """For every chunk of the disk, whether it may hold data (True) or is known to read as
    zeros (False). A chunk touched by any non-zero extent, or by no extent at all, must be
    read: only ranges the image itself reports as zero are skipped."""
    count = (disk_size + chunk_size - 1) // chunk_size
    known_zero = [0] * count  # bytes of each chunk covered by zero extents
    for extent in extents:
        if not extent.zero or extent.length <= 0:
            continue
        start, end = max(extent.offset, 0), min(extent.offset + extent.length, disk_size)
        position = start
        while position < end:
            number = position // chunk_size
            chunk_end = min((number + 1) * chunk_size, end)
            known_zero[number] += chunk_end - position
            position = chunk_end
    return [known_zero[n] < min(chunk_size, disk_size - n * chunk_size) for n in range(count)]


def chunks_touched(ranges: Iterable[Extent], disk_size: int, chunk_size: int) -> list[bool]:
    """For every chunk, whether any of ``ranges`` (dirty regions, whatever their ``zero``
    flag) overlaps it. Used to turn a dirty bitmap into the chunks an incremental must visit."""
    count = (disk_size + chunk_size - 1) // chunk_size
    touched = [False] * count
    for extent in ranges:
        start, end = max(extent.offset, 0), min(extent.offset + extent.length, disk_size)
        if end <= start:
            continue
        for number in range(start // chunk_size, (end - 1) // chunk_size + 1):
            touched[number] = True
    return touched
