"""``repo stats``: how much the repository holds and how well dedup and compression work."""

from __future__ import annotations

from dataclasses import dataclass

from vmkeep.domain.errors import VmkeepError
from vmkeep.repository.indexes import ZERO_CHUNK
from vmkeep.repository.repo import INDEX_PREFIX, Repository


@dataclass(frozen=True, slots=True)
class RepoStats:
    """Sizes in bytes.

    ``logical_bytes``: sum of the virtual sizes of every disk of every backup.
    ``data_bytes``: the non-zero part of that (what restores write).
    ``unique_bytes``: plaintext of the distinct chunks those backups use.
    ``stored_bytes``: what the repository takes in the store, all objects included.
    ``dedup_ratio`` = data / unique; ``compression_ratio`` = unique / stored chunk bytes.
    """

    backups: int
    chunks: int
    indexes: int
    logical_bytes: int
    data_bytes: int
    unique_bytes: int
    stored_chunk_bytes: int
    stored_bytes: int
    dedup_ratio: float
    compression_ratio: float
    unreadable_backups: int


def repository_stats(repo: Repository) -> RepoStats:
    """Compute stats by reading every manifest and index (not the chunks)."""
    all_objects = list(repo.store.list(""))
    chunk_sizes = repo.list_chunks()
    logical = data = 0
    unique: dict[str, int] = {}
    backups = unreadable = 0
    for backup_id in repo.list_backup_ids():
        backups += 1
        try:
            manifest = repo.load_manifest(backup_id)
            indexes = [repo.load_index(d.index_id) for d in manifest.disks]
        except VmkeepError:
            unreadable += 1
            continue
        for index in indexes:
            logical += index.disk_size
            for number, chunk_id in enumerate(index.chunk_ids):
                if chunk_id == ZERO_CHUNK:
                    continue
                length = index.chunk_length(number)
                data += length
                unique[chunk_id] = length
    unique_bytes = sum(unique.values())
    stored_chunk_bytes = sum(chunk_sizes.get(cid, 0) for cid in unique)
    return RepoStats(
        backups=backups,
        chunks=len(chunk_sizes),
        indexes=sum(1 for o in all_objects if o.name.startswith(INDEX_PREFIX)),
        logical_bytes=logical,
        data_bytes=data,
        unique_bytes=unique_bytes,
        stored_chunk_bytes=stored_chunk_bytes,
        stored_bytes=sum(o.size for o in all_objects),
        dedup_ratio=round(data / unique_bytes, 3) if unique_bytes else 1.0,
        compression_ratio=round(unique_bytes / stored_chunk_bytes, 3)
        if stored_chunk_bytes
        else 1.0,
        unreadable_backups=unreadable,
    )
