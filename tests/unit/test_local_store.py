"""LocalStore behaviour beyond the ObjectStore contract: the writeback hint, directories."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from vmkeep.backends import local
from vmkeep.backends.local import LocalStore


def test_each_put_starts_its_writeback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the hint a backup's data is flushed in one burst by the sync before the
    manifest (and crowds the host's page cache); see local._write_out_soon."""
    hinted: list[tuple[int, int]] = []
    real = os.posix_fadvise

    def record(fd: int, offset: int, length: int, advice: int) -> None:
        hinted.append((os.fstat(fd).st_size, advice))
        real(fd, offset, length, advice)

    monkeypatch.setattr(local.os, "posix_fadvise", record)
    store = LocalStore.create(tmp_path / "repo")
    assert store.put("data/ab/abcd", b"x" * 5000) is True
    assert hinted == [(5000, os.POSIX_FADV_DONTNEED)]  # after the data, on the object's file


def test_a_refused_hint_is_not_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object) -> None:
        raise OSError(errno.ESPIPE, "not supported here")

    monkeypatch.setattr(local.os, "posix_fadvise", refuse)
    store = LocalStore.create(tmp_path / "repo")
    assert store.put("data/ab/abcd", b"chunk") is True
    assert store.get("data/ab/abcd") == b"chunk"


def test_directories_are_made_private_when_a_write_first_needs_them(tmp_path: Path) -> None:
    """put makes no directory up front: a missing tmp/ or object directory (a repository
    copied without its empty directories, say) is made on the failed first try."""
    store = LocalStore.create(tmp_path / "repo")
    (tmp_path / "repo" / "tmp").rmdir()
    assert store.put("data/ab/abcd", b"one") is True
    assert store.put("data/ab/abce", b"two") is True  # the directory exists now
    assert store.put("data/ab/abcd", b"other") is False  # never overwrites
    assert store.get("data/ab/abcd") == b"one"
    for directory in ("tmp", "data/ab"):
        assert (tmp_path / "repo" / directory).stat().st_mode & 0o777 == 0o700
    assert list((tmp_path / "repo" / "tmp").iterdir()) == []  # no temporary file left
