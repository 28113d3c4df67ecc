"""The local dedup cache: chunk ids known to be in the repository, so a backup does not ask
the store about every chunk (one HEAD per chunk on S3 is slow and costs money).

Kept at ``CACHE_DIR/<repo id>/chunks`` (32-byte ids, concatenated) with ``meta.json``. It is
rebuilt from a listing of ``data/`` when missing, unreadable, or stale. Stale means the
repository's ``gc/`` markers changed since the cache was written: garbage collection writes a
new marker each time it deletes chunks, so a cache can never claim a chunk that GC removed.
``check`` drops chunks it found missing or corrupt with ``forget``, so they are uploaded again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path

from vmkeep.repository.repo import Repository

log = logging.getLogger(__name__)

GC_MARKER_PREFIX = "gc/"
_ID_BYTES = 32


class ChunkCache:
    """A thread-safe set of chunk ids with optional persistence."""

    def __init__(self, path: Path | None, ids: set[bytes], markers: list[str]) -> None:
        self._path = path
        self._ids = ids
        self._markers = markers
        self._lock = threading.Lock()
        self._dirty = False

    @classmethod
    def load(cls, repo: Repository, cache_dir: Path | None) -> ChunkCache:
        """The cache for ``repo``: read from ``cache_dir`` if valid, otherwise rebuilt."""
        markers = sorted(info.name for info in repo.store.list(GC_MARKER_PREFIX))
        path = cache_dir / repo.repo_id if cache_dir is not None else None
        if path is not None:
            ids = _read(path, markers)
            if ids is not None:
                return cls(path, ids, markers)
        log.info("rebuilding the chunk cache from the repository listing")
        ids = {bytes.fromhex(cid) for cid in repo.list_chunks()}
        cache = cls(path, ids, markers)
        cache._dirty = True
        return cache

    def __contains__(self, chunk_id: str) -> bool:
        key = bytes.fromhex(chunk_id)
        with self._lock:
            return key in self._ids

    def has_all(self, chunk_ids: Iterable[str]) -> bool:
        """Whether every one of ``chunk_ids`` is known; one lock for all of them (checking an
        incremental's parent chunk by chunk took a good part of the time before its job)."""
        keys = {bytes.fromhex(cid) for cid in chunk_ids}
        with self._lock:
            return keys <= self._ids

    def __len__(self) -> int:
        with self._lock:
            return len(self._ids)

    def add(self, chunk_id: str) -> None:
        with self._lock:
            self._ids.add(bytes.fromhex(chunk_id))
            self._dirty = True

    def forget(self, chunk_id: str) -> None:
        """Stop trusting ``chunk_id`` (check found it missing or corrupt)."""
        with self._lock:
            self._ids.discard(bytes.fromhex(chunk_id))
            self._dirty = True

    def save(self) -> None:
        """Persist atomically (temp file, fsync, rename). Never raises: a cache that cannot be
        written only costs a rebuild next time."""
        if self._path is None or not self._dirty:
            return
        with self._lock:
            data = b"".join(sorted(self._ids))
            meta = json.dumps({"version": 1, "gc_markers": self._markers}).encode()
            self._dirty = False
        try:
            self._path.mkdir(parents=True, exist_ok=True, mode=0o700)
            _atomic_write(self._path / "chunks", data)
            _atomic_write(self._path / "meta.json", meta)
        except OSError as exc:
            log.warning("could not save the chunk cache in %s: %s", self._path, exc)


def _read(path: Path, markers: list[str]) -> set[bytes] | None:
    try:
        meta = json.loads((path / "meta.json").read_text())
        data = (path / "chunks").read_bytes()
    except (OSError, ValueError):
        return None
    if meta.get("version") != 1 or meta.get("gc_markers") != markers or len(data) % _ID_BYTES:
        return None
    return {data[i : i + _ID_BYTES] for i in range(0, len(data), _ID_BYTES)}


def _atomic_write(path: Path, data: bytes) -> None:
    temp = path.with_name(path.name + ".tmp")
    try:
        with temp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        temp.replace(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
