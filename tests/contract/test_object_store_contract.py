"""One contract, every ObjectStore. The S3 variant runs against a real Ceph RADOS Gateway on
loopback, started by the ``s3_store_factory`` fixture (tests/s3_server.py)."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vmkeep.backends.local import LocalStore
from vmkeep.backends.memory import MemoryStore
from vmkeep.backends.wrappers import RateLimitedStore, RetryingStore
from vmkeep.domain.errors import ObjectNotFoundError, UsageError
from vmkeep.ports import ObjectStore

STORES = ["memory", "local", "retrying-memory", "rate-limited-local", "s3"]


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    kind = request.param
    if kind == "memory":
        yield MemoryStore()
    elif kind == "local":
        yield LocalStore.create(tmp_path / "repo")
    elif kind == "retrying-memory":
        yield RetryingStore(MemoryStore(), sleep=lambda _s: None)
    elif kind == "rate-limited-local":
        yield RateLimitedStore(LocalStore.create(tmp_path / "repo"), 1 << 30)
    else:
        factory: Callable[[], ObjectStore] = request.getfixturevalue("s3_store_factory")
        yield factory()


def test_put_get_roundtrip(store: ObjectStore) -> None:
    assert store.put("data/ab/abcdef", b"hello") is True
    assert store.get("data/ab/abcdef") == b"hello"
    assert store.exists("data/ab/abcdef")
    assert not store.exists("data/ab/abcdee")


def test_put_never_overwrites(store: ObjectStore) -> None:
    assert store.put("config", b"first") is True
    assert store.put("config", b"second") is False
    assert store.get("config") == b"first"


def test_empty_and_large_objects(store: ObjectStore) -> None:
    big = bytes(range(256)) * (5 * 4096 + 7)  # a little over 5 MiB: multipart territory
    store.put("empty", b"")
    store.put("big", big)
    assert store.get("empty") == b""
    assert store.get("big") == big


def test_missing_object(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFoundError):
        store.get("data/00/missing")


def test_list_by_prefix_with_sizes(store: ObjectStore) -> None:
    store.put("data/aa/aa01", b"1")
    store.put("data/ab/ab02", b"22")
    store.put("indexes/ab03", b"333")
    store.put("database", b"4444")
    assert {(o.name, o.size) for o in store.list("data/")} == {
        ("data/aa/aa01", 1),
        ("data/ab/ab02", 2),
    }
    assert {o.name for o in store.list("data/ab")} == {"data/ab/ab02"}
    assert {o.name for o in store.list("")} == {
        "data/aa/aa01",
        "data/ab/ab02",
        "indexes/ab03",
        "database",
    }
    assert list(store.list("nothing/")) == []


def test_delete_is_idempotent(store: ObjectStore) -> None:
    store.put("locks/one", b"x")
    store.delete("locks/one")
    store.delete("locks/one")
    assert not store.exists("locks/one")
    assert store.put("locks/one", b"y") is True  # the name can be used again


@pytest.mark.parametrize("name", ["", "/abs", "a//b", "../up", "a/../b", "a/./b", "sp ace", "a\\b"])
def test_unsafe_names_are_refused(store: ObjectStore, name: str) -> None:
    with pytest.raises(UsageError):
        store.put(name, b"x")


def test_concurrent_creates_of_one_name_have_one_winner(store: ObjectStore) -> None:
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: store.put("race", f"writer {i}".encode()), range(8)))
    assert results.count(True) == 1
    assert store.get("race") == f"writer {results.index(True)}".encode()


def test_sync_keeps_everything_readable(store: ObjectStore) -> None:
    store.put("data/aa/aa", b"chunk")
    store.sync()
    store.sync()  # idempotent
    assert store.get("data/aa/aa") == b"chunk"
