"""Backups of VMs, running or shut off: full or incremental, quiesced when the guest agent
answers, alone or as a consistency group.

Running VMs: a libvirt pull-mode backup job per VM, started together with a new checkpoint;
the disks are read over NBD while the guest goes on writing. Incrementals read only chunks
that are dirty (since the parent backup's checkpoint) *and* allocated; dirty chunks that now
read as zeros (trimmed) are recorded as zero chunks, so restores stay bit-exact after TRIM;
clean chunks take the parent's chunk ids without being read.

Shut-off VMs: the disk images are read with qemu-nbd; an incremental uses the persistent
bitmap of the last checkpoint (libvirt cannot create checkpoints for shut-off VMs, so the
backup records that same checkpoint as its own).

Nothing is left behind on failure: the job is ended, its scratch files removed, the new
checkpoint deleted, and no manifest written. A killed run's leftovers are cleaned up by the
next run, which holds the VM's host lock and so knows they are not someone else's.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator, Sequence
from datetime import datetime

from vmkeep import __version__
from vmkeep.domain.backup import BackupJobRequest, BackupManifest, DiskJob
from vmkeep.domain.chain import ChainPlan, DiskFacts, plan_backup
from vmkeep.domain.checkpoints import CHECKPOINT_PREFIX, checkpoint_prefix, is_own_checkpoint
from vmkeep.domain.errors import (
    GuestAgentError,
    HookError,
    HypervisorError,
    UsageError,
    VmkeepError,
)
from vmkeep.domain.inventory import AgentStatus, DiskDevice, SourceType, VmInfo
from vmkeep.domain.tokens import random_hex
from vmkeep.engine.vm_backup_model import (
    BACKUP_DISK_FORMATS,
    NVRAM,
    TPM_PREFIX,
    DiskOutcome,
    Prepared,
    VmBackupDeps,
    VmBackupOptions,
    VmBackupResult,
)
from vmkeep.engine.vm_backup_transfer import transfer_or_fall_back
from vmkeep.ports import BackupExport
from vmkeep.repository.locks import locked
from vmkeep.repository.manifests import new_backup_id

log = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_PREFIX",
    "VmBackupDeps",
    "VmBackupOptions",
    "VmBackupResult",
    "backup_vms",
    "checkpoint_prefix",
]


def backup_vms(
    deps: VmBackupDeps, names: Sequence[str], options: VmBackupOptions, *, now: datetime, host: str
) -> list[VmBackupResult]:
    """Back up ``names``. Without ``group`` each VM is backed up on its own and a failure of
    one does not stop the others (its result carries the error). With ``group`` every member
    is frozen, then every job started, then every member thawed: one consistency point."""
    if not names:
        raise UsageError("name at least one VM")
    if len(set(names)) != len(names):
        raise UsageError("a VM is named twice")
    repo = deps.session.repo
    with locked(
        repo.store, deps.session.lock_env, exclusive=False, purpose=f"backup {', '.join(names)}"
    ):
        if options.group:
            return _backup_group(deps, names, options, now, host)
        results = []
        for name in names:
            try:
                results.extend(_backup_group(deps, [name], options, now, host))
            except VmkeepError as exc:
                log.error("backup of %s failed: %s", name, exc)
                results.append(VmBackupResult(name, None, str(exc), exc.exit_code))
        return results


def _backup_group(
    deps: VmBackupDeps, names: Sequence[str], options: VmBackupOptions, now: datetime, host: str
) -> list[VmBackupResult]:
    hv = deps.hypervisor
    group_id = random_hex(4) if len(names) > 1 else None
    with contextlib.ExitStack() as held:
        vms = [hv.get_vm(name) for name in names]
        for vm in vms:
            held.enter_context(deps.host_locks.hold(vm.uuid, f"a backup of {vm.name!r}"))
        if len(vms) > 1 and not all(vm.state.is_active for vm in vms):
            raise UsageError("a consistency group can only hold running VMs")
        history = _history(deps, vms)
        prepared = []
        for vm in vms:
            _clean_leftovers(deps, vm, history[vm.uuid])
            prepared.append(_prepare(deps, vm, options, history[vm.uuid], now))
        with contextlib.ExitStack() as jobs:
            _start_jobs(deps, prepared, options, jobs)
            indexes = {p.vm.uuid: transfer_or_fall_back(deps, p) for p in prepared}
        manifests = [
            _publish(deps, p, indexes[p.vm.uuid], options, now, host, group_id) for p in prepared
        ]
        deps.session.cache.save()
    return [VmBackupResult(m.vm or "", m) for m in manifests]


def _history(deps: VmBackupDeps, vms: Sequence[VmInfo]) -> dict[str, list[BackupManifest]]:
    """Earlier backups of each VM (by UUID), oldest first. Unreadable manifests are skipped:
    they cannot serve as parents."""
    wanted: dict[str, list[BackupManifest]] = {vm.uuid: [] for vm in vms}
    repo = deps.session.repo
    for backup_id in repo.list_backup_ids():
        try:
            manifest = repo.load_manifest(backup_id)
        except VmkeepError:
            continue
        if manifest.vm_uuid in wanted:
            wanted[manifest.vm_uuid].append(manifest)
    return wanted


def _clean_leftovers(deps: VmBackupDeps, vm: VmInfo, history: list[BackupManifest]) -> None:
    """Undo what a killed run left: a running job, its work directory, and vmkeep
    checkpoints no backup refers to. We hold the VM's host lock, so none of it is live."""
    hv = deps.hypervisor
    if vm.state.is_active and hv.abort_backup_job(vm.name):
        log.warning("ended a backup job of %s left by an interrupted run", vm.name)
    known = {b.checkpoint for b in history if b.checkpoint}
    repo_id = deps.session.repo.repo_id
    for checkpoint in vm.checkpoints:
        if is_own_checkpoint(checkpoint.name, repo_id) and checkpoint.name not in known:
            log.warning("deleting checkpoint %s of %s: no backup uses it", checkpoint.name, vm.name)
            try:
                hv.delete_checkpoint(vm.name, checkpoint.name)
            except VmkeepError as exc:
                # Harmless if it stays: parents are chosen from manifests, never by this name.
                log.warning("could not delete checkpoint %s: %s", checkpoint.name, exc)
    workdir = deps.jobs_dir / vm.uuid
    if workdir.exists():
        shutil.rmtree(workdir, ignore_errors=True)


