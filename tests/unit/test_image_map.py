"""Reading an idle image's plain data straight from its file (drivers/image_map.py): the map
parsing rules and how a request is split between the file, zeros and the NBD fallback."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from vmkeep.domain.errors import ToolError
from vmkeep.drivers.image_file import ImageFile
from vmkeep.drivers.image_map import MappedFileReader, MappedRange, parse_map
from vmkeep.drivers.nbd_client import NbdReader

KiB = 1 << 10


def test_only_this_files_plain_data_is_read_directly() -> None:
    entries = [
        {"start": 0, "length": 64 * KiB, "depth": 0, "zero": False, "data": True, "offset": 4096},
        {"start": 64 * KiB, "length": 64 * KiB, "depth": 0, "zero": True, "data": False},
        # in a backing file: its offset is not this file's
        {"start": 128 * KiB, "length": 64 * KiB, "depth": 1, "zero": False, "data": True,
         "offset": 0},
        # a compressed cluster: data without an offset
        {"start": 192 * KiB, "length": 64 * KiB, "depth": 0, "zero": False, "data": True},
        # allocated but zero (a preallocated zero cluster) reads as zeros
        {"start": 256 * KiB, "length": 64 * KiB, "depth": 0, "zero": True, "data": True,
         "offset": 8192},
    ]  # fmt: skip
    assert parse_map(entries) == [
        MappedRange(0, 64 * KiB, 4096, zero=False),
        MappedRange(64 * KiB, 64 * KiB, None, zero=True),
        MappedRange(128 * KiB, 64 * KiB, None, zero=False),
        MappedRange(192 * KiB, 64 * KiB, None, zero=False),
        MappedRange(256 * KiB, 64 * KiB, None, zero=True),
    ]


@pytest.mark.parametrize(
    "entries",
    [
        [{"start": 4096, "length": 10, "depth": 0, "zero": True, "data": False}],
        [
            {"start": 0, "length": 10, "depth": 0, "zero": True, "data": False},
            {"start": 20, "length": 10, "depth": 0, "zero": True, "data": False},
        ],
        [{"start": 0, "length": 0, "depth": 0, "zero": True, "data": False}],
    ],
)
def test_a_map_with_gaps_is_refused(entries: list[dict[str, Any]]) -> None:
    with pytest.raises(ToolError, match="unexpected range"):
        parse_map(entries)


class FallbackReader:
    """Stands in for the NBD reader: answers every byte as 0xEE and records requests."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.requests: list[tuple[int, int]] = []

    def pread(self, offset: int, length: int) -> bytes:
        self.requests.append((offset, length))
        return b"\xee" * length


@pytest.fixture
def host_file(tmp_path: Path) -> Iterator[tuple[int, bytes]]:
    content = bytes(range(256)) * 1024  # 256 KiB with a recognisable pattern
    path = tmp_path / "host"
    path.write_bytes(content)
    fd = os.open(path, os.O_RDONLY)
    try:
        yield fd, content
    finally:
        os.close(fd)


def make_reader(
    fd: int, fallback: FallbackReader, direct_fd: int | None = None
) -> MappedFileReader:
    ranges = [
        MappedRange(0, 8 * KiB, 64 * KiB, zero=False),  # disk 0-8K is host 64K-72K
        MappedRange(8 * KiB, 8 * KiB, None, zero=True),
        MappedRange(16 * KiB, 8 * KiB, None, zero=False),  # only through the fallback
        MappedRange(24 * KiB, 8 * KiB, 4 * KiB + 100, zero=False),  # unaligned host offset
    ]
    return MappedFileReader(cast(NbdReader, fallback), ImageFile(fd, direct_fd), ranges)


def test_a_request_is_assembled_from_file_zeros_and_fallback(
    host_file: tuple[int, bytes],
) -> None:
    fd, content = host_file
    fallback = FallbackReader(32 * KiB)
    reader = make_reader(fd, fallback)
    data = reader.pread(4 * KiB, 26 * KiB)
    expected = (
        content[68 * KiB : 72 * KiB]
        + bytes(8 * KiB)
        + b"\xee" * (8 * KiB)
        + content[4 * KiB + 100 : 4 * KiB + 100 + 6 * KiB]
    )
    assert data == expected
    assert fallback.requests == [(16 * KiB, 8 * KiB)]  # nothing else went through NBD
    assert reader.direct_bytes == 16 * KiB


def test_a_request_inside_one_range_is_one_file_read(host_file: tuple[int, bytes]) -> None:
    fd, content = host_file
    fallback = FallbackReader(32 * KiB)
    assert make_reader(fd, fallback).pread(1 * KiB, 2 * KiB) == content[65 * KiB : 67 * KiB]
    assert fallback.requests == []


def test_beyond_the_map_goes_to_the_fallback(host_file: tuple[int, bytes]) -> None:
    fd, _ = host_file
    fallback = FallbackReader(40 * KiB)
    data = make_reader(fd, fallback).pread(30 * KiB, 4 * KiB)
    assert data[2 * KiB :] == b"\xee" * (2 * KiB)
    assert fallback.requests == [(32 * KiB, 2 * KiB)]


def test_direct_io_reads_the_same_bytes(tmp_path: Path, host_file: tuple[int, bytes]) -> None:
    """Aligned pieces go through the O_DIRECT descriptor, unaligned ones through the other."""
    fd, content = host_file
    try:
        direct_fd = os.open(tmp_path / "host", os.O_RDONLY | os.O_DIRECT)
    except OSError:
        pytest.skip("no O_DIRECT on the test's filesystem")
    try:
        reader = make_reader(fd, FallbackReader(32 * KiB), direct_fd)
        assert reader.pread(0, 8 * KiB) == content[64 * KiB : 72 * KiB]
        assert reader.pread(24 * KiB, 8 * KiB) == content[4 * KiB + 100 : 12 * KiB + 100]
    finally:
        os.close(direct_fd)


def test_a_file_shorter_than_its_map_is_an_error(host_file: tuple[int, bytes]) -> None:
    fd, _ = host_file
    ranges = [MappedRange(0, 8 * KiB, 252 * KiB, zero=False)]  # runs 4 KiB past the end
    reader = MappedFileReader(cast(NbdReader, FallbackReader(8 * KiB)), ImageFile(fd), ranges)
    with pytest.raises(ToolError, match="ends before"):
        reader.pread(0, 8 * KiB)
