"""``repo check``: prove the repository is whole, naming every bad object and the backups it
breaks.

Structure (always): every manifest opens and parses, every index it names opens and parses,
every chunk an index names exists. With ``read_fraction > 0`` a share of the chunks is also
downloaded, authenticated, decompressed and re-hashed.

Manifests are listed *before* chunks: a backup running concurrently writes its chunks before
its manifest, so any manifest we see has all its chunks in the later listing.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from vmkeep.domain.errors import (
    IntegrityError,
    ObjectNotFoundError,
    RepositoryError,
    VmkeepError,
)
from vmkeep.ports import Progress
from vmkeep.repository.indexes import DiskIndex
from vmkeep.repository.repo import Repository, chunk_object, index_object, manifest_object


@dataclass(frozen=True, slots=True)
class Problem:
    """One bad object: its name in the store, what is wrong, and the backups it breaks."""

    object_name: str
    message: str
    backups: tuple[str, ...]


@dataclass(slots=True)
class CheckReport:
    backups: int = 0
    indexes: int = 0
    chunks_referenced: int = 0
    chunks_stored: int = 0
    chunks_read: int = 0
    unreferenced_chunks: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def damaged_backups(self) -> list[str]:
        return sorted({b for p in self.problems for b in p.backups})

    @property
    def bad_chunk_ids(self) -> list[str]:
        return [
            p.object_name.rsplit("/", 1)[-1]
            for p in self.problems
            if p.object_name.startswith("data/")
        ]


def check_repository(
    repo: Repository,
    progress: Progress,
    *,
    read_fraction: float = 0.0,
    workers: int = 8,
    choose: Callable[[list[str], int], list[str]] = random.sample,
) -> CheckReport:
    """Check ``repo``; never raises for damage it finds (it reports it), only for failures
    to reach the store at all."""
    report = CheckReport()
    users: dict[str, set[str]] = defaultdict(set)  # chunk id -> backups using it
    progress.step("checking manifests and indexes")
    for backup_id in repo.list_backup_ids():
        report.backups += 1
        try:
            manifest = repo.load_manifest(backup_id)
        except VmkeepError as exc:
            report.problems.append(Problem(manifest_object(backup_id), str(exc), (backup_id,)))
            continue
        for disk in manifest.disks:
            index = _load_index(repo, disk.index_id, backup_id, report)
            if index is not None:
                for chunk_id in index.stored_ids():
                    users[chunk_id].add(backup_id)
    progress.step("listing chunks")
    stored = repo.list_chunks()
    report.chunks_referenced = len(users)
    report.chunks_stored = len(stored)
    report.unreferenced_chunks = len(set(stored) - set(users))
    for chunk_id in sorted(set(users) - set(stored)):
        report.problems.append(
            Problem(chunk_object(chunk_id), "missing", tuple(sorted(users[chunk_id])))
        )
    if read_fraction > 0:
        present = sorted(set(users) & set(stored))
        count = len(present) if read_fraction >= 1 else round(len(present) * read_fraction)
        to_read = present if count >= len(present) else choose(present, max(1, count))
        _read_chunks(repo, to_read, users, report, progress, workers)
    return report


def _load_index(
    repo: Repository, index_id: str, backup_id: str, report: CheckReport
) -> DiskIndex | None:
    try:
        index = repo.load_index(index_id)
    except VmkeepError as exc:
        report.problems.append(Problem(index_object(index_id), str(exc), (backup_id,)))
        return None
    report.indexes += 1
    return index


def _read_chunks(
    repo: Repository,
    chunk_ids: list[str],
    users: dict[str, set[str]],
    report: CheckReport,
    progress: Progress,
    workers: int,
) -> None:
    def verify(chunk_id: str) -> tuple[str, str | None, int]:
        try:
            data = repo.load_chunk(chunk_id)
        except ObjectNotFoundError:
            return chunk_id, "missing", 0
        except (IntegrityError, RepositoryError) as exc:
            return chunk_id, str(exc), 0
        return chunk_id, None, len(data)

    progress.begin("reading chunks", len(chunk_ids), "chunks")
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="check") as pool:
            for chunk_id, error, _size in pool.map(verify, chunk_ids):
                report.chunks_read += 1
                progress.advance(1)
                if error is not None:
                    report.problems.append(
                        Problem(chunk_object(chunk_id), error, tuple(sorted(users[chunk_id])))
                    )
    finally:
        progress.finish()
