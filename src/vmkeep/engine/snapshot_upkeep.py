"""Keeping snapshot sprawl in check: ``snapshot prune`` deletes (merges) snapshots by policy,
``snapshot usage`` reports what overlays hold, how fast they grow, when their filesystems
fill, and what breaks policy.

The growth rate needs no history: the images the guest writes to now were created by the
snapshot the VM currently sits on, so their size divided by that snapshot's age is the
average write rate since. It is an average: a burst of writes an hour ago and a quiet VM
now look the same.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import PurePath

from vmkeep.domain.errors import VmkeepError, VmNotFoundError
from vmkeep.domain.inventory import VmInfo
from vmkeep.domain.snapshot_policy import (
    DEFAULT_FILL_WARNING,
    DEFAULT_MAX_AGE,
    DEFAULT_MAX_CHAIN,
    PruneDecision,
    PrunePolicy,
    select_for_pruning,
)
from vmkeep.domain.snapshots import Snapshot, format_duration, snapshot_disks
from vmkeep.domain.units import format_size
from vmkeep.engine.snapshot_history import delete_snapshot
from vmkeep.ports import HostLocks, Hypervisor

log = logging.getLogger(__name__)


# -- prune --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PruneOutcome:
    """One selected snapshot: deleted (``error`` None), or why its deletion failed; in a dry
    run nothing is deleted and ``deleted`` is False."""

    vm: str
    decision: PruneDecision
    deleted: bool
    error: VmkeepError | None = None


def prune_snapshots(
    hv: Hypervisor,
    locks: HostLocks,
    policy: PrunePolicy,
    *,
    vms: Sequence[str] = (),
    now: int,
    dry_run: bool = False,
) -> list[PruneOutcome]:
    """Delete what ``policy`` selects among the snapshots of ``vms`` (default: every VM),
    oldest first per VM. A failed deletion is recorded and the others go on: one busy VM
    must not keep every other VM's snapshots around. Raises UsageError for an empty policy
    and VmNotFoundError for a named VM that does not exist, before deleting anything."""
    policy.validate()
    targets = [hv.get_vm(name) for name in vms] if vms else hv.list_vms()
    plans: list[tuple[str, list[PruneDecision]]] = []
    for vm in targets:
        try:
            plans.append((vm.name, select_for_pruning(hv.list_snapshots(vm.name), policy, now)))
        except VmNotFoundError:
            if vms:
                raise
    outcomes = []
    for vm_name, decisions in plans:
        for decision in decisions:
            if dry_run:
                outcomes.append(PruneOutcome(vm_name, decision, deleted=False))
                continue
            try:
                delete_snapshot(hv, locks, vm_name, decision.snapshot.name)
            except VmkeepError as exc:
                log.error(
                    "could not delete snapshot %r of %s: %s", decision.snapshot.name, vm_name, exc
                )
                outcomes.append(PruneOutcome(vm_name, decision, deleted=False, error=exc))
                continue
            outcomes.append(PruneOutcome(vm_name, decision, deleted=True))
    return outcomes


# -- usage --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UsagePolicy:
    """The limits ``snapshot usage`` warns about (seconds, images, seconds)."""

    max_age: int = DEFAULT_MAX_AGE
    max_chain: int = DEFAULT_MAX_CHAIN
    fill_warning: int = DEFAULT_FILL_WARNING


@dataclass(frozen=True, slots=True)
class VmUsage:
    """One VM with snapshots. ``overlay_bytes``: what all its snapshot overlays occupy;
    ``active_bytes``: the images it writes to now; ``growth`` in bytes per second (None when
    unknown); ``longest_chain``: the most images below one disk's active image."""

    vm: str
    snapshots: int
    overlay_bytes: int
    active_bytes: int
    growth: float | None
    longest_chain: int
    filesystems: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FilesystemUsage:
    """A filesystem holding overlays: its free bytes, the overlays on it, their combined
    growth (bytes/s) and the forecast seconds until it is full (None: not growing)."""

    filesystem: str
    free: int
    overlay_bytes: int
    growth: float
    fills_in: float | None
    vms: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SnapshotUsage:
    """What ``vmkeep snapshot usage`` reports."""

    vms: tuple[VmUsage, ...]
    filesystems: tuple[FilesystemUsage, ...]
    warnings: tuple[str, ...]


