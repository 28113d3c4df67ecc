"""Finishing what a killed vmkeep left on a VM's disks: block commits still running or
waiting for their pivot, and overlay or memory files it made that nothing uses any more.

Callers hold the VM's host lock, so no vmkeep process is working on the VM: any block commit
on its disks was left by an interrupted ``snapshot delete`` (or started by hand), and a file
with vmkeep's naming that no disk and no snapshot reads was left by an interrupted create or
revert. Files are only removed when they are provably this VM's: an overlay whose backing
chain reaches one of the VM's images, a memory state whose saved definition carries the VM's
UUID.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import libvirt

from vmkeep.domain.errors import HypervisorError, VmkeepError
from vmkeep.domain.snapshots import image_stem, safe_component, snapshot_disks
from vmkeep.drivers import domain_xml, image_merge, libvirt_snapshots, overlays
from vmkeep.drivers.image_merge import translated

log = logging.getLogger(__name__)

_SAVE_HEADER_BYTES = 1 << 20
"""libvirt's save image starts with a header and the domain XML: the UUID is in there."""


def finish_block_jobs(dom: Any) -> list[str]:
    """Complete the block commits on the running VM's disks (pivoting an active commit once
    it is ready) and return what was done. Raises HypervisorError for another kind of job:
    vmkeep never starts one, so it is someone else's to finish."""
    with translated(f"reading the state of {dom.name()!r}"):
        if not dom.isActive():
            return []
        disks = domain_xml.parse_domain(dom.XMLDesc(0)).disks
    done = []
    for disk in disks:
        with translated(f"reading the block jobs of {dom.name()!r}"):
            info = dom.blockJobInfo(disk.target, 0)
        if not info:
            continue
        kind = info.get("type")
        if kind == libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT:
            image_merge.wait_for_job(dom, disk.target, pivot=True)
            done.append(f"{disk.target}: finished an interrupted block commit (pivoted)")
        elif kind == libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_COMMIT:
            image_merge.wait_for_job(dom, disk.target, pivot=False)
            done.append(f"{disk.target}: waited for an interrupted block commit to finish")
        elif kind == getattr(libvirt, "VIR_DOMAIN_BLOCK_JOB_TYPE_BACKUP", 6):
            # A killed `vmkeep backup` left its pull-mode job; pull jobs end with abortJob
            # (the next backup deletes the checkpoint no manifest names).
            with translated(f"ending the backup job left on {dom.name()!r}"):
                dom.abortJob()
            done.append("ended a backup job an interrupted backup left running")
        else:
            raise HypervisorError(
                f"{disk.target} of {dom.name()!r} has a block job vmkeep does not start (type "
                f"{kind}); finish or abort it with `virsh blockjob`"
            )
    return done


def remove_stray_files(dom: Any) -> list[str]:
    """Remove overlays and memory states vmkeep made for this VM that nothing uses; return
    their paths.

    An overlay counts as this VM's only if its name has the stem of one of the VM's own
    images (its disks and its snapshots' images, not the shared images below them) and its
    *direct* backing file is one of those images; and nothing on the host may use it: the
    files every domain and every snapshot reads are protected, not just this VM's (a linked
    clone shares images with its template, and the template's overlays must survive).
    """
    vm = dom.name()
    snapshots = libvirt_snapshots.list_snapshots(dom)
    with translated(f"reading the definition of {vm!r}"):
        xml = dom.XMLDesc(0)
        uuid = dom.UUIDString()
    disks = snapshot_disks(domain_xml.parse_domain(xml).disks)
    own = [d.source for d in disks.values() if d.source]
    own += [p for s in snapshots for d in s.disks for p in (d.frozen, d.overlay) if p]
    own_real = {os.path.realpath(p) for p in own}
    memory_files = {os.path.realpath(s.memory_file) for s in snapshots if s.memory_file}
    directories = {str(Path(p).parent) for p in [*own, *memory_files]}
    try:
        in_use = _used_on_host(dom.connect())
    except VmkeepError as exc:
        log.warning("not looking for stray files of %s: %s", vm, exc)
        return []
    in_use |= {i for i in (overlays.file_identity(p) for p in own) if i is not None}
    overlay_name = _overlay_pattern({image_stem(p) for p in own} | _dir_stems(vm, own))
    memory_name = re.compile(
        rf"^{re.escape(safe_component(vm))}\.[A-Za-z0-9_+-]+\.[0-9a-f]{{6}}\.mem$"
    )
    strays = []
    for directory in sorted(directories):
        for entry in sorted(Path(directory).iterdir()) if Path(directory).is_dir() else []:
            path = str(entry)
            if overlays.file_identity(path) in in_use or os.path.realpath(path) in memory_files:
                continue
            ours = (overlay_name.match(entry.name) and _backed_by(path, own_real)) or (
                memory_name.match(entry.name) and _saved_from(path, uuid)
            )
            if ours:
                strays.append(path)
    return overlays.remove_images(strays, in_use)


def _used_on_host(conn: Any) -> set[tuple[int, int]]:
    """Identities of every image any domain on this connection reads, or any of its
    snapshots needs (with their backing chains), and of every snapshot memory file."""
    used: set[tuple[int, int]] = set()
    with translated("listing the domains"):
        domains = conn.listAllDomains(0)
    for other in domains:
        texts = {n: x for n, (x, _c) in libvirt_snapshots.snapshot_documents(other).items()}
        used |= image_merge.files_in_use(other, texts)
        for snap in libvirt_snapshots.list_snapshots(other):
            for path in [snap.memory_file, *(d.overlay for d in snap.disks)]:
                identity = overlays.file_identity(path) if path else None
                if identity is not None:
                    used.add(identity)
    return used


def _dir_stems(vm: str, images: Iterable[str]) -> set[str]:
    """Overlays made with ``--dir`` start with the VM's name: ``<vm>-vda``."""
    prefix = safe_component(vm) + "-"
    return {prefix + image_stem(p) for p in images}


def _overlay_pattern(stems: set[str]) -> re.Pattern[str]:
    alternatives = "|".join(sorted(re.escape(s) for s in stems)) or "(?!)"
    return re.compile(rf"^(?:{alternatives})\.(?:revert-)?[A-Za-z0-9_+-]+\.[0-9a-f]{{6}}\.qcow2$")


def _backed_by(path: str, own: set[str]) -> bool:
    """Whether the image's direct backing file is one of the VM's own images."""
    try:
        layers = overlays.image_chain(path)
    except VmkeepError:
        return False
    return len(layers) > 1 and os.path.realpath(layers[1].path) in own


def _saved_from(path: str, uuid: str) -> bool:
    """Whether a memory state file was saved from the domain with this UUID."""
    try:
        with Path(path).open("rb") as state:
            header = state.read(_SAVE_HEADER_BYTES)
    except OSError:
        return False
    return f"<uuid>{uuid}</uuid>".encode() in header
