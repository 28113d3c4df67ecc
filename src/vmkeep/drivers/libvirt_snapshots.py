"""External snapshots over libvirt-python, including what libvirt 9.0 cannot do for them.

* Create: ``virDomainSnapshotCreateXML`` with ``DISK_ONLY|ATOMIC`` (disks) or ``LIVE|ATOMIC``
  with ``<memory snapshot='external'>`` (disks and RAM, saved while the guest runs).
* Revert: libvirt 9.0 refuses external snapshots, so vmkeep stops the VM, puts new overlays
  on the snapshot's frozen images, redefines the domain on them and then boots it, or for a
  memory snapshot restores the saved state with ``virDomainRestoreFlags`` and an XML whose
  disks point at the new overlays. Later snapshots keep their images: the tree branches.
* Delete: the snapshot's metadata goes first (so a half-done delete can never offer a revert
  to content that has changed), then ``image_merge`` removes the images nobody needs and
  merges those only the deleted snapshot needed.

libvirt errors become vmkeep errors here; nothing above sees ``libvirt.libvirtError``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import libvirt

from vmkeep.domain.errors import (
    AlreadyExistsError,
    HypervisorError,
    NotFoundError,
    UsageError,
    VmkeepError,
)
from vmkeep.domain.inventory import DiskInfo
from vmkeep.domain.snapshots import (
    FreeSpace,
    RevertState,
    Snapshot,
    SnapshotDeletion,
    SnapshotFacts,
    SnapshotKind,
    SnapshotRequest,
    encode_facts,
    layout_changes,
    overlay_path,
    snapshot_disks,
)
from vmkeep.domain.tokens import random_hex
from vmkeep.drivers import domain_xml, image_merge, overlays, snapshot_xml
from vmkeep.drivers.image_merge import redefine_snapshot, translated

log = logging.getLogger(__name__)


# -- reading ------------------------------------------------------------------------------------


def snapshot_documents(dom: Any) -> dict[str, tuple[str, bool]]:
    """``{name: (xml, current)}`` for every snapshot of the domain."""
    with translated(f"listing the snapshots of {dom.name()!r}"):
        return {
            snap.getName(): (snap.getXMLDesc(0), bool(snap.isCurrent(0)))
            for snap in dom.listAllSnapshots(0)
        }


def _parsed(dom: Any, documents: dict[str, tuple[str, bool]]) -> dict[str, Snapshot]:
    vm = dom.name()
    return {
        name: snapshot_xml.parse_snapshot(xml, vm, current)
        for name, (xml, current) in documents.items()
    }


def _with_sizes(snapshot: Snapshot) -> Snapshot:
    disks = tuple(
        dataclasses.replace(d, overlay_bytes=overlays.actual_size(d.overlay) if d.overlay else None)
        for d in snapshot.disks
    )
    return dataclasses.replace(snapshot, disks=disks)


def list_snapshots(dom: Any) -> list[Snapshot]:
    """See ports.Hypervisor.list_snapshots."""
    found = [_with_sizes(s) for s in _parsed(dom, snapshot_documents(dom)).values()]
    return sorted(found, key=lambda s: (s.created or 0, s.name))


def _find(dom: Any, documents: dict[str, tuple[str, bool]], name: str) -> Snapshot:
    if name not in documents:
        raise NotFoundError(f"{dom.name()!r} has no snapshot named {name!r}")
    xml, current = documents[name]
    snapshot = snapshot_xml.parse_snapshot(xml, dom.name(), current)
    if not snapshot.external:
        raise UsageError(
            f"{name!r} is an internal snapshot; vmkeep manages external snapshots only "
            "(use virsh snapshot-revert / snapshot-delete for it)"
        )
    return snapshot


def _busy_disks(dom: Any, targets: Sequence[str]) -> list[str]:
    busy = []
    for target in targets:
        try:
            info = dom.blockJobInfo(target, 0)
        except libvirt.libvirtError:
            continue
        if info:
            busy.append(target)
    return busy


def _refuse_busy(dom: Any, targets: Sequence[str]) -> None:
    """Refuse to touch a VM that a block job or a domain job (a backup) is working on:
    stopping it or committing under it would break that job or this one."""
    busy = _busy_disks(dom, targets)
    if busy:
        raise HypervisorError(
            f"a block job is running on {', '.join(busy)} of {dom.name()!r}; if a snapshot "
            f"delete was interrupted, `vmkeep snapshot repair {dom.name()}` finishes it"
        )
    try:
        job = dom.jobInfo()[0]
    except libvirt.libvirtError:
        return
    if job != libvirt.VIR_DOMAIN_JOB_NONE:
        raise HypervisorError(
            f"{dom.name()!r} has a job running (a backup?); try again when it has finished"
        )


# -- create -------------------------------------------------------------------------------------


def create_snapshot(dom: Any, request: SnapshotRequest) -> Snapshot:
    """See ports.Hypervisor.create_snapshot."""
    vm = dom.name()
    if request.name in snapshot_documents(dom):
        raise AlreadyExistsError(f"{vm!r} already has a snapshot named {request.name!r}")
    files = [path for _, path in request.overlays]
    if request.memory_file:
        files.append(request.memory_file)
    for path in files:
        if Path(path).exists():
            raise AlreadyExistsError(f"{path} already exists")
    with translated(f"reading the definition of {vm!r}"):
        targets = [d.target for d in domain_xml.parse_domain(dom.XMLDesc(0)).disks]
    document = snapshot_xml.snapshot_xml(request, targets)
    flags = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
    if request.memory_file:
        flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_LIVE
    else:
        flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
    try:
        with translated(f"snapshotting {vm!r}"):
            snap = dom.snapshotCreateXML(document, flags)
    except HypervisorError:
        # ATOMIC means libvirt rolled back; make sure none of our files survive either.
        _remove_unused(dom, files)
        raise
    with translated(f"reading snapshot {request.name!r} of {vm!r}"):
        xml, current = snap.getXMLDesc(0), bool(snap.isCurrent(0))
    return _with_sizes(snapshot_xml.parse_snapshot(xml, vm, current))


def _remove_unused(dom: Any, paths: Sequence[str]) -> list[str]:
    """Remove those of ``paths`` that no disk of the domain uses (in clean-ups after a
    failure: whatever happened, a file the VM uses must stay). When that cannot be told,
    nothing is removed."""
    try:
        in_use = image_merge.files_in_use(dom, {})
    except VmkeepError as exc:
        log.warning("leaving %s in place: cannot tell whether it is in use (%s)", paths, exc)
        return []
    return overlays.remove_images(paths, in_use)


# -- delete -------------------------------------------------------------------------------------


def delete_snapshot(dom: Any, name: str) -> SnapshotDeletion:
    """See ports.Hypervisor.delete_snapshot."""
    documents = snapshot_documents(dom)
    doomed = _find(dom, documents, name)
    parsed = _parsed(dom, documents)
    keep = [s for n, s in parsed.items() if n != name]
    with translated(f"reading the disks of {dom.name()!r}"):
        disks = snapshot_disks(domain_xml.parse_domain(dom.XMLDesc(0)).disks)
        running = bool(dom.isActive())
    if running:
        _refuse_busy(dom, list(disks))
    plans = image_merge.plan_images(disks, list(parsed.values()), keep)
    _mark_deleting(dom, doomed, documents)
    texts = {s.name: documents[s.name][0] for s in keep}
    outcome = image_merge.execute(dom, plans, texts)
    for snap in keep:  # execute() may have rewritten them
        documents[snap.name] = (texts[snap.name], documents[snap.name][1])
    _forget(dom, doomed, parsed, documents)
    removed = []
    if doomed.memory_file:
        removed += overlays.remove_images([doomed.memory_file], protected=set())
    return SnapshotDeletion(outcome.merged, tuple(removed) + outcome.removed)


def _mark_deleting(dom: Any, doomed: Snapshot, documents: dict[str, tuple[str, bool]]) -> None:
    """Record in the snapshot's own metadata that its images are being merged, before any
    is touched: if vmkeep dies part-way, the snapshot is still listed (as being deleted),
    is never reverted to, and ``snapshot repair`` runs the (idempotent) delete again."""
    if doomed.facts is not None and doomed.facts.deleting:
        return
    facts = dataclasses.replace(doomed.facts or SnapshotFacts(), deleting=True)
    xml = snapshot_xml.rewrite_snapshot(documents[doomed.name][0], description=encode_facts(facts))
    redefine_snapshot(dom, xml, current=doomed.current)
    documents[doomed.name] = (xml, doomed.current)


def _forget(
    dom: Any,
    doomed: Snapshot,
    parsed: dict[str, Snapshot],
    documents: dict[str, tuple[str, bool]],
) -> None:
    """Remove the snapshot's metadata. Its children move up to its parent first (libvirt
    would make them roots), and its parent becomes current if it was (libvirt would leave
    no current snapshot, and the next snapshot would have no parent)."""
    for child in parsed.values():
        if child.parent == doomed.name:
            xml = snapshot_xml.rewrite_snapshot(documents[child.name][0], parent=doomed.parent)
            redefine_snapshot(dom, xml)
            documents[child.name] = (xml, child.current)
    with translated(f"deleting snapshot {doomed.name!r} of {dom.name()!r}"):
        snap = dom.snapshotLookupByName(doomed.name, 0)
        snap.delete(libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
    if doomed.current and doomed.parent in documents:
        redefine_snapshot(dom, documents[doomed.parent][0], current=True)


# -- revert -------------------------------------------------------------------------------------


def revert_snapshot(dom: Any, name: str, state: RevertState) -> float:
    """See ports.Hypervisor.revert_snapshot."""
    vm = dom.name()
    documents = snapshot_documents(dom)
    snapshot = _find(dom, documents, name)
    if snapshot.kind is SnapshotKind.MEMORY and state is RevertState.SHUTOFF:
        raise UsageError("a memory snapshot reverts to a running or paused VM")
    with translated(f"reading the definition of {vm!r}"):
        if not dom.isPersistent():
            raise UsageError(f"{vm!r} is transient; vmkeep reverts persistent VMs only")
        flags = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE
        inactive = dom.XMLDesc(flags)
        running = bool(dom.isActive())
        disks = snapshot_disks(domain_xml.parse_domain(dom.XMLDesc(0)).disks)
        if dom.hasManagedSaveImage(0):
            # Starting would resume that saved state instead of the snapshot's.
            raise UsageError(f"{vm!r} has a managed save image; start it or remove it first")
    _check_revertible(vm, snapshot, disks)
    if running:
        _refuse_busy(dom, list(disks))
    token = random_hex(3)
    new = {
        d.target: overlay_path(
            d.frozen,
            name,
            token,
            directory=str(Path(d.overlay).parent) if d.overlay else None,
            prefix="revert-",
        )
        for d in snapshot.disks
    }
    created: list[str] = []
    try:
        for disk in snapshot.disks:
            overlays.create_overlay(new[disk.target], disk.frozen, disk.frozen_format)
            created.append(new[disk.target])
        started = time.monotonic()
        _switch(dom, inactive, {t: (p, "qcow2") for t, p in new.items()}, snapshot, state, running)
        downtime = time.monotonic() - started
    except BaseException:
        _remove_unused(dom, created)
        raise
    _after_revert(dom, snapshot, documents, new, {t: d.source or "" for t, d in disks.items()})
    return downtime


def _check_revertible(vm: str, snapshot: Snapshot, disks: dict[str, DiskInfo]) -> None:
    changes = layout_changes(disks, [d.target for d in snapshot.disks])
    if changes:
        raise UsageError(
            f"the disks of {vm!r} changed since snapshot {snapshot.name!r}: "
            f"{'; '.join(changes)}; refusing to revert"
        )
    for disk in snapshot.disks:
        if not Path(disk.frozen).exists():
            raise NotFoundError(f"{disk.frozen} ({disk.target} of {snapshot.name!r}) is missing")
    if snapshot.memory_file and not Path(snapshot.memory_file).exists():
        raise NotFoundError(f"the memory state {snapshot.memory_file} is missing")


def _switch(
    dom: Any,
    inactive: str,
    images: dict[str, tuple[str, str]],
    snapshot: Snapshot,
    state: RevertState,
    running: bool,
) -> None:
    """Stop the VM, define it on ``images``, and restore or start it. On failure the old
    definition comes back and the VM is started again on its old disks if it was running."""
    conn = dom.connect()
    vm = dom.name()
    with translated(f"stopping {vm!r}"):
        if running:
            dom.destroy()
    try:
        with translated(f"redefining {vm!r} on the new overlays"):
            conn.defineXML(snapshot_xml.repoint_domain(inactive, images))
        if snapshot.memory_file:
            with translated(f"restoring the memory of {vm!r} from {snapshot.memory_file}"):
                saved = conn.saveImageGetXMLDesc(
                    snapshot.memory_file, libvirt.VIR_DOMAIN_SAVE_IMAGE_XML_SECURE
                )
                paused = state is RevertState.PAUSED
                flag = libvirt.VIR_DOMAIN_SAVE_PAUSED if paused else libvirt.VIR_DOMAIN_SAVE_RUNNING
                conn.restoreFlags(
                    snapshot.memory_file, snapshot_xml.repoint_domain(saved, images), flag
                )
        elif state is not RevertState.SHUTOFF:
            with translated(f"starting {vm!r}"):
                paused = state is RevertState.PAUSED
                dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED if paused else 0)
    except BaseException:
        _restore_definition(dom, inactive, running)
        raise


def _restore_definition(dom: Any, inactive: str, running: bool) -> None:
    """Best effort: the original error is what the user must see."""
    try:
        if dom.isActive():
            dom.destroy()
        dom.connect().defineXML(inactive)
        if running:
            dom.create()
    except libvirt.libvirtError as exc:
        log.error("could not bring %s back on its old disks: %s", dom.name(), exc)


def _after_revert(
    dom: Any,
    snapshot: Snapshot,
    documents: dict[str, tuple[str, bool]],
    new: dict[str, str],
    old_active: dict[str, str],
) -> None:
    """Record the new overlays and make the snapshot current (new snapshots become its
    children), then remove the images of the abandoned state. The revert has succeeded by
    now: a failure here is only a warning."""
    try:
        xml = snapshot_xml.rewrite_snapshot(documents[snapshot.name][0], overlays=new)
        redefine_snapshot(dom, xml, current=True)
        documents[snapshot.name] = (xml, True)
        parsed = _parsed(dom, documents)
        with translated(f"reading the disks of {dom.name()!r}"):
            disks = snapshot_disks(domain_xml.parse_domain(dom.XMLDesc(0)).disks)
        keep = list(parsed.values())
        plans = image_merge.plan_images(disks, keep, keep, extra_anchors=old_active)
        image_merge.execute(dom, plans, {n: x for n, (x, _c) in documents.items()})
    except VmkeepError as exc:
        log.warning(
            "reverted, but the snapshot metadata or old overlays were not all updated: %s", exc
        )


def free_space(directory: str) -> FreeSpace:
    """See ports.Hypervisor.free_space (the images of a local hypervisor are local files)."""
    return overlays.free_space(directory)
