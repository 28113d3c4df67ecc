"""Repository locks: conflicts, staleness, refresh, unlock."""

from __future__ import annotations

import pytest

from vmkeep.backends.memory import MemoryStore
from vmkeep.domain.errors import LockedError
from vmkeep.repository.locks import (
    STALE_AFTER,
    LockEnvironment,
    RepositoryLock,
    locked,
    read_locks,
    remove_locks,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def env(
    clock: Clock, host: str = "h1", pid: int = 100, dead: frozenset[int] = frozenset()
) -> LockEnvironment:
    return LockEnvironment(host=host, pid=pid, now=clock, alive=lambda p: p not in dead)


def test_shared_locks_coexist_and_exclusive_waits() -> None:
    store, clock = MemoryStore(), Clock()
    with locked(store, env(clock, pid=1), exclusive=False, purpose="backup a"):
        with locked(store, env(clock, pid=2), exclusive=False, purpose="backup b"):
            assert len(read_locks(store)) == 2
            with pytest.raises(LockedError, match="backup"):
                RepositoryLock(store, env(clock, pid=3), True, "prune").acquire()
        assert len(read_locks(store)) == 1  # the refused exclusive left nothing behind
    assert read_locks(store) == []


def test_exclusive_blocks_everyone() -> None:
    store, clock = MemoryStore(), Clock()
    with locked(store, env(clock, pid=1), exclusive=True, purpose="gc"):
        for exclusive in (False, True):
            with pytest.raises(LockedError, match=r"exclusive lock for 'gc'.*pid 1 on h1"):
                RepositoryLock(store, env(clock, pid=2), exclusive, "backup").acquire()


def test_lock_of_dead_process_on_this_host_is_stale() -> None:
    store, clock = MemoryStore(), Clock()
    RepositoryLock(store, env(clock, pid=1), True, "killed -9").acquire()  # never released
    with locked(store, env(clock, pid=2, dead=frozenset({1})), exclusive=True, purpose="next"):
        pass
    assert read_locks(store) == []  # the dead process's lock was tidied away
    RepositoryLock(store, env(clock, host="h2", pid=1), True, "other host").acquire()
    # On another host the pid means nothing: it blocks until it expires.
    with pytest.raises(LockedError):
        RepositoryLock(store, env(clock, host="h2", pid=2), True, "x").acquire()
    clock.now += STALE_AFTER + 1
    with locked(store, env(clock, host="h2", pid=2), exclusive=True, purpose="later"):
        pass


def test_refresh_replaces_the_lock_object() -> None:
    store, clock = MemoryStore(), Clock()
    lock = RepositoryLock(store, env(clock), False, "backup")
    lock.acquire()
    (before,) = read_locks(store)
    clock.now += 60
    lock.refresh()
    (after,) = read_locks(store)
    assert after.lock_id != before.lock_id
    assert after.refreshed == before.refreshed + 60
    assert after.created == before.created
    lock.release()
    lock.release()  # idempotent
    assert read_locks(store) == []


def test_unlock_removes_only_stale_unless_all() -> None:
    store, clock = MemoryStore(), Clock()
    RepositoryLock(store, env(clock, pid=1), False, "dead").acquire()
    RepositoryLock(store, env(clock, pid=2), False, "alive").acquire()
    removed = remove_locks(store, env(clock, pid=9, dead=frozenset({1})), all_locks=False)
    assert [r.purpose for r in removed] == ["dead"]
    assert [r.purpose for r in read_locks(store)] == ["alive"]
    remove_locks(store, env(clock, pid=9), all_locks=True)
    assert read_locks(store) == []
