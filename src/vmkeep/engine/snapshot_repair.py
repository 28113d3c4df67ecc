"""``vmkeep snapshot repair VM``: finish what a vmkeep killed mid-create, mid-revert or
mid-delete left behind, so the VM and its snapshots are as if it had completed.

What a kill can leave, and what repair does about it:

* a guest whose filesystems are still frozen (killed between freeze and thaw): thaw;
* a block commit still running, or an active commit waiting for its pivot (killed during a
  delete's merge): let it finish, pivot;
* a snapshot marked as being deleted (see SnapshotFacts.deleting): run the delete again, which
  plans only what is left;
* overlays or memory states vmkeep made that nothing uses (killed in a create or a revert):
  remove them;
* a group snapshot some members lack (killed between members): reported, not changed, since
  which half to keep is the administrator's call.

It runs under the VM's host lock, so it never races a live vmkeep on the same VM.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vmkeep.domain.errors import VmNotFoundError
from vmkeep.domain.inventory import AgentStatus
from vmkeep.domain.snapshots import Snapshot
from vmkeep.ports import HostLocks, Hypervisor


@dataclass(frozen=True, slots=True)
class RepairResult:
    """What repair did (``actions``, empty when nothing needed doing) and what it found but
    left to the administrator (``warnings``)."""

    vm: str
    actions: tuple[str, ...]
    warnings: tuple[str, ...]


def repair_snapshots(
    hv: Hypervisor, locks: HostLocks, vm_name: str, *, agent_timeout: int = 10
) -> RepairResult:
    """Repair ``vm_name`` (see the module docstring). Raises VmNotFoundError, LockedError
    while another vmkeep works on the VM, and HypervisorError for what it cannot finish (a
    block job vmkeep does not start)."""
    vm = hv.get_vm(vm_name)
    actions: list[str] = []
    with locks.hold(vm.uuid, f"a snapshot repair of {vm_name!r}"):
        if vm.state.is_active and vm.agent is AgentStatus.RESPONDING:
            thawed = hv.thaw_filesystems(vm_name, agent_timeout)
            if thawed:
                actions.append(f"thawed {thawed} filesystem(s) left frozen")
        actions += hv.finish_block_jobs(vm_name)
        for snap in hv.list_snapshots(vm_name):
            if snap.facts is not None and snap.facts.deleting:
                deletion = hv.delete_snapshot(vm_name, snap.name)
                actions.append(
                    f"finished deleting snapshot {snap.name!r} ({len(deletion.merged)} image(s) "
                    f"merged, {len(deletion.removed)} file(s) removed)"
                )
        actions += [f"removed {path}: nothing uses it" for path in hv.remove_stray_files(vm_name)]
        warnings = _incomplete_groups(hv, vm_name, hv.list_snapshots(vm_name))
    return RepairResult(vm_name, tuple(actions), tuple(warnings))


def _incomplete_groups(hv: Hypervisor, vm_name: str, snapshots: Sequence[Snapshot]) -> list[str]:
    warnings = []
    for snap in snapshots:
        facts = snap.facts
        if facts is None or facts.group is None:
            continue
        missing = []
        for member in facts.members:
            if member == vm_name:
                continue
            try:
                theirs = hv.list_snapshots(member)
            except VmNotFoundError:
                missing.append(member)
                continue
            if not any(
                t.name == snap.name and t.facts and t.facts.group == facts.group for t in theirs
            ):
                missing.append(member)
        if missing:
            warnings.append(
                f"group snapshot {snap.name!r} is incomplete: {', '.join(map(repr, missing))} "
                "has no part of it (an interrupted group create, or deleted since); it cannot "
                "be reverted as a group"
            )
    return warnings
