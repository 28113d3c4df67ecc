"""Repository init/open, keys and typed objects over the in-memory store."""

from __future__ import annotations

import pytest

from vmkeep.backends.memory import MemoryStore
from vmkeep.domain.backup import BackupManifest, DiskBackup
from vmkeep.domain.errors import (
    AlreadyExistsError,
    IntegrityError,
    NotFoundError,
    ObjectNotFoundError,
    RepositoryError,
    UsageError,
    WrongPasswordError,
)
from vmkeep.repository.indexes import ZERO_CHUNK, DiskIndex
from vmkeep.repository.repo import (
    Identity,
    InitOptions,
    chunk_object,
    init_repository,
    open_repository,
)

WHO = Identity("host1", "alice")
FAST = InitOptions(scrypt_n=1 << 10, chunk_size=4096)


def make(store: MemoryStore, encryption: str = "aes-256-gcm") -> None:
    options = InitOptions(encryption=encryption, scrypt_n=1 << 10, chunk_size=4096)
    init_repository(store, b"pw" if encryption != "none" else None, options, now="t", who=WHO)


def test_init_then_open_with_the_password() -> None:
    store = MemoryStore()
    make(store)
    repo = open_repository(store, lambda: b"pw")
    assert repo.config.encrypted
    assert repo.chunk_size == 4096
    assert len(repo.list_keys()) == 1


def test_init_twice_is_refused() -> None:
    store = MemoryStore()
    make(store)
    with pytest.raises(AlreadyExistsError):
        make(store)


def test_wrong_password_writes_nothing() -> None:
    store = MemoryStore()
    make(store)
    before = dict(store.objects)
    with pytest.raises(WrongPasswordError):
        open_repository(store, lambda: b"nope")
    assert store.objects == before


def test_unencrypted_never_asks_for_a_password() -> None:
    store = MemoryStore()
    make(store, "none")

    def no_password() -> bytes:
        raise AssertionError("asked for a password")

    repo = open_repository(store, no_password)
    assert not repo.config.encrypted
    with pytest.raises(UsageError):
        repo.add_key(b"x", WHO, "t")


def test_missing_repository() -> None:
    with pytest.raises(RepositoryError, match="repo init"):
        open_repository(MemoryStore(), lambda: b"pw")


@pytest.mark.parametrize("encryption", ["aes-256-gcm", "none"])
def test_tampered_config_is_detected(encryption: str) -> None:
    store = MemoryStore()
    make(store, encryption)
    store.objects["config"] = store.objects["config"].replace(
        b'"chunk_size": 4096', b'"chunk_size": 8192'
    )
    with pytest.raises(IntegrityError):
        open_repository(store, lambda: b"pw")


def test_chunks_round_trip_and_are_verified() -> None:
    store = MemoryStore()
    make(store)
    repo = open_repository(store, lambda: b"pw")
    data = b"chunk data" * 100
    cid = repo.chunk_id(data)
    assert repo.store_chunk(cid, data) > 0
    assert repo.store_chunk(cid, data) == 0  # dedup at the store
    assert repo.load_chunk(cid) == data
    assert set(repo.list_chunks()) == {cid}
    # A chunk stored under the wrong id (a bug, or a malicious writer) is caught on read.
    wrong = "f" * 64
    repo.store_chunk(wrong, data)
    with pytest.raises(IntegrityError, match="does not match"):
        repo.load_chunk(wrong)
    with pytest.raises(ObjectNotFoundError):
        repo.load_chunk("e" * 64)
    assert chunk_object(cid) == f"data/{cid[:2]}/{cid}"


def test_index_and_manifest_round_trip() -> None:
    store = MemoryStore()
    make(store)
    repo = open_repository(store, lambda: b"pw")
    index = DiskIndex(disk_size=10000, chunk_size=4096, chunk_ids=("a" * 64, ZERO_CHUNK, "b" * 64))
    index_id = repo.write_index(index)
    assert repo.write_index(index) == index_id  # content-addressed
    assert repo.load_index(index_id) == index
    assert index.chunk_length(2) == 10000 - 8192
    manifest = BackupManifest(
        backup_id="20261123T120000Z-0123abcd",
        kind="image",
        created="2026-11-23T12:00:00Z",
        host="h",
        vm=None,
        disks=(DiskBackup(name="disk.qcow2", size=10000, chunk_size=4096, index_id=index_id),),
        tags=("a", "ü"),
        config_files={"domain.xml": "<domain/>"},
    )
    repo.write_manifest(manifest)
    assert repo.list_backup_ids() == [manifest.backup_id]
    assert repo.load_manifest(manifest.backup_id) == manifest
    with pytest.raises(AlreadyExistsError):
        repo.write_manifest(manifest)
    with pytest.raises(NotFoundError):
        repo.load_manifest("20261123T120000Z-ffffffff")
    with pytest.raises(UsageError):
        repo.load_manifest("../config")


def test_key_add_change_remove() -> None:
    store = MemoryStore()
    make(store)
    repo = open_repository(store, lambda: b"pw")
    first = repo.key_id
    assert first is not None
    second = repo.add_key(b"second", WHO, "t2", scrypt_n=1 << 10)
    assert open_repository(store, lambda: b"second").key_id == second
    with pytest.raises(UsageError, match="in use"):
        repo.remove_key(first)
    repo.remove_key(second)
    with pytest.raises(WrongPasswordError):
        open_repository(store, lambda: b"second")
    with pytest.raises(UsageError, match="last key"):
        repo.remove_key(first)
    new_id = repo.change_password(b"new", WHO, "t3")
    assert [k.key_id for k in repo.list_keys()] == [new_id]
    with pytest.raises(WrongPasswordError):
        open_repository(store, lambda: b"pw")
    reopened = open_repository(store, lambda: b"new")
    assert reopened.key_id == new_id
    assert b'"kdf": "scrypt"' in reopened.export_key()


def test_index_data_bytes_counts_non_zero_chunks_and_the_short_last_one() -> None:
    index = DiskIndex(disk_size=2500, chunk_size=1000, chunk_ids=("a" * 64, ZERO_CHUNK, "b" * 64))
    assert index.data_bytes() == 1000 + 500
