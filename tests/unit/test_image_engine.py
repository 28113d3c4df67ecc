"""backup_image/restore_image/check over memory: dedup, zeros, integrity, failure safety."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.fakes import FakeImageIO, MemoryImage, RecordingProgress
from vmkeep.backends.memory import MemoryStore
from vmkeep.domain.errors import IntegrityError, ToolError
from vmkeep.engine.image_backup import (
    ImageBackupRequest,
    ImageRestoreRequest,
    RepoSession,
    backup_image,
    restore_image,
)
from vmkeep.repository.cache import ChunkCache
from vmkeep.repository.check import check_repository
from vmkeep.repository.locks import LockEnvironment
from vmkeep.repository.repo import Identity, InitOptions, init_repository

CHUNK = 64 << 10
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def disk(*pieces: tuple[int, bytes], size: int = 16 * CHUNK) -> bytes:
    data = bytearray(size)
    for offset, content in pieces:
        data[offset : offset + len(content)] = content
    return bytes(data)


@pytest.fixture
def session(tmp_path: Path) -> RepoSession:
    store = MemoryStore()
    repo = init_repository(
        store,
        b"pw",
        InitOptions(chunk_size=CHUNK, scrypt_n=1 << 10),
        now="t",
        who=Identity("h", "u"),
    )
    return RepoSession(
        repo=repo,
        cache=ChunkCache(None, set(), []),
        images=FakeImageIO(),
        progress=RecordingProgress(),
        lock_env=LockEnvironment(host="h", pid=os.getpid(), now=lambda: 1000.0),
        workers=4,
    )


def images(session: RepoSession) -> FakeImageIO:
    assert isinstance(session.images, FakeImageIO)
    return session.images


def store(session: RepoSession) -> MemoryStore:
    assert isinstance(session.repo.store, MemoryStore)
    return session.repo.store


def test_round_trip_is_exact_and_zeros_are_neither_read_nor_stored(session: RepoSession) -> None:
    content = disk((0, os.urandom(CHUNK + 100)), (10 * CHUNK + 7, b"tail data"))
    source = MemoryImage(content)
    images(session).images[Path("/d.qcow2")] = source
    manifest = backup_image(session, ImageBackupRequest(Path("/d.qcow2")), now=NOW, host="h")
    (record,) = manifest.disks
    # Only the chunks holding data were read: 0, 1 and 10.
    assert sorted(offset for offset, _ in source.reads) == [0, CHUNK, 10 * CHUNK]
    assert record.read_bytes == 3 * CHUNK
    assert record.zero_chunks == 13
    assert len([n for n in store(session).objects if n.startswith("data/")]) == 3
    restore_image(session, ImageRestoreRequest(manifest.backup_id, Path("/out")))
    assert images(session).outputs[Path("/out")] == content
    assert not store(session).objects.keys() & {
        n for n in store(session).objects if n.startswith("locks/")
    }


def test_second_backup_of_unchanged_data_stores_nothing(session: RepoSession) -> None:
    images(session).images[Path("/d")] = MemoryImage(disk((0, os.urandom(4 * CHUNK))))
    backup_image(session, ImageBackupRequest(Path("/d")), now=NOW, host="h")
    objects = len(store(session).objects)
    second = backup_image(session, ImageBackupRequest(Path("/d")), now=NOW, host="h")
    assert second.disks[0].new_bytes == 0
    assert second.disks[0].stored_bytes == 0
    assert len(store(session).objects) == objects + 1  # only the new manifest (same index)


def test_last_partial_chunk(session: RepoSession) -> None:
    content = os.urandom(3 * CHUNK + 1234)
    images(session).images[Path("/d")] = MemoryImage(content)
    manifest = backup_image(session, ImageBackupRequest(Path("/d")), now=NOW, host="h")
    restore_image(session, ImageRestoreRequest(manifest.backup_id, Path("/o")))
    assert images(session).outputs[Path("/o")] == content


def test_restore_reserves_the_space_of_each_run_of_data_chunks_first(
    session: RepoSession,
) -> None:
    content = disk((0, os.urandom(2 * CHUNK)), (5 * CHUNK, b"x"), size=6 * CHUNK + 1234)
    content = content[:-1234] + os.urandom(1234)  # chunks 0, 1, 5 and the short 6
    images(session).images[Path("/d")] = MemoryImage(content)
    manifest = backup_image(session, ImageBackupRequest(Path("/d")), now=NOW, host="h")
    restore_image(session, ImageRestoreRequest(manifest.backup_id, Path("/o")))
    assert images(session).outputs[Path("/o")] == content
    assert images(session).reserved[Path("/o")] == [(0, 2 * CHUNK), (5 * CHUNK, CHUNK + 1234)]
    assert images(session).events[Path("/o")] == ["reserve"] * 2 + ["write"] * 4  # first


def test_failed_read_leaves_no_backup_and_no_lock(session: RepoSession) -> None:
    images(session).images[Path("/d")] = MemoryImage(os.urandom(8 * CHUNK), fail_after=3)
    with pytest.raises(ToolError):
        backup_image(session, ImageBackupRequest(Path("/d")), now=NOW, host="h")
    assert session.repo.list_backup_ids() == []
    assert not [n for n in store(session).objects if n.startswith("locks/")]
    assert check_repository(session.repo, RecordingProgress(), read_fraction=1).ok


def test_corrupt_chunk_fails_restore_without_output_and_check_names_it(
    session: RepoSession,
) -> None:
    images(session).images[Path("/d")] = MemoryImage(os.urandom(4 * CHUNK))
    manifest = backup_image(session, ImageBackupRequest(Path("/d")), now=NOW, host="h")
    name = sorted(n for n in store(session).objects if n.startswith("data/"))[1]
    blob = bytearray(store(session).objects[name])
    blob[len(blob) // 2] ^= 0x40
    store(session).objects[name] = bytes(blob)
    with pytest.raises(IntegrityError, match=name.rsplit("/", 1)[-1]):
        restore_image(session, ImageRestoreRequest(manifest.backup_id, Path("/o")))
    assert Path("/o") not in images(session).outputs
    structural = check_repository(session.repo, RecordingProgress())
    assert structural.ok  # the chunk exists; only reading it reveals the damage
    report = check_repository(session.repo, RecordingProgress(), read_fraction=1)
    assert [p.object_name for p in report.problems] == [name]
    assert report.damaged_backups == [manifest.backup_id]


def test_missing_and_truncated_objects_are_named(session: RepoSession) -> None:
    images(session).images[Path("/d")] = MemoryImage(os.urandom(2 * CHUNK))
    first = backup_image(session, ImageBackupRequest(Path("/d"), name="one"), now=NOW, host="h")
    images(session).images[Path("/e")] = MemoryImage(os.urandom(2 * CHUNK))
    second = backup_image(session, ImageBackupRequest(Path("/e"), name="two"), now=NOW, host="h")
    objects = store(session).objects
    chunk = next(n for n in objects if n.startswith("data/"))
    del objects[chunk]
    index = f"indexes/{second.disks[0].index_id[:2]}/{second.disks[0].index_id}"
    objects[index] = objects[index][:40]
    report = check_repository(session.repo, RecordingProgress())
    problems = {p.object_name: p for p in report.problems}
    assert set(problems) == {chunk, index}
    assert problems[index].backups == (second.backup_id,)
    assert problems[chunk].message == "missing"
    assert first.backup_id in report.damaged_backups or second.backup_id in report.damaged_backups
