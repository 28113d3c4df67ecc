"""Merging a VM's disk images away after a snapshot is deleted or a revert abandoned a
branch: reading the images' tree, planning (``domain.snapshot_chain``) and running the plan.

Images a running VM has open are merged inside QEMU (block commit; for the image the VM
writes to, an active commit and a pivot); all others with ``qemu-img commit``. Before an image
is removed, every snapshot naming it is redefined to name the image that now holds its
content. Files are compared by real path and by inode, so that no needed file is removed
because it was reached by another name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import libvirt

from vmkeep.domain.errors import HypervisorError, VmkeepError
from vmkeep.domain.inventory import DiskInfo
from vmkeep.domain.snapshot_chain import Commit, DiskLayers, DiskPlan, plan_disk
from vmkeep.domain.snapshots import Snapshot, SnapshotDeletion, snapshot_disks
from vmkeep.drivers import domain_xml, overlays, snapshot_xml

log = logging.getLogger(__name__)

_JOB_TIMEOUT = 6 * 3600.0


@contextlib.contextmanager
def translated(action: str) -> Iterator[None]:
    """Turn libvirt errors raised inside the block into HypervisorError."""
    try:
        yield
    except libvirt.libvirtError as exc:
        raise HypervisorError(f"{action}: {exc.get_error_message() or exc}") from exc


def redefine_snapshot(dom: Any, xml: str, current: bool = False) -> None:
    """Replace a snapshot's metadata (``REDEFINE``); a current snapshot stays current."""
    flags = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE
    if current:
        flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT
    with translated(f"updating snapshot metadata of {dom.name()!r}"):
        dom.snapshotCreateXML(xml, flags)


def _moves_for(snapshot: Snapshot, moved: dict[str, str]) -> dict[str, str]:
    """``moved`` (keyed by real path) in the spelling ``snapshot``'s XML uses."""
    found = {}
    for disk in snapshot.disks:
        for path in (disk.frozen, disk.overlay):
            if path and os.path.realpath(path) in moved:
                found[path] = moved[os.path.realpath(path)]
    return found


def read_layers(target: str, active: str, anchors: Sequence[str]) -> DiskLayers:
    """The disk's images reachable from its active image and the snapshots' images, keyed
    by real path so that two spellings of one file are one image."""
    backing: dict[str, str | None] = {}
    formats: dict[str, str] = {}
    for path in (active, *anchors):
        real = os.path.realpath(path)
        if real in backing or not Path(real).exists():
            continue
        for layer in overlays.image_chain(real):
            key = os.path.realpath(layer.path)
            backing[key] = os.path.realpath(layer.backing) if layer.backing else None
            formats[key] = layer.format
    return DiskLayers(target, os.path.realpath(active), backing, formats)


def plan_images(
    disks: dict[str, DiskInfo],
    snapshots: Sequence[Snapshot],
    keep: Sequence[Snapshot],
    extra_anchors: dict[str, str] | None = None,
) -> list[DiskPlan]:
    """A plan per disk that any snapshot (or ``extra_anchors``, target to image) covers."""
    plans = []
    for target, disk in sorted(disks.items()):
        anchors = [
            path
            for s in snapshots
            for d in s.disks
            if d.target == target
            for path in (d.frozen, d.overlay)
            if path
        ]
        if extra_anchors and target in extra_anchors:
            anchors.append(extra_anchors[target])
        if not anchors:
            continue
        frozen = [os.path.realpath(d.frozen) for s in keep for d in s.disks if d.target == target]
        layers = read_layers(target, disk.source or "", anchors)
        plans.append(plan_disk(layers, [os.path.realpath(a) for a in anchors], frozen))
    return plans


def files_in_use(dom: Any, keep: dict[str, str]) -> set[tuple[int, int]]:
    """Identities (device, inode) of every file the VM or a snapshot in ``keep`` (name to
    XML) reads now."""
    with translated(f"reading the disks of {dom.name()!r}"):
        disks = snapshot_disks(domain_xml.parse_domain(dom.XMLDesc(0)).disks)
    paths = [d.source or "" for d in disks.values()]
    paths += [d.frozen for xml in keep.values() for d in snapshot_xml.parse_snapshot(xml, "").disks]
    identities = set()
    for path in paths:
        chain = [path]
        try:
            chain += [layer.path for layer in overlays.image_chain(path)]
        except VmkeepError as exc:
            log.debug("cannot read the chain of %s: %s", path, exc)
        for image in chain:
            identity = overlays.file_identity(image)
            if identity is not None:
                identities.add(identity)
    return identities


