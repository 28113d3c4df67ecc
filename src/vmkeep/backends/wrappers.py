"""Behaviour around any ObjectStore: retry with backoff, and an upload rate limit.

Wrappers implement ObjectStore themselves, so they stack: ``RateLimitedStore(RetryingStore(s3))``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from vmkeep.domain.errors import StoreTransientError
from vmkeep.domain.objects import ObjectInfo
from vmkeep.ports import ObjectStore

log = logging.getLogger(__name__)
_T = TypeVar("_T")


class RetryingStore:
    """Retries StoreTransientError with exponential backoff and jitter.

    ``put`` stays correct when retried: if an earlier attempt did create the object before the
    connection dropped, the retry sees it exists and returns False, which callers treat as
    success (objects are content-addressed or uniquely named).
    """

    def __init__(
        self,
        inner: ObjectStore,
        attempts: int = 6,
        base_delay: float = 0.5,
        max_delay: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.inner = inner
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._sleep = sleep

    @property
    def location(self) -> str:
        return self.inner.location

    def _retry(self, what: str, call: Callable[[], _T]) -> _T:
        for attempt in range(1, self.attempts + 1):
            try:
                return call()
            except StoreTransientError as exc:
                if attempt == self.attempts:
                    raise
                delay = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
                delay *= 0.5 + random.random() / 2  # noqa: S311 - jitter, not security
                log.warning(
                    "%s failed (%s); retry %d/%d in %.1f s",
                    what,
                    exc,
                    attempt,
                    self.attempts - 1,
                    delay,
                )
                self._sleep(delay)
        raise AssertionError("unreachable")

    def put(self, name: str, data: bytes | bytearray) -> bool:
        return self._retry(f"put {name}", lambda: self.inner.put(name, data))

    def get(self, name: str) -> bytes:
        return self._retry(f"get {name}", lambda: self.inner.get(name))

    def exists(self, name: str) -> bool:
        return self._retry(f"exists {name}", lambda: self.inner.exists(name))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        # Listing is retried as a whole: a half-read listing is not worth resuming.
        return iter(self._retry(f"list {prefix}", lambda: list(self.inner.list(prefix))))

    def delete(self, name: str) -> None:
        self._retry(f"delete {name}", lambda: self.inner.delete(name))

    def sync(self) -> None:
        self._retry("sync", self.inner.sync)


class RateLimitedStore:
    """Caps upload bandwidth (``put`` bytes per second) across all threads: a token bucket
    with one second of burst."""

    def __init__(
        self,
        inner: ObjectStore,
        bytes_per_second: int,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if bytes_per_second <= 0:
            raise ValueError("bytes_per_second must be positive")
        self.inner = inner
        self.rate = bytes_per_second
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = float(bytes_per_second)
        self._last = clock()

    @property
    def location(self) -> str:
        return self.inner.location

    def _take(self, amount: int) -> None:
        with self._lock:
            now = self._clock()
            self._tokens = min(float(self.rate), self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= amount
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)

    def put(self, name: str, data: bytes | bytearray) -> bool:
        self._take(len(data))
        return self.inner.put(name, data)

    def get(self, name: str) -> bytes:
        return self.inner.get(name)

    def exists(self, name: str) -> bool:
        return self.inner.exists(name)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def delete(self, name: str) -> None:
        self.inner.delete(name)

    def sync(self) -> None:
        self.inner.sync()
