"""Taking and listing snapshots of VMs: create (one VM, or several as one consistency
group) and list as a tree. Plain functions over the Hypervisor port; reverting and deleting
are in ``snapshot_history``.

Create: every member's request is planned and the free space checked before anything
happens; then the guests are frozen (when asked, or when their agent answers), every member is
snapshotted, and all are thawed, the thaw guaranteed. If a member fails, the snapshots
already taken for the others are deleted again (merged back), so a group is all or nothing.
Memory snapshots are not frozen: the saved RAM holds the guest's page cache, so disks and RAM
are consistent with each other without it, and a frozen guest would be saved frozen.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from vmkeep.domain.errors import (
    AlreadyExistsError,
    GuestAgentError,
    StoreFullError,
    UsageError,
    VmkeepError,
    VmNotFoundError,
)
from vmkeep.domain.inventory import AgentStatus, DiskDevice, SourceType, VmInfo, VmState
from vmkeep.domain.snapshot_space import SpaceDemand, space_shortfalls
from vmkeep.domain.snapshots import (
    Snapshot,
    SnapshotFacts,
    SnapshotRequest,
    TreeEntry,
    decode_facts,
    default_snapshot_name,
    encode_facts,
    image_stem,
    memory_path,
    overlay_path,
    safe_component,
    snapshot_disks,
    tree_order,
    validate_snapshot_name,
)
from vmkeep.domain.tokens import random_hex
from vmkeep.ports import HostLocks, Hypervisor

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SnapshotOptions:
    """``vmkeep snapshot create`` choices. ``quiesce`` None means: when the agent answers.
    ``expire`` is in seconds from now; ``directory`` holds the overlays and memory state
    instead of the disks' own directories."""

    name: str | None = None
    memory: bool = False
    quiesce: bool | None = None
    expire: int | None = None
    directory: Path | None = None
    freeze_timeout: int = 10


@dataclass(frozen=True, slots=True)
class CreatedSnapshot:
    """One member's new snapshot; ``seconds`` is how long libvirt took to take it."""

    snapshot: Snapshot
    quiesced: bool
    warnings: tuple[str, ...]
    seconds: float


@dataclass(frozen=True, slots=True)
class SnapshotCreation:
    """The outcome of ``create_snapshots``: one snapshot per VM, in the order named.
    ``frozen_seconds`` is how long guest filesystems stayed frozen (None if none was)."""

    snapshots: tuple[CreatedSnapshot, ...]
    group: str | None
    frozen_seconds: float | None


@dataclass(slots=True)
class _Member:
    """One VM on its way through a snapshot: its plan, then what happened."""

    vm: VmInfo
    overlays: tuple[tuple[str, str], ...] = ()
    memory_file: str | None = None
    facts: SnapshotFacts = field(default_factory=SnapshotFacts)
    warnings: list[str] = field(default_factory=list)
    wants_freeze: bool = False
    frozen: bool = False
    thawed: bool = True


def create_snapshots(
    hv: Hypervisor,
    locks: HostLocks,
    names: Sequence[str],
    options: SnapshotOptions,
    *,
    now: datetime,
) -> SnapshotCreation:
    """Snapshot ``names`` at one consistency point, holding each VM's host lock (shared with
    backups and the other snapshot operations: LockedError if one runs).

    Raises UsageError for bad input (no VM, a VM named twice, a bad snapshot name, memory of
    a shut-off VM, a disk vmkeep cannot put an overlay on), AlreadyExistsError if a member
    has a snapshot of that name, StoreFullError (with the estimate) if a filesystem clearly
    lacks the room, before anything happens. On a failure part-way, the snapshots already
    taken are deleted again and the error re-raised; guests are always thawed.
    """
    if not names:
        raise UsageError("name at least one VM")
    if len(set(names)) != len(names):
        raise UsageError("a VM is named twice")
    if options.memory and options.quiesce:
        raise UsageError(
            "--quiesce does not apply to memory snapshots: the saved RAM holds the guest's "
            "unwritten data, and a frozen guest would be saved frozen"
        )
    name = options.name if options.name is not None else default_snapshot_name(now)
    validate_snapshot_name(name)
    with contextlib.ExitStack() as held:
        vms = [hv.get_vm(vm) for vm in names]
        for vm in vms:
            held.enter_context(locks.hold(vm.uuid, f"a snapshot of {vm.name!r}"))
        # Each get_vm pings the guest agent (up to 2 s when it hangs): read each VM once.
        members = [_Member(vm) for vm in vms]
        group = random_hex(4) if len(members) > 1 else None
        for member in members:
            _plan(member, name, options, now, group, names)
        _check_space(hv, members)
        started = time.monotonic()
        taken: list[CreatedSnapshot] = []
        try:
            with _frozen(hv, members, options.freeze_timeout):
                for member in members:
                    taken.append(_take(hv, member, name))
        except BaseException:
            _roll_back(hv, [t.snapshot.vm for t in taken], name)
            raise
        frozen_seconds = round(time.monotonic() - started, 3)
    # Warnings and the quiesced flag are final only once everything is thawed.
    done = tuple(
        dataclasses.replace(t, quiesced=m.frozen, warnings=tuple(m.warnings))
        for t, m in zip(taken, members, strict=True)
    )
    froze = any(m.frozen for m in members)
    return SnapshotCreation(
        snapshots=done,
        group=group,
        frozen_seconds=frozen_seconds if froze else None,
    )


