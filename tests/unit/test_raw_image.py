"""Direct raw restores: exact bytes, zero runs left as holes, nothing left on failure."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from vmkeep.drivers.image_file import ImageFile
from vmkeep.drivers.image_map import MappedRange
from vmkeep.drivers.raw_image import SparseFileWriter, sparse_file_writer

KiB = 1 << 10


def test_content_is_exact_and_zero_blocks_stay_holes(tmp_path: Path) -> None:
    target = tmp_path / "disk.raw"
    data = os.urandom(64 * KiB) + bytes(1024 * KiB) + os.urandom(10) + bytes(64 * KiB - 10)
    with sparse_file_writer(target, 4 << 20) as writer:
        writer.pwrite(1 << 20, data)
        writer.pwrite(0, b"head")
    content = target.read_bytes()
    assert len(content) == 4 << 20
    assert content[:4] == b"head"
    assert content[1 << 20 : (1 << 20) + len(data)] == data
    assert content[4 : 1 << 20] == bytes((1 << 20) - 4)
    # Two 64 KiB data blocks and a 4 KiB block for "head": the megabyte of zeros is a hole.
    assert target.stat().st_blocks * 512 <= 192 * KiB


def test_failure_removes_the_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "disk.raw"
    with pytest.raises(RuntimeError), sparse_file_writer(target, 1 << 20) as writer:
        writer.pwrite(0, b"x" * 100)
        raise RuntimeError("a corrupt chunk")
    assert not target.exists()


def test_never_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "disk.raw"
    target.write_bytes(b"precious")
    with pytest.raises(FileExistsError), sparse_file_writer(target, 10):
        pass
    assert target.read_bytes() == b"precious"


def test_a_preallocated_layout_places_each_range_at_its_host_offset(tmp_path: Path) -> None:
    """qcow2 restores write into the places ``preallocation=metadata`` gave each cluster;
    runs that cross from one range into the next are split, and what was never written is
    reported so that it can be zeroed."""
    path = tmp_path / "image"
    path.write_bytes(bytes(1024 * KiB))
    ranges = [
        MappedRange(0, 256 * KiB, 512 * KiB, False),
        MappedRange(256 * KiB, 256 * KiB, 64 * KiB, False),
    ]
    fd = os.open(path, os.O_WRONLY)
    try:
        writer = SparseFileWriter(ImageFile(fd), 512 * KiB, ranges=ranges)
        first, second = os.urandom(64 * KiB), os.urandom(128 * KiB)
        writer.pwrite(192 * KiB, first + second[: 64 * KiB])  # crosses into the second range
        writer.pwrite(448 * KiB, second[64 * KiB :])
    finally:
        os.close(fd)
    content = path.read_bytes()
    assert content[704 * KiB : 768 * KiB] == first  # disk 192K is host 512K + 192K
    assert content[64 * KiB : 128 * KiB] == second[: 64 * KiB]  # disk 256K is host 64K
    assert content[256 * KiB : 320 * KiB] == second[64 * KiB :]  # disk 448K is host 256K
    assert writer.unwritten() == [(0, 192 * KiB), (320 * KiB, 128 * KiB)]


def test_unwritten_runs_end_at_the_disk_size(tmp_path: Path) -> None:
    target = tmp_path / "disk.raw"
    size = 3 * 64 * KiB + 1000
    with sparse_file_writer(target, size) as writer:
        writer.pwrite(64 * KiB, b"x" * 64 * KiB)
        writer.pwrite(64 * KiB * 2, bytes(64 * KiB))  # zeros are not a write
        assert writer.unwritten() == [(0, 64 * KiB), (128 * KiB, 64 * KiB + 1000)]
    assert target.stat().st_size == size


def test_reserved_space_is_allocated_before_the_writes_and_given_back_where_unused(
    tmp_path: Path,
) -> None:
    target = tmp_path / "disk.raw"
    with sparse_file_writer(target, 4 << 20) as writer:
        writer.reserve(1 << 20, 2 << 20)
        assert target.stat().st_blocks * 512 >= 2 << 20  # allocated before any write
        data = os.urandom(64 * KiB)
        writer.pwrite(1 << 20, data + bytes(1024 * KiB - 64 * KiB))  # one block of data
    assert target.stat().st_blocks * 512 <= 64 * KiB + 4 * KiB  # the rest was punched out
    content = target.read_bytes()
    assert content[1 << 20 : (1 << 20) + 64 * KiB] == data
    assert content.count(0) == len(content) - len(data) + data.count(0)


def test_without_room_for_the_reservations_they_are_given_back_and_writes_allocate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reservations cover whole chunks, zero blocks too: they may ask for more than the
    image will hold. When the filesystem says no, what was reserved is punched out again,
    nothing more is reserved, and the restore goes on as without reservations."""
    from vmkeep.drivers import file_space

    calls: list[tuple[int, int]] = []
    real_reserve = file_space.reserve

    def second_one_full(fd: int, offset: int, length: int) -> bool:
        calls.append((offset, length))
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_reserve(fd, offset, length)

    monkeypatch.setattr(file_space, "reserve", second_one_full)
    target = tmp_path / "disk.raw"
    with sparse_file_writer(target, 4 << 20) as writer:
        writer.reserve(0, 1 << 20)
        writer.reserve(2 << 20, 1 << 20)  # the filesystem is "full"
        assert target.stat().st_blocks == 0  # the first reservation was given back
        writer.reserve(3 << 20, 1 << 20)  # not tried any more
        data = os.urandom(64 * KiB)
        writer.pwrite(2 << 20, data)
    assert calls == [(0, 1 << 20), (2 << 20, 1 << 20)]
    assert target.read_bytes()[2 << 20 : (2 << 20) + len(data)] == data
    assert target.stat().st_blocks * 512 <= 64 * KiB + 4 * KiB


def test_without_reservations_writes_still_land(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filesystem without fallocate (NFSv3, older ZFS): nothing is reserved, and nothing
    is punched afterwards."""
    from vmkeep.drivers import file_space

    calls: list[str] = []

    def unsupported(_fd: int, _offset: int, _length: int) -> bool:
        calls.append("reserve")
        return False

    def punch(_fd: int, _offset: int, _length: int) -> bool:
        calls.append("punch")
        return True

    monkeypatch.setattr(file_space, "reserve", unsupported)
    monkeypatch.setattr(file_space, "punch_hole", punch)
    target = tmp_path / "disk.raw"
    with sparse_file_writer(target, 4 << 20) as writer:
        writer.reserve(0, 1 << 20)
        writer.reserve(2 << 20, 1 << 20)  # not tried again
        writer.pwrite(0, b"x" * 100)
    assert calls == ["reserve"]
    assert target.read_bytes()[:100] == b"x" * 100
