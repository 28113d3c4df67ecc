"""Moving through a VM's snapshots: revert to one, delete (merge away) one.

Both are plain functions over the Hypervisor port; the mechanics (new overlays, restoring
RAM, block commits) live in the driver, the rules (which state to end in, refusing a changed
disk layout) here.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

from vmkeep.domain.errors import NotFoundError, UsageError, VmkeepError
from vmkeep.domain.inventory import VmInfo, VmState
from vmkeep.domain.snapshots import (
    RevertState,
    Snapshot,
    SnapshotDeletion,
    SnapshotKind,
    layout_changes,
    snapshot_disks,
)
from vmkeep.ports import HostLocks, Hypervisor


@dataclass(frozen=True, slots=True)
class RevertResult:
    """The VM is back at ``snapshot`` and in ``state``. The revert took ``seconds``, of
    which the VM was down for ``downtime`` (the rest: preparing overlays, tidying up)."""

    vm: str
    snapshot: str
    kind: SnapshotKind
    state: RevertState
    seconds: float
    downtime: float


@dataclass(frozen=True, slots=True)
class DeleteResult:
    """``snapshot`` is gone; ``deletion`` tells which images merged and which files went."""

    vm: str
    snapshot: str
    deletion: SnapshotDeletion
    seconds: float


def find_snapshot(hv: Hypervisor, vm: str, name: str) -> Snapshot:
    """The snapshot ``name`` of ``vm``. Raises VmNotFoundError, or NotFoundError naming the
    snapshots there are."""
    snapshots = hv.list_snapshots(vm)
    for snapshot in snapshots:
        if snapshot.name == name:
            return snapshot
    known = ", ".join(repr(s.name) for s in snapshots) or "none"
    raise NotFoundError(f"{vm!r} has no snapshot named {name!r} (it has: {known})")


def revert_state(vm: VmInfo, snapshot: Snapshot, wanted: RevertState | None) -> RevertState:
    """Where a revert leaves the VM: as asked; else a memory snapshot resumes as it was taken
    (running or paused), and a disk-only one boots if the VM is running now and stays shut
    off if it is not."""
    if wanted is not None:
        return wanted
    if snapshot.kind is SnapshotKind.MEMORY:
        return RevertState.PAUSED if snapshot.state == "paused" else RevertState.RUNNING
    if vm.state is VmState.PAUSED:
        return RevertState.PAUSED
    return RevertState.RUNNING if vm.state.is_active else RevertState.SHUTOFF


def revert_snapshot(
    hv: Hypervisor,
    locks: HostLocks,
    vm_name: str,
    name: str,
    wanted: RevertState | None = None,
) -> RevertResult:
    """Bring ``vm_name`` back to snapshot ``name`` (see ports.Hypervisor.revert_snapshot).

    Raises NotFoundError for an unknown snapshot, UsageError for an internal snapshot, for a
    VM whose disks changed since the snapshot (one added or removed), and for
    ``wanted=SHUTOFF`` with a memory snapshot, LockedError while a backup or another
    snapshot operation of the VM runs. Nothing has changed when it refuses.
    """
    vm = hv.get_vm(vm_name)
    with locks.hold(vm.uuid, f"a revert of {vm_name!r}"):
        plan = _plan_revert(hv, vm, name, wanted)
        return _revert(hv, plan)


@dataclass(frozen=True, slots=True)
class GroupRevert:
    """The members of consistency group ``group`` reverted to ``snapshot``, in order."""

    group: str
    snapshot: str
    results: tuple[RevertResult, ...]


class PartialRevertError(VmkeepError):
    """A group revert failed part-way: some members are back at the snapshot, some not."""


def group_of(hv: Hypervisor, vm_name: str, name: str) -> tuple[str, tuple[str, ...]] | None:
    """The consistency group snapshot ``name`` of ``vm_name`` belongs to, and its members;
    None when it was taken alone."""
    facts = find_snapshot(hv, vm_name, name).facts
    if facts is None or facts.group is None or len(facts.members) < 2:
        return None
    return facts.group, facts.members


def revert_group(
    hv: Hypervisor,
    locks: HostLocks,
    vm_name: str,
    name: str,
    wanted: RevertState | None = None,
) -> GroupRevert:
    """Revert every member of the group snapshot ``name`` of ``vm_name`` belongs to.

    Every member is checked first (its snapshot exists and belongs to the same group, its
    disks did not change, its lock is free): a refusal changes nothing. Members are then
    reverted in the group's order; if one fails, PartialRevertError names which members were
    reverted and which were not (with the exit code of the failure).
    """
    found = group_of(hv, vm_name, name)
    if found is None:
        raise UsageError(f"snapshot {name!r} of {vm_name!r} was not taken as part of a group")
    group, members = found
    with contextlib.ExitStack() as held:
        plans = []
        for member in members:
            vm = hv.get_vm(member)
            held.enter_context(locks.hold(vm.uuid, f"a group revert of {member!r}"))
            plan = _plan_revert(hv, vm, name, wanted)
            theirs = plan.snapshot.facts.group if plan.snapshot.facts else None
            if theirs != group:
                raise UsageError(
                    f"snapshot {name!r} of {member!r} is not part of group {group}; "
                    "refusing to revert the group"
                )
            plans.append(plan)
        results: list[RevertResult] = []
        for plan in plans:
            try:
                results.append(_revert(hv, plan))
            except VmkeepError as exc:
                done = ", ".join(repr(r.vm) for r in results) or "none"
                left = ", ".join(repr(p.vm) for p in plans[len(results) + 1 :]) or "none"
                failure = PartialRevertError(
                    f"reverting {plan.vm!r} to {name!r} failed: {exc}; reverted: {done}; "
                    f"not reverted: {left}"
                )
                failure.exit_code = exc.exit_code
                raise failure from exc
    return GroupRevert(group, name, tuple(results))


@dataclass(frozen=True, slots=True)
class _RevertPlan:
    vm: str
    snapshot: Snapshot
    state: RevertState


def _plan_revert(hv: Hypervisor, vm: VmInfo, name: str, wanted: RevertState | None) -> _RevertPlan:
    """Every check a revert makes before it changes anything."""
    vm_name = vm.name
    snapshot = find_snapshot(hv, vm_name, name)
    if not snapshot.external:
        raise UsageError(f"{name!r} is an internal snapshot; vmkeep reverts external ones only")
    if snapshot.facts is not None and snapshot.facts.deleting:
        raise UsageError(
            f"snapshot {name!r} of {vm_name!r} is being deleted (an interrupted delete?); "
            f"`vmkeep snapshot repair {vm_name}` finishes it"
        )
    changes = layout_changes(snapshot_disks(vm.disks), [d.target for d in snapshot.disks])
    if changes:
        raise UsageError(
            f"the disks of {vm_name!r} changed since snapshot {name!r}: {'; '.join(changes)}; "
            "refusing to revert"
        )
    state = revert_state(vm, snapshot, wanted)
    if snapshot.kind is SnapshotKind.MEMORY and state is RevertState.SHUTOFF:
        raise UsageError("a memory snapshot reverts to a running or paused VM")
    return _RevertPlan(vm_name, snapshot, state)


def _revert(hv: Hypervisor, plan: _RevertPlan) -> RevertResult:
    started = time.monotonic()
    downtime = hv.revert_snapshot(plan.vm, plan.snapshot.name, plan.state)
    seconds = round(time.monotonic() - started, 3)
    return RevertResult(
        plan.vm, plan.snapshot.name, plan.snapshot.kind, plan.state, seconds, round(downtime, 3)
    )


def delete_snapshot(hv: Hypervisor, locks: HostLocks, vm_name: str, name: str) -> DeleteResult:
    """Delete snapshot ``name`` of ``vm_name``, merging its data away (see
    ports.Hypervisor.delete_snapshot), holding the VM's host lock. Raises NotFoundError for an
    unknown snapshot, UsageError for an internal one, LockedError while a backup or another
    snapshot operation of the VM runs."""
    vm = hv.get_vm(vm_name)
    with locks.hold(vm.uuid, f"a snapshot deletion of {vm_name!r}"):
        snapshot = find_snapshot(hv, vm_name, name)
        if not snapshot.external:
            raise UsageError(f"{name!r} is an internal snapshot; vmkeep deletes external ones only")
        started = time.monotonic()
        deletion = hv.delete_snapshot(vm_name, name)
        return DeleteResult(vm_name, name, deletion, round(time.monotonic() - started, 3))
