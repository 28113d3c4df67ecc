"""Repository init/open, keys and typed objects over the in-memory store."""

from __future__ import annotations

from datetime import UTC, datetime

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
from vmkeep.repository import keys as keyfiles
from vmkeep.repository.codec import MasterKeys
from vmkeep.repository.indexes import ZERO_CHUNK, DiskIndex
from vmkeep.repository.manifests import new_backup_id, validate_backup_id
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


def _no_scrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object) -> bytes:
        raise AssertionError("scrypt ran")

    monkeypatch.setattr(keyfiles, "_wrapping_key", refuse)


def test_random_key_opens_without_scrypt_even_beside_password_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = MemoryStore()
    make(store)
    repo = open_repository(store, lambda: b"pw")
    secret = keyfiles.new_random_secret()
    random_id = repo.add_key(secret, WHO, "t2", random_key=True)
    for _ in range(3):  # password keys sorting before it by name must not be tried first
        repo.add_key(b"other", WHO, "t3", scrypt_n=1 << 10)
    kinds = {k.key_id: k.kind for k in repo.list_keys()}
    assert kinds[random_id] == "random key"
    assert sorted(kinds.values()).count("password") == 4
    assert b'"kdf": "blake3"' in store.objects[f"keys/{random_id}"]
    assert b'"n"' not in store.objects[f"keys/{random_id}"]
    _no_scrypt(monkeypatch)
    opened = open_repository(store, lambda: secret)
    assert opened.key_id == random_id
    assert opened.codec_keys == repo.codec_keys


def test_password_is_never_derived_against_a_random_key_file() -> None:
    store = MemoryStore()
    make(store)
    repo = open_repository(store, lambda: b"pw")
    repo.add_key(keyfiles.new_random_secret(), WHO, "t2", random_key=True)
    assert open_repository(store, lambda: b"pw").key_id == repo.key_id
    blob = store.objects[f"keys/{repo.list_keys()[-1].key_id}"]
    with pytest.raises(WrongPasswordError, match="not a random key"):
        keyfiles.unwrap_keys(blob, b"pw", repo_id=repo.config.repo_id_bytes, key_id="x")


def test_wrong_or_malformed_random_keys_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    store = MemoryStore()
    secret = keyfiles.new_random_secret()
    init_repository(store, secret, InitOptions(random_key=True), now="t", who=WHO)
    _no_scrypt(monkeypatch)
    assert open_repository(store, lambda: secret).key_id is not None
    for wrong in (
        keyfiles.new_random_secret(),  # well formed, another key
        secret[:-1],  # one character short: not 32 bytes
        secret[:-2] + b"!!",  # not base64
        b"vmkeep-random-key-v1:",
    ):
        with pytest.raises(WrongPasswordError):
            open_repository(store, lambda wrong=wrong: wrong)
    with pytest.raises(ValueError, match="new_random_secret"):
        keyfiles.wrap_keys(
            MasterKeys.generate(),
            b"a chosen password",
            repo_id=b"r" * 16,
            key_id="k",
            created="t",
            host="h",
            user="u",
            kdf="blake3",
        )


@pytest.mark.parametrize(
    "bad",
    [b"not json", b'{"kdf": []}', b'{"kdf": "blake3", "nonce": "", "sealed": ""}', b"[1]"],
    ids=["json", "unhashable-kdf", "blake3-without-salt", "list"],
)
def test_a_malformed_key_file_does_not_lock_out_good_keys(bad: bytes) -> None:
    store = MemoryStore()
    make(store)
    store.objects["keys/0000000000000000"] = bad  # sorts first by name
    assert open_repository(store, lambda: b"pw").key_id is not None
    with pytest.raises(RepositoryError, match="0000000000000000") as refused:
        open_repository(store, lambda: b"wrong")
    assert not isinstance(refused.value, WrongPasswordError)  # it names the broken file


def test_random_secret_format() -> None:
    secret = keyfiles.new_random_secret(lambda n: bytes(range(n)))
    assert secret.startswith(keyfiles.RANDOM_SECRET_PREFIX)
    assert keyfiles.random_secret_bits(secret) == bytes(range(32))
    assert keyfiles.random_secret_bits(b"pw") is None
    assert keyfiles.random_secret_bits(secret[:30] + b"*" + secret[30:]) is None  # strict
    assert keyfiles.new_random_secret() != keyfiles.new_random_secret()


def test_index_data_bytes_counts_non_zero_chunks_and_the_short_last_one() -> None:
    index = DiskIndex(disk_size=2500, chunk_size=1000, chunk_ids=("a" * 64, ZERO_CHUNK, "b" * 64))
    assert index.data_bytes() == 1000 + 500


def test_backup_ids_sort_in_the_order_backups_were_made_within_one_second() -> None:
    second = datetime(2026, 12, 2, 3, 9, 32, tzinfo=UTC)
    earlier = new_backup_id(second.replace(microsecond=120_000), "ffffffff")
    later = new_backup_id(second.replace(microsecond=870_000), "00000000")
    assert earlier == "20261202T030932120Z-ffffffff"
    assert sorted([later, earlier]) == [earlier, later]  # not by the random part
    next_second = new_backup_id(second.replace(second=33), "00000000")
    assert sorted([next_second, later]) == [later, next_second]


@pytest.mark.parametrize("text", ["20261123T163500Z-1a2b3c4d", "20261123T163500123Z-1a2b3c4d"])
def test_backup_ids_with_and_without_milliseconds_are_valid(text: str) -> None:
    assert validate_backup_id(text) == text


@pytest.mark.parametrize(
    "text", ["20261123T1635001Z-1a2b3c4d", "20261123T163500Z-1A2B3C4D", "../x", ""]
)
def test_malformed_backup_ids_are_refused(text: str) -> None:
    with pytest.raises(UsageError):
        validate_backup_id(text)