def _disks_of(vm: VmInfo) -> tuple[list[DiskFacts], list[str]]:
    """The disks to back up, and warnings for the ones skipped."""
    disks, warnings = [], []
    for disk in vm.disks:
        if disk.device not in (DiskDevice.DISK, DiskDevice.LUN):
            continue  # cdroms and floppies are media, not data
        if disk.source_type not in (SourceType.FILE, SourceType.BLOCK) or disk.source is None:
            warnings.append(f"{disk.target}: {disk.source_type.value} disks are not backed up")
            continue
        if disk.format not in BACKUP_DISK_FORMATS:
            warnings.append(f"{disk.target}: format {disk.format} is not supported; skipped")
            continue
        if disk.virtual_size is None:
            warnings.append(f"{disk.target}: size unknown ({disk.source} missing?); skipped")
            continue
        disks.append(DiskFacts(disk.target, disk.virtual_size, disk.format))
        if disk.format == "raw":
            warnings.append(f"{disk.target}: raw disk, always backed up in full (no dirty bitmap)")
    if not disks:
        raise UsageError(f"{vm.name!r} has no disk vmkeep can back up")
    return disks, warnings


def _prepare(
    deps: VmBackupDeps,
    vm: VmInfo,
    options: VmBackupOptions,
    history: list[BackupManifest],
    now: datetime,
) -> Prepared:
    disks, warnings = _disks_of(vm)
    cache = deps.session.cache

    def intact(parent: BackupManifest) -> bool:
        repo = deps.session.repo
        try:
            return all(
                cache.has_all(repo.load_index(d.index_id).stored_ids()) for d in parent.disks
            )
        except VmkeepError:
            return False

    checkpoints = {c.name for c in vm.checkpoints}
    plan = plan_backup(
        want_full=options.full,
        disks=disks,
        checkpoints=checkpoints,
        history=history,
        parent_intact=intact,
    )
    backup_id = new_backup_id(now, random_hex(4))
    prefix = checkpoint_prefix(deps.session.repo.repo_id)
    return Prepared(vm, disks, plan, backup_id, prefix, warnings)


def _job_request(deps: VmBackupDeps, item: Prepared) -> BackupJobRequest:
    parent = item.plan.parent
    return BackupJobRequest(
        vm=item.vm.name,
        disks=tuple(
            DiskJob(
                d.target,
                incremental=parent is not None and d.tracks_changes,
                with_checkpoint=d.tracks_changes,
            )
            for d in item.disks
        ),
        checkpoint=item.prefix + item.backup_id,
        incremental_from=parent.checkpoint if parent else None,
        workdir=str(deps.jobs_dir / item.vm.uuid),
    )


