"""Direct raw restores: exact bytes, zero runs left as holes, nothing left on failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vmkeep.drivers.raw_image import sparse_file_writer

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
