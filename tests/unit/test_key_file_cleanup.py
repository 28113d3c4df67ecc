"""After a failed ``repo init --key-file`` or ``key add --key-file`` the new key file is
removed only when it is certain that nothing opens with it."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmkeep.backends.memory import MemoryStore
from vmkeep.domain.errors import StoreError
from vmkeep.repository import keys as keyfiles
from vmkeep.repository.repo import Identity, InitOptions, init_repository
from vmkeep.services.repository import discard_unused_key_file

WHO = Identity("host1", "alice")


def _key_file(tmp_path: Path) -> tuple[Path, bytes]:
    secret = keyfiles.new_random_secret()
    path = tmp_path / "host.key"
    path.write_bytes(secret + b"\n")
    return path, secret


def test_removed_when_nothing_was_created(tmp_path: Path) -> None:
    path, secret = _key_file(tmp_path)
    discard_unused_key_file(path, None, secret)  # the store could not even be made
    assert not path.exists()
    path, secret = _key_file(tmp_path)
    discard_unused_key_file(path, MemoryStore(), secret)  # no config: no repository
    assert not path.exists()


def test_removed_when_the_repository_does_not_open_with_it(tmp_path: Path) -> None:
    store = MemoryStore()
    init_repository(store, b"pw", InitOptions(scrypt_n=1 << 10), now="t", who=WHO)
    path, secret = _key_file(tmp_path)
    discard_unused_key_file(path, store, secret)
    assert not path.exists()


def test_kept_when_the_repository_opens_with_it(tmp_path: Path) -> None:
    """The failure came after the key was written (a sync, a lock release, Ctrl-C): the
    file may be the only key of a repository that exists."""
    path, secret = _key_file(tmp_path)
    store = MemoryStore()
    init_repository(store, secret, InitOptions(random_key=True), now="t", who=WHO)
    discard_unused_key_file(path, store, secret)
    assert path.exists()


def test_kept_when_the_store_cannot_tell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, secret = _key_file(tmp_path)
    store = MemoryStore()

    def unreachable(_name: str) -> bool:
        raise StoreError("connection refused")

    monkeypatch.setattr(store, "exists", unreachable)
    discard_unused_key_file(path, store, secret)
    assert path.exists()