def _start_jobs(
    deps: VmBackupDeps,
    prepared: list[Prepared],
    options: VmBackupOptions,
    jobs: contextlib.ExitStack,
) -> None:
    """Freeze (when asked and possible), start every job, thaw: thawing is guaranteed."""
    running = [p for p in prepared if p.running]
    for item in prepared:
        deps.hooks.run("pre", item.vm.name, item.backup_id)
    with _frozen(deps, running, options):
        for item in running:
            item.export = _start_job(deps, item, jobs)
    for item in prepared:
        try:
            deps.hooks.run("post", item.vm.name, item.backup_id)
        except HookError as exc:  # the consistency point is taken: keep the backup, say so
            item.warnings.append(str(exc))


def _start_job(deps: VmBackupDeps, item: Prepared, jobs: contextlib.ExitStack) -> BackupExport:
    hv = deps.hypervisor
    try:
        return jobs.enter_context(hv.backup_job(_job_request(deps, item)))
    except HypervisorError as exc:
        if not item.plan.incremental:
            raise
        # Typically a bitmap that is missing or inconsistent (QEMU died uncleanly): the only
        # fix is a full backup, which also starts a fresh chain.
        item.plan = ChainPlan(None, f"libvirt refused the incremental ({exc})")
        log.warning("%s: %s; taking a full backup", item.vm.name, item.plan.reason)
        return jobs.enter_context(hv.backup_job(_job_request(deps, item)))


@contextlib.contextmanager
def _frozen(deps: VmBackupDeps, items: list[Prepared], options: VmBackupOptions) -> Iterator[None]:
    hv = deps.hypervisor
    frozen: list[Prepared] = []
    try:
        for item in items:
            wanted = options.quiesce
            if wanted is None:
                wanted = item.vm.agent is AgentStatus.RESPONDING
                if not wanted:
                    item.warnings.append("no guest agent: crash-consistent backup")
            if not wanted:
                continue
            try:
                hv.freeze_filesystems(item.vm.name, options.freeze_timeout)
            except GuestAgentError as exc:
                item.warnings.append(f"could not quiesce ({exc}): crash-consistent backup")
                with contextlib.suppress(VmkeepError):
                    hv.thaw_filesystems(item.vm.name, options.freeze_timeout)
                continue
            frozen.append(item)
        yield
    finally:
        for item in frozen:
            try:
                hv.thaw_filesystems(item.vm.name, options.freeze_timeout)
                item.quiesced = True
            except VmkeepError as exc:
                item.warnings.append(f"thaw failed: {exc}")
                log.error("could not thaw %s: %s", item.vm.name, exc)


def _is_file(name: str) -> bool:
    """Whether an outcome is one of the small files stored with the VM, not a disk."""
    return name == NVRAM or name.startswith(TPM_PREFIX)


def _publish(
    deps: VmBackupDeps,
    item: Prepared,
    outcomes: dict[str, DiskOutcome],
    options: VmBackupOptions,
    now: datetime,
    host: str,
    group_id: str | None,
) -> BackupManifest:
    """Write the manifest (making the backup visible), then retire older vmkeep checkpoints.
    If the manifest cannot be written, the new checkpoint goes too."""
    hv = deps.hypervisor
    plan = item.plan
    incremental = any(o.record.mode == "incremental" for o in outcomes.values())
    manifest = BackupManifest(
        backup_id=item.backup_id,
        kind="incremental" if incremental else "full",
        created=now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        host=host,
        vm=item.vm.name,
        disks=tuple(outcomes[d.target].record for d in item.disks)
        + tuple(o.record for name, o in sorted(outcomes.items()) if _is_file(name)),
        parent=plan.parent.backup_id if plan.parent and incremental else None,
        tags=options.tags,
        config_files={"domain.xml": hv.domain_xml(item.vm.name)},
        vmkeep_version=__version__,
        vm_uuid=item.vm.uuid,
        checkpoint=item.checkpoint,
        quiesced=item.quiesced,
        warnings=tuple(item.warnings),
        reason=None if incremental else plan.reason,
        group=group_id,
    )
    try:
        deps.session.repo.write_manifest(manifest)
    except BaseException:
        if item.running and item.checkpoint:
            with contextlib.suppress(VmkeepError):
                hv.delete_checkpoint(item.vm.name, item.checkpoint)
        raise
    for checkpoint in item.vm.checkpoints:
        name = checkpoint.name
        if is_own_checkpoint(name, deps.session.repo.repo_id) and name != item.checkpoint:
            try:
                hv.delete_checkpoint(item.vm.name, name)
            except VmkeepError as exc:
                log.warning("could not delete old checkpoint %s: %s", name, exc)
    return manifest
