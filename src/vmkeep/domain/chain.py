"""Whether the next backup of a VM can be incremental, and from which earlier backup.

Pure: the caller gathers the facts (the VM's disks, libvirt's checkpoints, this VM's earlier
backups) and gets a plan with the reason for any full backup, which the result reports.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vmkeep.domain.backup import BackupManifest
from vmkeep.domain.units import format_size


@dataclass(frozen=True, slots=True)
class DiskFacts:
    """A disk to back up: its target, virtual size and image format."""

    target: str
    size: int
    image_format: str | None

    @property
    def tracks_changes(self) -> bool:
        """Only qcow2 images can hold the persistent dirty bitmaps incrementals need."""
        return self.image_format == "qcow2"


@dataclass(frozen=True, slots=True)
class ChainPlan:
    """``parent`` set means incremental from ``parent.checkpoint``; else full for ``reason``."""

    parent: BackupManifest | None
    reason: str | None

    @property
    def incremental(self) -> bool:
        return self.parent is not None


def plan_backup(
    *,
    want_full: bool,
    disks: Sequence[DiskFacts],
    checkpoints: set[str],
    history: Sequence[BackupManifest],
    parent_intact: Callable[[BackupManifest], bool],
) -> ChainPlan:
    """Pick the newest earlier backup whose checkpoint libvirt still has, and check it fits.

    ``history`` is this VM's earlier backups, in any order. ``parent_intact`` says whether
    every chunk the candidate parent references is known to be in the repository (a damaged
    parent must not pass its damage on to an incremental that reuses its chunks).
    """
    if want_full:
        return ChainPlan(None, "full backup requested")
    if not history:
        return ChainPlan(None, "first backup of this VM")
    if not any(d.tracks_changes for d in disks):
        return ChainPlan(None, "no qcow2 disk: raw disks can only be backed up in full")
    usable = [b for b in history if b.checkpoint and b.checkpoint in checkpoints]
    if not usable:
        return ChainPlan(None, "the checkpoint of the last backup is gone from libvirt")
    parent = max(usable, key=lambda b: b.backup_id)
    mismatch = _layout_change(parent, disks)
    if mismatch:
        return ChainPlan(None, f"disk layout changed since {parent.backup_id}: {mismatch}")
    if not parent_intact(parent):
        return ChainPlan(
            None, f"backup {parent.backup_id} has chunks missing from the repository (repo check)"
        )
    return ChainPlan(parent, None)


def _layout_change(parent: BackupManifest, disks: Sequence[DiskFacts]) -> str | None:
    before = {d.name: d.size for d in parent.disks if d.mode != "file"}
    now = {d.target: d.size for d in disks}
    if set(before) != set(now):
        added = sorted(set(now) - set(before))
        removed = sorted(set(before) - set(now))
        parts = [f"added {', '.join(added)}"] if added else []
        parts += [f"removed {', '.join(removed)}"] if removed else []
        return "; ".join(parts)
    for target, size in sorted(now.items()):
        if before[target] != size:
            return f"{target} resized from {format_size(before[target])} to {format_size(size)}"
    return None