@dataclass(slots=True)
class _Filesystem:
    free: int
    overlay_bytes: int = 0
    growth: float = 0.0
    vms: set[str] = field(default_factory=set)


def snapshot_usage(hv: Hypervisor, policy: UsagePolicy, *, now: int) -> SnapshotUsage:
    """Overlay bytes, growth and fill forecasts for every VM that has snapshots."""
    vms: list[VmUsage] = []
    filesystems: dict[str, _Filesystem] = {}
    warnings: list[str] = []
    for vm in hv.list_vms():
        try:
            snapshots = [s for s in hv.list_snapshots(vm.name) if s.external]
        except VmNotFoundError:
            continue  # undefined while we were looking
        if not snapshots:
            continue
        usage = _vm_usage(hv, vm, snapshots, now, filesystems)
        vms.append(usage)
        warnings += _policy_warnings(vm.name, snapshots, usage, policy, now)
    forecast = []
    for name, fs in sorted(filesystems.items()):
        fills_in = fs.free / fs.growth if fs.growth > 0 else None
        forecast.append(
            FilesystemUsage(
                name, fs.free, fs.overlay_bytes, fs.growth, fills_in, tuple(sorted(fs.vms))
            )
        )
        if fills_in is not None and fills_in < policy.fill_warning:
            warnings.append(
                f"{name} fills in about {format_duration(int(fills_in))} at the current "
                f"snapshot growth ({format_size(int(fs.growth * 3600))}/h, "
                f"{format_size(fs.free)} free)"
            )
    return SnapshotUsage(tuple(vms), tuple(forecast), tuple(warnings))


def _vm_usage(
    hv: Hypervisor,
    vm: VmInfo,
    snapshots: Sequence[Snapshot],
    now: int,
    filesystems: dict[str, _Filesystem],
) -> VmUsage:
    overlays: dict[str, int] = {}
    for snap in snapshots:
        for disk in snap.disks:
            if disk.overlay and disk.overlay_bytes is not None:
                overlays[disk.overlay] = disk.overlay_bytes
    disks = snapshot_disks(vm.disks)
    # A disk's top image is "active" (written since a snapshot) when a snapshot froze an
    # image below it; a disk merely built on a template image is not.
    frozen = {d.frozen for snap in snapshots for d in snap.disks}
    active = {
        d.source: d.allocated_size or 0
        for d in disks.values()
        if d.source is not None
        and d.source not in frozen
        and any(b.source in frozen for b in d.backing_chain)
    }
    active_bytes = sum(active.values())
    sitting_on = next((s for s in snapshots if s.current), None) or max(
        snapshots, key=lambda s: s.created or 0
    )
    age = now - sitting_on.created if sitting_on.created else 0
    growth = active_bytes / age if age > 0 else None
    # Every overlay, active or not, is charged to the filesystem of its directory.
    # The hypervisor's figure for an image in use is the fresher one.
    charged: dict[str, int] = {**overlays, **active}
    names = set()
    for path, size in charged.items():
        space = hv.free_space(str(PurePath(path).parent))
        fs = filesystems.setdefault(space.filesystem, _Filesystem(space.free))
        fs.overlay_bytes += size
        fs.vms.add(vm.name)
        names.add(space.filesystem)
        if growth is not None and path in active and active_bytes:
            fs.growth += growth * size / active_bytes
    return VmUsage(
        vm=vm.name,
        snapshots=len(snapshots),
        overlay_bytes=sum(charged.values()),
        active_bytes=active_bytes,
        growth=growth,
        longest_chain=max((len(d.backing_chain) for d in disks.values()), default=0),
        filesystems=tuple(sorted(names)),
    )


def _policy_warnings(
    vm: str, snapshots: Sequence[Snapshot], usage: VmUsage, policy: UsagePolicy, now: int
) -> list[str]:
    warnings = []
    for snap in snapshots:
        if snap.created is not None and now - snap.created > policy.max_age:
            warnings.append(
                f"{vm}: snapshot {snap.name!r} is {format_duration(now - snap.created)} old "
                f"(policy: {format_duration(policy.max_age)})"
            )
    if usage.longest_chain > policy.max_chain:
        warnings.append(
            f"{vm}: a disk has {usage.longest_chain} images below its active one "
            f"(policy: {policy.max_chain}); delete or prune snapshots to shorten the chain"
        )
    return warnings
