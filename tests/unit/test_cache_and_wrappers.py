"""The dedup cache's trust rules, and the retry and rate-limit wrappers."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmkeep.backends.memory import MemoryStore
from vmkeep.backends.wrappers import RateLimitedStore, RetryingStore
from vmkeep.domain.errors import ObjectNotFoundError, StoreTransientError
from vmkeep.repository.cache import ChunkCache
from vmkeep.repository.repo import Identity, InitOptions, Repository, init_repository


def make_repo() -> Repository:
    return init_repository(
        MemoryStore(),
        None,
        InitOptions(encryption="none", chunk_size=4096),
        now="t",
        who=Identity("h", "u"),
    )


def test_cache_is_rebuilt_then_reused_then_invalidated_by_gc(tmp_path: Path) -> None:
    repo = make_repo()
    cid = repo.chunk_id(b"x" * 10)
    repo.store_chunk(cid, b"x" * 10)
    cache = ChunkCache.load(repo, tmp_path)
    assert cid in cache  # rebuilt from the listing
    other = "ab" * 32
    cache.add(other)  # pretend we stored it
    cache.save()
    assert other in ChunkCache.load(repo, tmp_path)  # trusted from disk, not re-listed
    repo.store.put("gc/20261123T000000Z", b"")  # garbage collection ran somewhere
    assert other not in ChunkCache.load(repo, tmp_path)  # stale: rebuilt from the store


def test_forgotten_chunks_are_not_trusted(tmp_path: Path) -> None:
    repo = make_repo()
    cid = repo.chunk_id(b"y")
    repo.store_chunk(cid, b"y")
    cache = ChunkCache.load(repo, tmp_path)
    cache.forget(cid)
    cache.save()
    assert cid not in ChunkCache.load(repo, tmp_path)


def test_has_all_needs_every_id() -> None:
    cache = ChunkCache(None, {bytes.fromhex("ab" * 32), bytes.fromhex("cd" * 32)}, [])
    assert cache.has_all(["ab" * 32, "cd" * 32])
    assert cache.has_all([])
    assert not cache.has_all(["ab" * 32, "ef" * 32])
    cache.forget("cd" * 32)
    assert not cache.has_all(["cd" * 32])


def test_corrupt_cache_file_is_rebuilt(tmp_path: Path) -> None:
    repo = make_repo()
    cache = ChunkCache.load(repo, tmp_path)
    cache.add("cd" * 32)
    cache.save()
    (tmp_path / repo.repo_id / "chunks").write_bytes(b"short")
    assert "cd" * 32 not in ChunkCache.load(repo, tmp_path)


class Flaky(MemoryStore):
    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.calls = 0

    def put(self, name: str, data: bytes) -> bool:
        self.calls += 1
        if self.calls <= self.failures:
            raise StoreTransientError("503 SlowDown")
        return super().put(name, data)


def test_retrying_store_retries_transient_errors_only() -> None:
    sleeps: list[float] = []
    inner = Flaky(failures=3)
    store = RetryingStore(inner, attempts=5, base_delay=1, sleep=sleeps.append)
    assert store.put("a", b"1") is True
    assert inner.calls == 4
    assert len(sleeps) == 3 and sleeps[0] <= sleeps[1] * 2 and all(s > 0 for s in sleeps)
    with pytest.raises(ObjectNotFoundError):
        store.get("missing")  # not transient: no retry
    assert len(sleeps) == 3
    hopeless = RetryingStore(Flaky(failures=99), attempts=3, sleep=sleeps.append)
    with pytest.raises(StoreTransientError):
        hopeless.put("b", b"2")


def test_rate_limit_sleeps_in_proportion() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    store = RateLimitedStore(MemoryStore(), 1000, clock=lambda: now[0], sleep=sleep)
    for i in range(5):
        store.put(f"o{i}", b"x" * 1000)
    # One second of burst, then one second per 1000 bytes.
    assert sum(slept) == pytest.approx(4.0)
