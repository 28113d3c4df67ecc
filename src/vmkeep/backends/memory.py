"""ObjectStore in memory, for fast tests. Thread-safe."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from vmkeep.domain.errors import ObjectNotFoundError
from vmkeep.domain.objects import ObjectInfo, validate_object_name


class MemoryStore:
    """Objects in a dict; ``objects`` is exposed so tests can corrupt them on purpose."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self._lock = threading.Lock()

    @property
    def location(self) -> str:
        return "memory:"

    def put(self, name: str, data: bytes | bytearray) -> bool:
        validate_object_name(name)
        with self._lock:
            if name in self.objects:
                return False
            self.objects[name] = bytes(data)
            return True

    def get(self, name: str) -> bytes:
        validate_object_name(name)
        with self._lock:
            try:
                return self.objects[name]
            except KeyError:
                raise ObjectNotFoundError(f"{name} not found in {self.location}") from None

    def exists(self, name: str) -> bool:
        validate_object_name(name)
        with self._lock:
            return name in self.objects

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        with self._lock:
            found = [ObjectInfo(n, len(d)) for n, d in self.objects.items() if n.startswith(prefix)]
        yield from found

    def delete(self, name: str) -> None:
        validate_object_name(name)
        with self._lock:
            self.objects.pop(name, None)

    def sync(self) -> None:
        """Nothing to flush in memory."""
