"""The values a VM backup carries between its phases (see vm_backup.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vmkeep.domain.backup import BackupManifest, DiskBackup
from vmkeep.domain.chain import ChainPlan, DiskFacts
from vmkeep.domain.inventory import VmInfo
from vmkeep.engine.image_backup import RepoSession
from vmkeep.ports import BackupExport, Hooks, HostLocks, Hypervisor
from vmkeep.repository.indexes import DiskIndex

NVRAM = "nvram"
TPM_PREFIX = "tpm/"
"""Records of the emulated TPM's state files are named ``tpm/<file name>``."""


BACKUP_DISK_FORMATS = ("qcow2", "raw")


@dataclass(frozen=True, slots=True)
class VmBackupOptions:
    """``vmkeep backup`` choices. ``quiesce`` None means: when the guest agent answers."""

    full: bool = False
    quiesce: bool | None = None
    group: bool = False
    tags: tuple[str, ...] = ()
    freeze_timeout: int = 10


@dataclass(frozen=True, slots=True)
class VmBackupDeps:
    session: RepoSession
    hypervisor: Hypervisor
    host_locks: HostLocks
    hooks: Hooks
    jobs_dir: Path
    """Where each job's NBD socket and scratch files live (``<jobs_dir>/<vm uuid>``)."""


@dataclass(frozen=True, slots=True)
class VmBackupResult:
    """One VM's outcome: a manifest, or the error (with its exit code) that stopped it."""

    vm: str
    manifest: BackupManifest | None
    error: str | None = None
    exit_code: int = 0


@dataclass(slots=True)
class Prepared:
    """One VM on its way through a backup."""

    vm: VmInfo
    disks: list[DiskFacts]
    plan: ChainPlan
    backup_id: str
    prefix: str
    warnings: list[str] = field(default_factory=list)
    quiesced: bool = False
    export: BackupExport | None = None

    @property
    def running(self) -> bool:
        return self.vm.state.is_active

    @property
    def checkpoint(self) -> str | None:
        if self.running:
            return self.prefix + self.backup_id
        return self.plan.parent.checkpoint if self.plan.parent else None


@dataclass(frozen=True, slots=True)
class DiskOutcome:
    index: DiskIndex
    record: DiskBackup
