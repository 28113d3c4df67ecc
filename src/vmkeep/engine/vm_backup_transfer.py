"""Reading a VM's disks (and small files such as its UEFI variables) into the repository:
full, or incremental from the parent backup's index and the export's dirty ranges."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from vmkeep.domain.backup import DiskBackup
from vmkeep.domain.chain import ChainPlan, DiskFacts
from vmkeep.domain.errors import HypervisorError, ToolError
from vmkeep.domain.extents import chunks_touched, data_chunks
from vmkeep.engine.disk_transfer import BytesReader, store_disk
from vmkeep.engine.vm_backup_model import (
    NVRAM,
    TPM_PREFIX,
    DiskOutcome,
    Prepared,
    VmBackupDeps,
)
from vmkeep.ports import ExportReader
from vmkeep.repository.indexes import ZERO_CHUNK, DiskIndex, chunk_count

log = logging.getLogger(__name__)


def transfer_or_fall_back(deps: VmBackupDeps, item: Prepared) -> dict[str, DiskOutcome]:
    """Transfer; for a shut-off VM whose bitmap cannot be used (QEMU died uncleanly and left
    it inconsistent), start over as a full backup. Chunks already stored are not re-sent."""
    try:
        return _transfer(deps, item)
    except ToolError as exc:
        if item.running or item.plan.parent is None:
            raise
        checkpoint = item.plan.parent.checkpoint
        item.plan = ChainPlan(None, f"the bitmap of checkpoint {checkpoint} is unusable ({exc})")
        log.warning("%s: %s; taking a full backup", item.vm.name, item.plan.reason)
        return _transfer(deps, item)


def _transfer(deps: VmBackupDeps, item: Prepared) -> dict[str, DiskOutcome]:
    """Read every disk of ``item`` into the repository; returns the new index per disk."""
    parent_indexes = {}
    if item.plan.parent is not None:
        repo = deps.session.repo
        parent_indexes = {d.name: repo.load_index(d.index_id) for d in item.plan.parent.disks}
    # The small files are read first, as close to the consistency point (the job's start)
    # as possible: the guest may change its UEFI variables or TPM while the disks are read.
    files = _read_files(item)
    results = {}
    for disk in item.disks:
        parent = parent_indexes.get(disk.target) if disk.tracks_changes else None
        with _open_disk(deps, item, disk, parent is not None) as reader:
            results[disk.target] = _transfer_disk(deps, item, disk, reader, parent)
    for name, (path, data) in files.items():
        results[name] = _store_file(deps, name, path, data)
    return results


def _read_files(item: Prepared) -> dict[str, tuple[Path, bytes]]:
    """The UEFI variables and emulated TPM state to store with the backup, by record name."""
    wanted = [(NVRAM, Path(item.vm.nvram))] if item.vm.nvram else []
    tpm_files = _tpm_files(item.vm.tpm_state)
    if item.vm.tpm_state and not tpm_files:
        item.warnings.append(
            f"the VM has an emulated TPM but no state was found in {item.vm.tpm_state}: "
            "a restored copy would get a new, empty TPM"
        )
    wanted += [(TPM_PREFIX + path.name, path) for path in tpm_files]
    files = {}
    for name, path in wanted:
        try:
            files[name] = (path, path.read_bytes())
        except OSError as exc:
            raise HypervisorError(f"cannot read {path}: {exc.strerror}") from exc
    return files


def _tpm_files(state_dir: str | None) -> list[Path]:
    """The files of an emulated TPM's state (``tpm2-00.permall``, and while the VM is saved
    ``tpm2-00.volatilestate``), without swtpm's ``.lock``. None yet before the VM's first
    start: there is no state to lose then."""
    if state_dir is None or not Path(state_dir).is_dir():
        return []
    return sorted(
        p for p in Path(state_dir).iterdir() if p.is_file() and not p.name.startswith(".")
    )


def _store_file(deps: VmBackupDeps, name: str, path: Path, data: bytes) -> DiskOutcome:
    """Store a small file the VM needs to boot (UEFI variables) like a disk of its own."""
    session = deps.session
    reader = BytesReader(data)
    to_read = [True] * chunk_count(len(data), session.repo.chunk_size)
    index, stats = store_disk(
        session.repo,
        session.cache,
        reader,
        to_read,
        session.progress,
        name,
        workers=session.workers,
    )
    record = DiskBackup(
        name=name,
        size=len(data),
        chunk_size=session.repo.chunk_size,
        index_id=session.repo.write_index(index),
        source=str(path),
        read_bytes=stats.read_bytes,
        new_bytes=stats.new_bytes,
        stored_bytes=stats.stored_bytes,
        mode="file",
    )
    return DiskOutcome(index, record)


@contextlib.contextmanager
def _open_disk(
    deps: VmBackupDeps, item: Prepared, disk: DiskFacts, incremental: bool
) -> Iterator[ExportReader]:
    if item.export is not None:
        with item.export.open_disk(disk.target) as reader:
            yield reader
        return
    source = next(d.source for d in item.vm.disks if d.target == disk.target)
    bitmap = item.plan.parent.checkpoint if incremental and item.plan.parent else None
    with deps.session.images.open_reader(
        Path(source or ""), image_format=disk.image_format, bitmap=bitmap
    ) as reader:
        yield reader


def _transfer_disk(
    deps: VmBackupDeps,
    item: Prepared,
    disk: DiskFacts,
    reader: ExportReader,
    parent: DiskIndex | None,
) -> DiskOutcome:
    session = deps.session
    chunk_size = session.repo.chunk_size
    if reader.size != disk.size:
        raise HypervisorError(f"{disk.target}: export size {reader.size} != disk size {disk.size}")
    has_data = data_chunks(reader.extents(), reader.size, chunk_size)
    dirty = reader.dirty_ranges() if parent is not None else None
    if parent is None or dirty is None or parent.chunk_size != chunk_size:
        to_read, base = has_data, None
        mode = "full"
    else:
        touched = chunks_touched(dirty, reader.size, chunk_size)
        # Dirty and now unallocated (trimmed): zeros, not the parent's stale data.
        base = [ZERO_CHUNK if touched[n] else cid for n, cid in enumerate(parent.chunk_ids)]
        to_read = [touched[n] and has_data[n] for n in range(len(touched))]
        mode = "incremental"
    label = f"{item.vm.name}:{disk.target}"
    index, stats = store_disk(
        session.repo,
        session.cache,
        reader,
        to_read,
        session.progress,
        label,
        workers=session.workers,
        reused_ids=base,
    )
    index_id = session.repo.write_index(index)
    source = next((d.source for d in item.vm.disks if d.target == disk.target), None)
    record = DiskBackup(
        name=disk.target,
        size=disk.size,
        chunk_size=chunk_size,
        index_id=index_id,
        source=source or "",
        source_format=disk.image_format or "",
        read_bytes=stats.read_bytes,
        new_bytes=stats.new_bytes,
        stored_bytes=stats.stored_bytes,
        zero_chunks=stats.zero_chunks,
        seconds=round(stats.seconds, 3),
        mode=mode,
    )
    return DiskOutcome(index, record)