def _plan(
    member: _Member,
    name: str,
    options: SnapshotOptions,
    now: datetime,
    group: str | None,
    names: Sequence[str],
) -> None:
    """Check the member and choose its files; nothing is created yet."""
    vm = member.vm
    if any(s.name == name for s in vm.snapshots):
        raise AlreadyExistsError(f"{vm.name!r} already has a snapshot named {name!r}")
    # From the inventory already read: listing the snapshots would also measure every
    # overlay with qemu-img, on the way to the moment the guest is frozen.
    facts = [decode_facts(s.description) for s in vm.snapshots]
    if any(f is not None and f.deleting for f in facts):
        raise UsageError(
            f"a snapshot delete of {vm.name!r} was interrupted; finish it first with "
            f"`vmkeep snapshot repair {vm.name}`"
        )
    if options.memory and not vm.state.is_active:
        raise UsageError(f"{vm.name!r} is not running: a memory snapshot needs a running VM")
    _refuse_unsupported(vm, options)
    disks = snapshot_disks(vm.disks)
    if not disks:
        raise UsageError(f"{vm.name!r} has no disk vmkeep can snapshot")
    token = random_hex(3)
    directory = str(options.directory) if options.directory is not None else None
    member.overlays = tuple(
        (target, _overlay_for(vm.name, disk.source or "", name, token, directory))
        for target, disk in sorted(disks.items())
    )
    if options.memory:
        where = directory or str(Path(member.overlays[0][1]).parent)
        member.memory_file = memory_path(where, vm.name, name, token)
    member.wants_freeze = _wants_freeze(member, options)
    member.facts = SnapshotFacts(
        expires=int(now.timestamp()) + options.expire if options.expire else None,
        group=group,
        members=tuple(names) if group else (),
    )


def _overlay_for(vm: str, source: str, name: str, token: str, directory: str | None) -> str:
    """Next to the disk's top image, or in ``directory``: VMs share that one, so there the
    file names start with the VM's name (once, however many snapshots follow)."""
    if directory is None:
        return overlay_path(source, name, token)
    prefix = safe_component(vm) + "-"
    stem = image_stem(source)
    base = stem if stem.startswith(prefix) else prefix + stem
    return overlay_path(str(Path(directory) / base), name, token)


def _refuse_unsupported(vm: VmInfo, options: SnapshotOptions) -> None:
    """Disks an overlay cannot go on (or next to) make the whole snapshot impossible:
    leaving them out would make a revert bring back a mix of old and new data."""
    for disk in vm.disks:
        if disk.device not in (DiskDevice.DISK, DiskDevice.LUN) or disk.readonly:
            continue
        if disk.source_type not in (SourceType.FILE, SourceType.BLOCK) or disk.source is None:
            raise UsageError(
                f"{vm.name!r}: {disk.target} is a {disk.source_type.value} disk; vmkeep "
                "snapshots file and block disks only"
            )
        if disk.source_type is SourceType.BLOCK and options.directory is None:
            raise UsageError(
                f"{vm.name!r}: {disk.target} is a block device; give --dir for its overlay"
            )


