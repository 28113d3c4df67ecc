"""Backing up and restoring disk image files that no VM is using (``backup-image`` and
``restore-image``): the repository's use without libvirt, and the base VM backups build on."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from vmkeep import __version__
from vmkeep.domain.backup import BackupId, BackupManifest, DiskBackup
from vmkeep.domain.errors import NotFoundError, UsageError
from vmkeep.domain.extents import data_chunks
from vmkeep.domain.tokens import random_hex
from vmkeep.engine.disk_transfer import restore_disk, store_disk
from vmkeep.ports import ImageIO, Progress
from vmkeep.repository.cache import ChunkCache
from vmkeep.repository.locks import LockEnvironment, locked
from vmkeep.repository.manifests import new_backup_id
from vmkeep.repository.repo import Repository

RESTORE_FORMATS = ("qcow2", "raw")


@dataclass(frozen=True, slots=True)
class RepoSession:
    """An opened repository with what every use case around it needs."""

    repo: Repository
    cache: ChunkCache
    images: ImageIO
    progress: Progress
    lock_env: LockEnvironment
    workers: int = 8


@dataclass(frozen=True, slots=True)
class ImageBackupRequest:
    """``backup-image FILE [--name NAME] [--tag T]``."""

    source: Path
    name: str | None = None
    tags: tuple[str, ...] = ()


def backup_image(
    session: RepoSession, request: ImageBackupRequest, *, now: datetime, host: str
) -> BackupManifest:
    """Back up one image file. The backup becomes visible only when its manifest is written,
    after every chunk and the index; a failure or kill before that leaves no backup."""
    source = request.source
    name = request.name or source.name
    repo = session.repo
    with locked(repo.store, session.lock_env, exclusive=False, purpose=f"backup-image {name}"):
        session.progress.step(f"reading {source}")
        with session.images.open_reader(source) as reader:
            to_read = data_chunks(reader.extents(), reader.size, repo.chunk_size)
            index, stats = store_disk(
                repo,
                session.cache,
                reader,
                to_read,
                session.progress,
                name,
                workers=session.workers,
            )
            image_size = reader.size
        index_id = repo.write_index(index)
        manifest = BackupManifest(
            backup_id=new_backup_id(now, random_hex(4)),
            kind="image",
            created=now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            host=host,
            vm=None,
            disks=(
                DiskBackup(
                    name=name,
                    size=image_size,
                    chunk_size=repo.chunk_size,
                    index_id=index_id,
                    source=str(source),
                    read_bytes=stats.read_bytes,
                    new_bytes=stats.new_bytes,
                    stored_bytes=stats.stored_bytes,
                    zero_chunks=stats.zero_chunks,
                    seconds=round(stats.seconds, 3),
                ),
            ),
            tags=request.tags,
            vmkeep_version=__version__,
        )
        repo.write_manifest(manifest)
        session.cache.save()
    return manifest


@dataclass(frozen=True, slots=True)
class ImageRestoreRequest:
    """``restore-image BACKUP_ID --to FILE [--format F] [--disk NAME] [--force]``."""

    backup_id: BackupId
    target: Path
    image_format: str = "qcow2"
    disk: str | None = None
    force: bool = False


def restore_image(session: RepoSession, request: ImageRestoreRequest) -> DiskBackup:
    """Restore one disk of a backup into a new thin image, bit-exact.

    The image appears at the target path only when every chunk was verified and written; on
    any failure (corrupt chunk, full disk) nothing is left there. Never overwrites without
    ``force``.
    """
    if request.image_format not in RESTORE_FORMATS:
        raise UsageError(f"--format must be one of {', '.join(RESTORE_FORMATS)}")
    repo = session.repo
    with locked(repo.store, session.lock_env, exclusive=False, purpose="restore-image"):
        manifest = repo.load_manifest(request.backup_id)
        disk = _pick_disk(manifest, request.disk)
        index = repo.load_index(disk.index_id)
        session.progress.step(f"restoring {disk.name} of {manifest.backup_id} to {request.target}")
        with session.images.create_writer(
            request.target,
            index.disk_size,
            request.image_format,
            overwrite=request.force,
            data_bytes=index.data_bytes(),
        ) as writer:
            restore_disk(repo, index, writer, session.progress, disk.name, workers=session.workers)
    return disk


def _pick_disk(manifest: BackupManifest, wanted: str | None) -> DiskBackup:
    if wanted is None:
        if len(manifest.disks) != 1:
            names = ", ".join(d.name for d in manifest.disks)
            raise UsageError(
                f"backup {manifest.backup_id} has several disks ({names}): pick one with --disk"
            )
        return manifest.disks[0]
    for disk in manifest.disks:
        if disk.name == wanted:
            return disk
    raise NotFoundError(f"backup {manifest.backup_id} has no disk {wanted!r}")
