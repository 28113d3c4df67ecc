"""Backups as values: what a manifest records about a backup and each of its disks."""

from __future__ import annotations

from dataclasses import dataclass, field

BackupId = str
"""``YYYYMMDDTHHMMSSZ-<8 hex>``: sorts by creation time, unique across hosts."""


@dataclass(frozen=True, slots=True)
class DiskBackup:
    """One disk in a backup. ``index_id`` names the disk index listing its chunks.

    Byte counts: ``size`` is the disk's virtual size; ``read_bytes`` what was read from it
    (holes are not read); ``new_bytes`` the plaintext of chunks the repository did not have;
    ``stored_bytes`` what those new chunks take in the repository after compression and
    encryption.
    """

    name: str
    size: int
    chunk_size: int
    index_id: str
    source: str = ""
    source_format: str = ""
    read_bytes: int = 0
    new_bytes: int = 0
    stored_bytes: int = 0
    zero_chunks: int = 0
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class BackupManifest:
    """A complete backup. Written last: a backup exists exactly when its manifest does.

    ``kind`` is ``image`` for ``backup-image``, later ``full``/``incremental`` for VMs.
    ``config_files`` holds small text files stored with the backup (the domain XML, ...).
    """

    backup_id: BackupId
    kind: str
    created: str
    host: str
    vm: str | None
    disks: tuple[DiskBackup, ...]
    parent: BackupId | None = None
    tags: tuple[str, ...] = ()
    config_files: dict[str, str] = field(default_factory=dict)
    vmkeep_version: str = ""

    @property
    def size(self) -> int:
        return sum(d.size for d in self.disks)
