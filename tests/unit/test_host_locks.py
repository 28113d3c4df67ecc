"""Per-VM host locks (drivers/host_locks.py): exclusive, released on exit, and the refusal
names what holds the lock."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from vmkeep.domain.errors import LockedError
from vmkeep.drivers.host_locks import FileLocks


def test_a_held_lock_refuses_a_second_holder_and_names_the_first(tmp_path: Path) -> None:
    locks = FileLocks(tmp_path / "locks")
    with locks.hold("uuid-1", "a backup of 'web'"):
        with pytest.raises(LockedError) as refused, locks.hold("uuid-1", "a snapshot of 'web'"):
            pass  # pragma: no cover
        message = str(refused.value)
        assert message.startswith("cannot start a snapshot of 'web'")
        assert "a backup of 'web' (pid " in message
        with locks.hold("uuid-2", "a backup of 'db'"):  # other VMs are independent
            pass
    with locks.hold("uuid-1", "a snapshot of 'web'"):  # released at the end of the block
        pass
    assert stat.S_IMODE((tmp_path / "locks").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "locks" / "uuid-1.lock").stat().st_mode) == 0o600


def test_the_lock_is_released_when_the_block_raises(tmp_path: Path) -> None:
    locks = FileLocks(tmp_path)
    with pytest.raises(RuntimeError), locks.hold("k", "first"):
        raise RuntimeError("boom")
    with locks.hold("k", "second"):
        assert "second" in (tmp_path / "k.lock").read_text()