def _wants_freeze(member: _Member, options: SnapshotOptions) -> bool:
    vm = member.vm
    if options.memory or not vm.state.is_active or options.quiesce is False:
        return False
    if options.quiesce is None and vm.agent is not AgentStatus.RESPONDING:
        member.warnings.append("no guest agent: crash-consistent snapshot")
        return False
    return True


def _check_space(hv: Hypervisor, members: Sequence[_Member]) -> None:
    """Refuse before anything starts when a filesystem clearly lacks the room."""
    demands = []
    for member in members:
        for _target, path in member.overlays:
            space = hv.free_space(str(Path(path).parent))
            demands.append(SpaceDemand(space.filesystem, space.free, overlays=1))
        if member.memory_file:
            space = hv.free_space(str(Path(member.memory_file).parent))
            memory = max(member.vm.memory, member.vm.max_memory)
            demands.append(SpaceDemand(space.filesystem, space.free, memory=memory, memory_files=1))
    shortfalls = space_shortfalls(demands)
    if shortfalls:
        raise StoreFullError("not enough free space for the snapshot: " + "; ".join(shortfalls))


@contextlib.contextmanager
def _frozen(hv: Hypervisor, members: Sequence[_Member], timeout: int) -> Iterator[None]:
    """Freeze every member that wants it, run the block, thaw all of them whatever happens.
    A guest whose agent fails or hangs (``timeout`` s) is snapshotted crash-consistent."""
    try:
        for member in members:
            if not member.wants_freeze:
                continue
            try:
                hv.freeze_filesystems(member.vm.name, timeout)
            except GuestAgentError as exc:
                member.warnings.append(f"could not quiesce ({exc}): crash-consistent snapshot")
                # The freeze may still land after the timeout: thawing is always safe.
                with contextlib.suppress(VmkeepError):
                    hv.thaw_filesystems(member.vm.name, timeout)
                continue
            member.frozen = True
            member.thawed = False
        yield
    finally:
        for member in members:
            if member.frozen and not member.thawed:
                try:
                    hv.thaw_filesystems(member.vm.name, timeout)
                    member.thawed = True
                except VmkeepError as exc:
                    member.warnings.append(f"thaw failed: {exc}")
                    log.error("could not thaw %s: %s", member.vm.name, exc)


def _take(hv: Hypervisor, member: _Member, name: str) -> CreatedSnapshot:
    facts = dataclasses.replace(member.facts, quiesced=member.frozen)
    request = SnapshotRequest(name, encode_facts(facts), member.overlays, member.memory_file)
    started = time.monotonic()
    snapshot = hv.create_snapshot(member.vm.name, request)
    seconds = round(time.monotonic() - started, 3)
    return CreatedSnapshot(snapshot, member.frozen, tuple(member.warnings), seconds)


def _roll_back(hv: Hypervisor, vms: Sequence[str], name: str) -> None:
    """Delete the snapshots a failed group already took (best effort: the original error is
    what the user must see)."""
    for vm in vms:
        try:
            hv.delete_snapshot(vm, name)
        except VmkeepError as exc:
            log.error("could not undo snapshot %r of %s: %s", name, vm, exc)


@dataclass(frozen=True, slots=True)
class DiskChain:
    """One disk's images as the VM uses them now, the active image first."""

    target: str
    images: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class VmSnapshots:
    """What ``vmkeep snapshot list`` shows for one VM: its snapshots in tree order (parents
    before children) and the chain each disk reads through."""

    vm: str
    state: VmState
    entries: tuple[TreeEntry, ...]
    chains: tuple[DiskChain, ...]


def list_snapshots(hv: Hypervisor, name: str | None = None) -> list[VmSnapshots]:
    """The snapshots of ``name``, or of every VM that has any (sorted by name). Raises
    VmNotFoundError for an unknown VM."""
    vms = [hv.get_vm(name)] if name is not None else hv.list_vms()
    found = []
    for vm in vms:
        try:
            snapshots = hv.list_snapshots(vm.name)
        except VmNotFoundError:
            if name is not None:
                raise
            continue  # undefined while we were looking
        if name is None and not snapshots:
            continue
        chains = tuple(
            DiskChain(target, (disk.source or "", *(b.source for b in disk.backing_chain)))
            for target, disk in sorted(snapshot_disks(vm.disks).items())
        )
        found.append(VmSnapshots(vm.name, vm.state, tuple(tree_order(snapshots)), chains))
    return found
