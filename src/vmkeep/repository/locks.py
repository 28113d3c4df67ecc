"""Repository locks: shared for backups, exclusive for prune, gc and key changes.

A lock is an object ``locks/<random id>`` holding a LockRecord. Stores cannot overwrite, so
refreshing writes a new lock object and then deletes the old one. A lock is *stale* when its
last refresh is older than ``STALE_AFTER`` or when it was taken on this host by a process that
no longer exists; stale locks never block anyone and ``repo unlock`` removes them.

Taking a lock: write ours, then list all locks; if a live conflicting lock is there, delete
ours and raise LockedError naming the holder. Two processes racing for conflicting locks may
both back off; neither ever proceeds wrongly.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace

from vmkeep.domain.errors import LockedError, ObjectNotFoundError, VmkeepError
from vmkeep.domain.tokens import random_hex
from vmkeep.ports import ObjectStore

log = logging.getLogger(__name__)

LOCK_PREFIX = "locks/"
REFRESH_EVERY = 120.0
STALE_AFTER = 30 * 60.0


@dataclass(frozen=True, slots=True)
class LockRecord:
    """Who holds a lock. Times are seconds since the epoch."""

    lock_id: str
    exclusive: bool
    host: str
    pid: int
    created: float
    refreshed: float
    purpose: str


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


@dataclass(frozen=True, slots=True)
class LockEnvironment:
    """Where the clock, this host's name and the liveness check come from."""

    host: str
    pid: int
    now: Callable[[], float]
    alive: Callable[[int], bool] = pid_alive


def is_stale(record: LockRecord, env: LockEnvironment) -> bool:
    if env.now() - record.refreshed > STALE_AFTER:
        return True
    return record.host == env.host and not env.alive(record.pid)


def read_locks(store: ObjectStore) -> list[LockRecord]:
    """Every readable lock; unreadable ones are skipped (they are being replaced or junk)."""
    records = []
    for info in store.list(LOCK_PREFIX):
        try:
            document = json.loads(store.get(info.name))
            records.append(LockRecord(**document))
        except (ObjectNotFoundError, ValueError, TypeError):
            continue
    return records


def remove_locks(store: ObjectStore, env: LockEnvironment, *, all_locks: bool) -> list[LockRecord]:
    """Delete stale locks (or every lock with ``all_locks``); returns what was removed."""
    removed = []
    for record in read_locks(store):
        if all_locks or is_stale(record, env):
            store.delete(LOCK_PREFIX + record.lock_id)
            removed.append(record)
    return removed


class RepositoryLock:
    """A held lock that refreshes itself in a background thread until released."""

    def __init__(self, store: ObjectStore, env: LockEnvironment, exclusive: bool, purpose: str):
        self._store = store
        self._env = env
        self._exclusive = exclusive
        self._purpose = purpose
        self._record: LockRecord | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()

    def acquire(self) -> None:
        """Take the lock or raise LockedError. Nothing is left behind on failure."""
        now = self._env.now()
        self._record = LockRecord(
            lock_id=random_hex(16),
            exclusive=self._exclusive,
            host=self._env.host,
            pid=self._env.pid,
            created=now,
            refreshed=now,
            purpose=self._purpose,
        )
        self._write(self._record)
        for other in read_locks(self._store):
            if other.lock_id == self._record.lock_id:
                continue
            if is_stale(other, self._env):
                if other.host == self._env.host and not self._env.alive(other.pid):
                    # Certainly dead (a kill -9 on this host): tidy it away.
                    self._store.delete(LOCK_PREFIX + other.lock_id)
                continue
            if self._exclusive or other.exclusive:
                self._delete(self._record)
                self._record = None
                kind = "an exclusive" if other.exclusive else "a"
                raise LockedError(
                    f"the repository is locked: {kind} lock for {other.purpose!r} is held by "
                    f"pid {other.pid} on {other.host}; wait for it, or if that process is gone "
                    "run `vmkeep repo unlock`"
                )
        self._thread = threading.Thread(target=self._refresh_loop, name="lock-refresh", daemon=True)
        self._thread.start()

    def _write(self, record: LockRecord) -> None:
        self._store.put(LOCK_PREFIX + record.lock_id, json.dumps(asdict(record)).encode())

    def _delete(self, record: LockRecord) -> None:
        self._store.delete(LOCK_PREFIX + record.lock_id)

    def refresh(self) -> None:
        """Replace our lock object with one carrying the current time."""
        with self._mutex:
            if self._record is None:
                return
            old = self._record
            new = replace(old, lock_id=random_hex(16), refreshed=self._env.now())
            self._write(new)
            self._record = new
            self._delete(old)

    def _refresh_loop(self) -> None:
        while not self._stop.wait(REFRESH_EVERY):
            try:
                self.refresh()
            except VmkeepError as exc:  # keep trying; the lock only goes stale after 30 min
                log.warning("could not refresh the repository lock: %s", exc)

    def release(self) -> None:
        """Stop refreshing and delete the lock. Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._mutex:
            if self._record is not None:
                self._delete(self._record)
                self._record = None


@contextmanager
def locked(
    store: ObjectStore, env: LockEnvironment, *, exclusive: bool, purpose: str
) -> Iterator[RepositoryLock]:
    """Hold a lock for the duration of the block."""
    lock = RepositoryLock(store, env, exclusive, purpose)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()
