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
    mode: str = "full"
    """``full`` (every allocated chunk read) or ``incremental`` (only dirty chunks read)."""


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
    vm_uuid: str | None = None
    checkpoint: str | None = None
    """The libvirt checkpoint taken with this backup: the next incremental starts from it."""
    quiesced: bool = False
    warnings: tuple[str, ...] = ()
    reason: str | None = None
    """Why a full backup was taken when an incremental was possible in principle."""
    group: str | None = None

    @property
    def size(self) -> int:
        return sum(d.size for d in self.disks)


@dataclass(frozen=True, slots=True)
class DiskJob:
    """One disk in a hypervisor backup job: its target and whether to read it incrementally
    (only changes since the job's ``incremental_from`` checkpoint) or in full."""

    target: str
    incremental: bool
    with_checkpoint: bool = True
    """Whether the new checkpoint tracks this disk (qcow2 only: raw disks have no bitmaps)."""


@dataclass(frozen=True, slots=True)
class BackupJobRequest:
    """A pull-mode backup of one running VM. ``workdir`` holds the job's NBD socket and
    scratch files; it is created by the hypervisor driver and removed when the job ends."""

    vm: str
    disks: tuple[DiskJob, ...]
    checkpoint: str
    incremental_from: str | None
    workdir: str
