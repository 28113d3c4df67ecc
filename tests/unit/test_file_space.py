"""fallocate through ctypes: which libc symbol, interrupted calls, unsupported filesystems."""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from vmkeep.drivers import file_space


def test_plain_fallocate_is_used_where_libc_has_no_fallocate64() -> None:
    """musl 1.2.4 dropped the *64 names; its off_t is 64 bits anyway."""

    def fallocate(*_args: Any) -> int:
        return 0

    musl = SimpleNamespace(fallocate=fallocate)
    assert file_space._load(musl) is fallocate
    assert file_space._load(SimpleNamespace()) is None


def _failing(*codes: int) -> Any:
    """A fake fallocate that fails with each of ``codes`` in turn, then succeeds."""
    pending = list(codes)
    calls: list[tuple[int, ...]] = []

    def fallocate(*args: int) -> int:
        calls.append(args)
        if pending:
            ctypes.set_errno(pending.pop(0))
            return -1
        return 0

    fallocate.calls = calls  # type: ignore[attr-defined]
    return fallocate


def test_an_interrupted_call_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _failing(errno.EINTR, errno.EINTR)
    monkeypatch.setattr(file_space, "_fallocate", fake)
    assert file_space.reserve(3, 0, 4096)
    assert len(fake.calls) == 3


def test_unsupported_is_false_and_no_room_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(file_space, "_fallocate", _failing(errno.EOPNOTSUPP))
    assert not file_space.reserve(3, 0, 4096)
    monkeypatch.setattr(file_space, "_fallocate", _failing(errno.ENOSPC))
    with pytest.raises(OSError) as raised:
        file_space.reserve(3, 0, 4096)
    assert raised.value.errno == errno.ENOSPC
    monkeypatch.setattr(file_space, "_fallocate", None)
    assert not file_space.punch_hole(3, 0, 4096)


def test_reserve_and_punch_on_a_real_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, 1 << 20)
        assert file_space.reserve(fd, 0, 1 << 20)
        assert os.fstat(fd).st_blocks * 512 >= 1 << 20
        assert os.fstat(fd).st_size == 1 << 20  # KEEP_SIZE
        assert file_space.punch_hole(fd, 0, 1 << 20)
        assert os.fstat(fd).st_blocks == 0
    finally:
        os.close(fd)
