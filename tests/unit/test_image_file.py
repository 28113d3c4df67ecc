"""Direct image file I/O (drivers/image_file.py): O_DIRECT for aligned pieces, the page
cache for the rest, and a device that refuses O_DIRECT's alignment falls back for good."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

import vmkeep.drivers.image_file as image_file
from vmkeep.domain.errors import StoreFullError, ToolError
from vmkeep.drivers.image_file import ImageFile, open_image_file

KiB = 1 << 10


def test_aligned_and_unaligned_pieces_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "image"
    data = os.urandom(16 * KiB)
    with open_image_file(path, create_size=64 * KiB) as file:
        file.write(8 * KiB, memoryview(data))  # aligned: O_DIRECT where the filesystem has it
        file.write(100, memoryview(b"tail"))  # unaligned: the ordinary descriptor
        file.flush()
    with open_image_file(path) as file:
        assert file.read(8 * KiB, 16 * KiB) == data
        assert file.read(100, 4) == b"tail"
        with pytest.raises(ToolError, match="ends"):
            file.read(60 * KiB, 8 * KiB)
    assert path.stat().st_size == 64 * KiB


def test_creating_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "image"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError), open_image_file(path, create_size=10):
        pass
    assert path.read_bytes() == b"precious"


def test_einval_from_o_direct_falls_back_to_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "image"
    path.write_bytes(os.urandom(8 * KiB))
    fd = os.open(path, os.O_RDWR)
    calls: list[int] = []
    real_preadv = os.preadv

    def preadv(target: int, buffers: Any, offset: int) -> int:
        calls.append(target)
        if target == -2:  # the pretend O_DIRECT descriptor: alignment refused
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_preadv(target, buffers, offset)

    monkeypatch.setattr(image_file.os, "preadv", preadv)
    try:
        file = ImageFile(fd, direct_fd=-2)
        assert file.read(0, 4 * KiB) == path.read_bytes()[: 4 * KiB]
        assert file.read(4 * KiB, 4 * KiB) == path.read_bytes()[4 * KiB :]
        assert calls == [-2]  # tried once, then never again
    finally:
        os.close(fd)


def test_a_full_disk_is_a_store_full_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def pwritev(_fd: int, _buffers: Any, _offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(image_file.os, "pwritev", pwritev)
    with pytest.raises(StoreFullError):
        ImageFile(99).write(1, memoryview(b"x"))