def _live_names(dom: Any, target: str) -> dict[str, str]:
    """Real path to the spelling libvirt uses, for every image of the disk's live chain."""
    with translated(f"reading the disks of {dom.name()!r}"):
        parsed = domain_xml.parse_domain(dom.XMLDesc(0))
    disk = next((d for d in parsed.disks if d.target == target), None)
    if disk is None or disk.source is None:
        return {}
    chain = [disk.source, *(b.source for b in disk.backing_chain)]
    return {os.path.realpath(path): path for path in chain}


def wait_for_job(dom: Any, target: str, pivot: bool) -> None:
    """Wait until the disk's block job ends (or, with ``pivot``, is ready and pivoted)."""
    deadline = time.monotonic() + _JOB_TIMEOUT
    delay = 0.02
    while True:
        with translated(f"watching the block job on {target}"):
            info = dom.blockJobInfo(target, 0)
        if not info:
            return
        if pivot and info.get("cur") == info.get("end"):
            try:
                dom.blockJobAbort(target, libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
                return
            except libvirt.libvirtError as exc:
                # Not ready yet (QEMU reports readiness a moment after the counters meet).
                log.debug("pivot of %s not possible yet: %s", target, exc.get_error_message())
        if time.monotonic() > deadline:
            with contextlib.suppress(libvirt.libvirtError):
                dom.blockJobAbort(target, 0)
            raise HypervisorError(f"the block commit on {target} did not finish in time")
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def _commit_live(dom: Any, step: Commit) -> None:
    names = _live_names(dom, step.target)
    base, top = names.get(step.base), names.get(step.top)
    if base is None or top is None:
        raise HypervisorError(
            f"{step.target}: {step.top} or {step.base} is not in the running VM's chain"
        )
    action = f"committing {top} into {base} ({step.target} of {dom.name()!r})"
    with translated(action):
        if step.top_is_active:
            dom.blockCommit(step.target, base, None, 0, libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE)
        else:
            dom.blockCommit(step.target, base, top, 0, 0)
    wait_for_job(dom, step.target, pivot=step.top_is_active)
    # A finished job and a failed one look alike when polled: the chain tells which it was.
    if step.top in _live_names(dom, step.target):
        raise HypervisorError(f"{action} failed: {top} is still in the chain")


def _commit_offline(dom: Any, step: Commit) -> None:
    overlays.commit_offline(step.top, step.base)
    if step.top_is_active:
        with translated(f"pointing {step.target} of {dom.name()!r} at {step.base}"):
            xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE)
            images = {step.target: (step.base, step.base_format)}
            dom.connect().defineXML(snapshot_xml.repoint_domain(xml, images))


def _run_commit(dom: Any, step: Commit, running: bool) -> None:
    """Merge ``step.top`` into ``step.base`` and point every image above it at the base."""
    live = running and step.in_active_chain
    if live:
        _commit_live(dom, step)
    else:
        _commit_offline(dom, step)
    for child in step.children:
        if not (live and child == step.chain_child):  # QEMU repointed that one itself
            overlays.rebase_unsafe(child, step.base, step.base_format)


def execute(dom: Any, plans: Sequence[DiskPlan], keep: dict[str, str]) -> SnapshotDeletion:
    """Run the plans: remove what nobody needs, then merge, rewriting the metadata of the
    snapshots in ``keep`` (name to XML, updated in place) that name a merged image before it
    is removed. Before any removal the files still in use are looked up afresh: a file the VM
    or a remaining snapshot reads is never removed, whatever the plan says."""
    with translated(f"reading the state of {dom.name()!r}"):
        running = bool(dom.isActive())
    removed: list[str] = []
    merged: list[tuple[str, str]] = []
    for plan in plans:
        removed += overlays.remove_images(plan.remove, files_in_use(dom, keep))
        for step in plan.commits:
            _run_commit(dom, step, running)
            moved = {step.top: step.base}
            for name, xml in keep.items():
                changes = _moves_for(snapshot_xml.parse_snapshot(xml, dom.name()), moved)
                if changes:
                    keep[name] = snapshot_xml.rewrite_snapshot(xml, moved=changes)
                    redefine_snapshot(dom, keep[name])
            removed += overlays.remove_images([step.top], files_in_use(dom, keep))
            merged.append((step.top, step.base))
    return SnapshotDeletion(tuple(merged), tuple(removed))
