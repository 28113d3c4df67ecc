"""The values a VM backup carries between its phases (see vm_backup.py)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from vmkeep.domain.backup import BackupManifest, DiskBackup
from vmkeep.domain.chain import ChainPlan, DiskFacts
from vmkeep.domain.inventory import VmInfo
from vmkeep.engine.image_backup import RepoSession
from vmkeep.ports import BackupExport, Hooks, HostLocks, Hypervisor
from vmkeep.repository.indexes import DiskIndex

CHECKPOINT_PREFIX = "vmkeep-"
NVRAM = "nvram"
TPM_PREFIX = "tpm/"
"""Records of the emulated TPM's state files are named ``tpm/<file name>``."""


def checkpoint_prefix(repo_id: str) -> str:
    """Checkpoints are named ``vmkeep-<repo id[:8]>-<backup id>``: a VM backed up into two
    repositories keeps one chain per repository, and each run only ever retires its own
    repository's checkpoints (never anyone else's)."""
    return f"{CHECKPOINT_PREFIX}{repo_id[:8]}-"


# ``vmkeep-<repo id[:8]>-<backup id>``, the backup id as repository/manifests.py makes it.
_OWN_CHECKPOINT_RE = re.compile(r"^vmkeep-([0-9a-f]{8})-\d{8}T\d{6}(\d{3})?Z-[0-9a-f]{8}$")


def checkpoint_repository(name: str) -> str | None:
    """The repository id prefix (8 hex digits) in the name of a checkpoint vmkeep made; None
    for any other checkpoint, which vmkeep never deletes."""
    found = _OWN_CHECKPOINT_RE.match(name)
    return found.group(1) if found else None


def is_own_checkpoint(name: str, repo_id: str) -> bool:
    """Whether vmkeep made the checkpoint ``name`` for the repository ``repo_id``."""
    return checkpoint_repository(name) == repo_id[:8]


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
