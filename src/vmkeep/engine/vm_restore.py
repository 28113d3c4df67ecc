"""Restoring VM backups: disks to a directory, or a whole new VM defined from the saved XML.

Each disk is restored thin and verified chunk by chunk (disk_transfer.restore_disk) into a
temporary file renamed into place at the end. If anything fails, the disks this restore already
finished are removed again: a failed restore leaves nothing behind. Nothing existing is ever
overwritten without ``force``, and a running VM never.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from vmkeep.domain.backup import BackupId, BackupManifest, DiskBackup
from vmkeep.domain.errors import (
    AlreadyExistsError,
    NotFoundError,
    UsageError,
    VmkeepError,
    VmNotFoundError,
)
from vmkeep.engine.disk_transfer import restore_disk
from vmkeep.engine.image_backup import RepoSession
from vmkeep.engine.vm_backup_model import NVRAM, TPM_PREFIX
from vmkeep.ports import Hypervisor
from vmkeep.repository.indexes import ZERO_CHUNK
from vmkeep.repository.locks import locked

RESTORE_FORMATS = ("qcow2", "raw", "vmdk", "vhdx")
DOMAIN_XML = "domain.xml"


@dataclass(frozen=True, slots=True)
class VmRestoreRequest:
    """``restore BACKUP_ID (--to DIR | --as NEWVM) [--disk vda] [--format F] [--start]``.

    ``target_dir`` is where the disks go (required unless ``new_name`` is given, in which case
    the caller supplies a default)."""

    backup_id: BackupId
    target_dir: Path
    new_name: str | None = None
    disks: tuple[str, ...] = ()
    image_format: str = "qcow2"
    start: bool = False
    force: bool = False


@dataclass(frozen=True, slots=True)
class RestoredDisk:
    name: str
    path: str
    size: int


@dataclass(frozen=True, slots=True)
class VmRestoreResult:
    backup_id: BackupId
    vm: str | None
    disks: tuple[RestoredDisk, ...]
    domain_xml: str | None
    started: bool


def _selected(manifest: BackupManifest, wanted: tuple[str, ...]) -> list[DiskBackup]:
    disks = [d for d in manifest.disks if d.mode != "file"]
    if not wanted:
        return disks
    names = {d.name for d in disks}
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise NotFoundError(
            f"backup {manifest.backup_id} has no disk {', '.join(unknown)} "
            f"(it has {', '.join(sorted(names))})"
        )
    return [d for d in disks if d.name in wanted]


def _check_new_vm(hypervisor: Hypervisor, request: VmRestoreRequest) -> None:
    if request.new_name is None:
        if request.start:
            raise UsageError("--start needs --as NEWVM")
        return
    try:
        existing = hypervisor.get_vm(request.new_name)
    except VmNotFoundError:
        return
    if existing.state.is_active:
        raise AlreadyExistsError(f"a VM named {request.new_name!r} exists and is running")
    if not request.force:
        raise AlreadyExistsError(
            f"a VM named {request.new_name!r} exists (use --force to replace its definition)"
        )
    hypervisor.undefine_vm(request.new_name)


def _restore_files(
    session: RepoSession, manifest: BackupManifest, request: VmRestoreRequest, done: list[Path]
) -> tuple[str | None, dict[str, str]]:
    """Write the small files stored with the VM (UEFI variables, TPM state) next to its
    disks; returns the restored NVRAM path, if any, and the TPM state files (record name to
    path). Each is verified like a disk chunk."""
    nvram = None
    tpm: dict[str, str] = {}
    for record in manifest.disks:
        if record.mode != "file":
            continue
        target = request.target_dir / Path(record.source).name
        if target.exists() and not request.force:
            raise AlreadyExistsError(f"{target} exists (use --force to overwrite it)")
        index = session.repo.load_index(record.index_id)
        data = b"".join(
            bytes(index.chunk_length(n)) if cid == ZERO_CHUNK else session.repo.load_chunk(cid)
            for n, cid in enumerate(index.chunk_ids)
        )
        # UEFI variables and TPM state are secrets (the TPM's seeds unseal disk keys):
        # readable by root only, like libvirt keeps them.
        target.unlink(missing_ok=True)
        descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        done.append(target)
        if record.name == NVRAM:
            nvram = str(target)
        elif record.name.startswith(TPM_PREFIX):
            tpm[record.name] = str(target)
    return nvram, tpm


def restore_vm(
    session: RepoSession, hypervisor: Hypervisor, request: VmRestoreRequest
) -> VmRestoreResult:
    """Restore the disks of a backup and, with ``new_name``, define (and start) a new VM."""
    if request.image_format not in RESTORE_FORMATS:
        raise UsageError(f"--format must be one of {', '.join(RESTORE_FORMATS)}")
    repo = session.repo
    with locked(repo.store, session.lock_env, exclusive=False, purpose="restore"):
        manifest = repo.load_manifest(request.backup_id)
        disks = _selected(manifest, request.disks)
        if request.new_name is not None and "domain.xml" not in manifest.config_files:
            raise UsageError(f"backup {manifest.backup_id} holds no VM definition: use --to")
        targets = {d.name: request.target_dir / f"{d.name}.{request.image_format}" for d in disks}
        xml_path = request.target_dir / DOMAIN_XML
        for path in [*targets.values(), xml_path]:
            if path.exists() and not request.force:
                raise AlreadyExistsError(f"{path} exists (use --force to overwrite it)")
        _check_new_vm(hypervisor, request)
        request.target_dir.mkdir(parents=True, exist_ok=True)
        done: list[Path] = []
        try:
            for disk in disks:
                index = repo.load_index(disk.index_id)
                with session.images.create_writer(
                    targets[disk.name],
                    index.disk_size,
                    request.image_format,
                    overwrite=request.force,
                    data_bytes=index.data_bytes(),
                ) as writer:
                    restore_disk(
                        repo, index, writer, session.progress, disk.name, workers=session.workers
                    )
                done.append(targets[disk.name])
            nvram, tpm_files = _restore_files(session, manifest, request, done)
            domain_xml = manifest.config_files.get("domain.xml")
            if domain_xml is not None:
                xml_path.write_text(domain_xml)
                done.append(xml_path)
            if request.new_name is not None and domain_xml is not None:
                hypervisor.define_restored_vm(
                    domain_xml,
                    request.new_name,
                    {name: (str(path), request.image_format) for name, path in targets.items()},
                    str(request.target_dir),
                    nvram,
                    tpm_files,
                )
        except BaseException:
            for path in done:
                with contextlib.suppress(OSError):
                    path.unlink()
            raise
    started = False
    if request.new_name is not None and request.start:
        try:
            hypervisor.start_vm(request.new_name)
            started = True
        except VmkeepError as exc:
            raise VmkeepError(
                f"restored and defined {request.new_name!r}, but it did not start: {exc}"
            ) from exc
    return VmRestoreResult(
        backup_id=manifest.backup_id,
        vm=request.new_name,
        disks=tuple(RestoredDisk(d.name, str(targets[d.name]), d.size) for d in disks),
        domain_xml=str(xml_path) if "domain.xml" in manifest.config_files else None,
        started=started,
    )
