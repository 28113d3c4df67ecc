"""QEMU's write-refusal lock around reads of idle images (drivers/image_lock.py): what
happens where locks are held by others or not supported at all. The real locking against
QEMU is tested in tests/integration/test_image_direct_read.py."""

from __future__ import annotations

import errno
import logging
from pathlib import Path
from typing import Any

import pytest

import vmkeep.drivers.image_lock as image_lock
from vmkeep.domain.errors import LockedError, NotFoundError


def failing_fcntl(code: int) -> Any:
    def fcntl(_fd: int, _command: int, _argument: bytes) -> bytes:
        raise OSError(code, "simulated")

    return fcntl


def test_a_held_conflicting_lock_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = tmp_path / "disk.raw"
    image.write_bytes(b"x")
    monkeypatch.setattr(image_lock.fcntl, "fcntl", failing_fcntl(errno.EAGAIN))
    with pytest.raises(LockedError), image_lock.writers_excluded(image):
        pass


def test_a_filesystem_without_locks_is_read_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    image = tmp_path / "disk.raw"
    image.write_bytes(b"x")
    monkeypatch.setattr(image_lock.fcntl, "fcntl", failing_fcntl(errno.ENOLCK))
    entered = False
    with caplog.at_level(logging.WARNING), image_lock.writers_excluded(image):
        entered = True
    assert entered
    assert "no file locks" in caplog.text


def test_a_missing_image(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError), image_lock.writers_excluded(tmp_path / "nothing"):
        pass
