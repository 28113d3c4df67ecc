"""Moving one disk between a block device and the repository, in parallel.

Shared by image backups and (later) VM backups: the caller decides which chunks need reading;
this module reads, hashes, deduplicates, seals and stores them with a pool of threads, keeping
at most ``workers`` chunks in memory. hashing (blake3), compression (zstd) and encryption
(AES-GCM) release the GIL, so threads use every core.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vmkeep.domain.errors import IntegrityError
from vmkeep.domain.extents import Extent
from vmkeep.ports import BlockReader, BlockWriter, Progress
from vmkeep.repository.cache import ChunkCache
from vmkeep.repository.indexes import ZERO_CHUNK, DiskIndex, chunk_count
from vmkeep.repository.repo import Repository


@dataclass(frozen=True, slots=True)
class TransferStats:
    """What a disk transfer did; see domain.backup.DiskBackup for the meaning of each."""

    read_bytes: int
    new_bytes: int
    stored_bytes: int
    zero_chunks: int
    seconds: float


@dataclass(frozen=True, slots=True)
class _ChunkResult:
    chunk_id: str
    read: int
    new: int
    stored: int


def _for_each_chunk(
    work: Callable[[int], _ChunkResult],
    numbers: Sequence[int],
    workers: int,
    on_result: Callable[[int, _ChunkResult], None],
) -> None:
    """Run ``work`` over ``numbers`` (taken in order) on ``workers`` threads, each holding
    one chunk at a time; ``on_result`` is called under a lock, in completion order.

    The first exception, in a worker or in the calling thread (Ctrl-C), stops the workers
    from taking more chunks; it propagates once every worker has finished the chunk it is
    on, so nothing touches the reader or the repository after this returns.

    Hand-made rather than a ThreadPoolExecutor: a future, a work item and two condition
    variables per chunk took about a seventh of the time the GIL was held in a full backup.
    """
    pending = iter(numbers)
    lock = threading.Lock()
    failures: list[BaseException] = []

    def run() -> None:
        while True:
            with lock:
                number = None if failures else next(pending, None)
            if number is None:
                return
            try:
                result = work(number)
                with lock:
                    on_result(number, result)
            except BaseException as exc:  # re-raised by the calling thread
                with lock:
                    failures.append(exc)
                return

    threads = [
        threading.Thread(target=run, name=f"chunk-{i}", daemon=True)
        for i in range(max(1, min(workers, len(numbers))))
    ]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    except BaseException as exc:
        with lock:
            failures.append(exc)
        for thread in threads:
            thread.join()
        raise
    if failures:
        raise failures[0]


class BytesReader:
    """A BlockReader over bytes in memory: small files (UEFI variables) stored like disks."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    @property
    def size(self) -> int:
        return len(self._data)

    def extents(self) -> list[Extent]:
        return [Extent(0, len(self._data), zero=False)]

    def pread(self, offset: int, length: int) -> bytes:
        return self._data[offset : offset + length]


def store_disk(
    repo: Repository,
    cache: ChunkCache,
    reader: BlockReader,
    to_read: Sequence[bool],
    progress: Progress,
    label: str,
    *,
    workers: int,
    reused_ids: Sequence[str] | None = None,
) -> tuple[DiskIndex, TransferStats]:
    """Back up the disk behind ``reader`` and return its index (not yet written).

    ``to_read[n]`` says whether chunk ``n`` must be read. Chunks not read take their id from
    ``reused_ids`` (an incremental's parent index) or, without it, are zero chunks. Chunks
    that read as all zeros are recorded as zero chunks, never stored.
    """
    size, chunk_size = reader.size, repo.chunk_size
    count = chunk_count(size, chunk_size)
    if len(to_read) != count or (reused_ids is not None and len(reused_ids) != count):
        raise ValueError("chunk map does not match the disk")
    ids = list(reused_ids) if reused_ids is not None else [ZERO_CHUNK] * count
    zero_block = bytes(chunk_size)
    totals = {"read": 0, "new": 0, "stored": 0}
    started = time.monotonic()

    def length_of(number: int) -> int:
        return min(chunk_size, size - number * chunk_size)

    def work(number: int) -> _ChunkResult:
        length = length_of(number)
        data = reader.pread(number * chunk_size, length)
        if data == (zero_block if length == chunk_size else zero_block[:length]):
            return _ChunkResult(ZERO_CHUNK, length, 0, 0)
        chunk_id = repo.chunk_id(data)
        if chunk_id in cache:
            return _ChunkResult(chunk_id, length, 0, 0)
        stored = repo.store_chunk(chunk_id, data)
        cache.add(chunk_id)
        return _ChunkResult(chunk_id, length, length if stored else 0, stored)

    def on_result(number: int, result: _ChunkResult) -> None:
        ids[number] = result.chunk_id
        totals["read"] += result.read
        totals["new"] += result.new
        totals["stored"] += result.stored
        progress.advance(result.read)

    progress.begin(label, size)
    skipped = [n for n in range(count) if not to_read[n]]
    progress.advance(sum(length_of(n) for n in skipped))
    try:
        _for_each_chunk(work, [n for n in range(count) if to_read[n]], workers, on_result)
    finally:
        progress.finish()
    index = DiskIndex(disk_size=size, chunk_size=chunk_size, chunk_ids=tuple(ids))
    stats = TransferStats(
        read_bytes=totals["read"],
        new_bytes=totals["new"],
        stored_bytes=totals["stored"],
        zero_chunks=sum(1 for cid in ids if cid == ZERO_CHUNK),
        seconds=time.monotonic() - started,
    )
    return index, stats


def restore_disk(
    repo: Repository,
    index: DiskIndex,
    writer: BlockWriter,
    progress: Progress,
    label: str,
    *,
    workers: int,
) -> None:
    """Write every non-zero chunk of ``index`` to ``writer``; zero chunks stay holes. The
    space for them is reserved first (``BlockWriter.reserve``), which makes direct writes
    faster.

    Each chunk is authenticated and re-hashed before it is written, so a corrupt repository
    raises IntegrityError rather than producing wrong bytes (the writer then discards the
    partial image).
    """
    numbers = [n for n, cid in enumerate(index.chunk_ids) if cid != ZERO_CHUNK]
    for first, last in _runs_of_consecutive(numbers):
        start = first * index.chunk_size
        writer.reserve(start, (last - first) * index.chunk_size + index.chunk_length(last))
    progress.begin(label, index.disk_size)
    progress.advance(index.disk_size - sum(index.chunk_length(n) for n in numbers))

    def work(number: int) -> _ChunkResult:
        chunk_id = index.chunk_ids[number]
        data = repo.load_chunk(chunk_id)
        if len(data) != index.chunk_length(number):
            raise IntegrityError(f"chunk {chunk_id}: wrong length for its place in the disk")
        writer.pwrite(number * index.chunk_size, data)
        return _ChunkResult(chunk_id, len(data), 0, 0)

    try:
        _for_each_chunk(work, numbers, workers, lambda _n, r: progress.advance(r.read))
    finally:
        progress.finish()


def _runs_of_consecutive(numbers: Sequence[int]) -> list[tuple[int, int]]:
    """(first, last) of each run of consecutive numbers in the sorted ``numbers``."""
    runs: list[tuple[int, int]] = []
    for number in numbers:
        if runs and runs[-1][1] == number - 1:
            runs[-1] = (runs[-1][0], number)
        else:
            runs.append((number, number))
    return runs
