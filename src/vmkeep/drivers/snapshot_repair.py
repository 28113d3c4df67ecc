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
        else:
            raise HypervisorError(
                f"{disk.target} of {dom.name()!r} has a block job vmkeep does not start (type "
                f"{kind}); finish or abort it with `virsh blockjob`"
            )
    return done


def remove_stray_files(dom: Any) -> list[str]:
    """Remove overlays and memory states vmkeep made for this VM that neither the VM nor any
    snapshot uses; return their paths."""
    vm = dom.name()
    documents = {n: xml for n, (xml, _current) in libvirt_snapshots.snapshot_documents(dom).items()}
    snapshots = libvirt_snapshots.list_snapshots(dom)
    with translated(f"reading the definition of {vm!r}"):
        xml = dom.XMLDesc(0)
        uuid = dom.UUIDString()
    disks = snapshot_disks(domain_xml.parse_domain(xml).disks)
    known = [d.source for d in disks.values() if d.source]
    known += [p for s in snapshots for d in s.disks for p in (d.frozen, d.overlay) if p]
    memory_files = {os.path.realpath(s.memory_file) for s in snapshots if s.memory_file}
    directories = {str(Path(p).parent) for p in [*known, *memory_files]}
    try:
        in_use = image_merge.files_in_use(dom, documents)
        chains = {
            os.path.realpath(layer.path)
            for path in known
            if Path(path).exists()
            for layer in overlays.image_chain(path)
        }
    except VmkeepError as exc:
        log.warning("not looking for stray files of %s: %s", vm, exc)
        return []
    in_use |= {i for i in (overlays.file_identity(p) for p in known) if i is not None}
    overlay_name = _overlay_pattern({image_stem(p) for p in chains} | _dir_stems(vm, chains))
    memory_name = re.compile(
        rf"^{re.escape(safe_component(vm))}\.[A-Za-z0-9_+-]+\.[0-9a-f]{{6}}\.mem$"
    )
    strays = []
    for directory in sorted(directories):
        for entry in sorted(Path(directory).iterdir()) if Path(directory).is_dir() else []:
            path = str(entry)
            if overlays.file_identity(path) in in_use or os.path.realpath(path) in memory_files:
                continue
            ours = (overlay_name.match(entry.name) and _backed_by(path, chains)) or (
                memory_name.match(entry.name) and _saved_from(path, uuid)
            )
            if ours:
                strays.append(path)
    return overlays.remove_images(strays, in_use)


def _dir_stems(vm: str, chains: set[str]) -> set[str]:
    """Overlays made with ``--dir`` start with the VM's name: ``<vm>-vda``."""
    prefix = safe_component(vm) + "-"
    return {prefix + image_stem(p) for p in chains}


def _overlay_pattern(stems: set[str]) -> re.Pattern[str]:
    alternatives = "|".join(sorted(re.escape(s) for s in stems)) or "(?!)"
    return re.compile(rf"^(?:{alternatives})\.(?:revert-)?[A-Za-z0-9_+-]+\.[0-9a-f]{{6}}\.qcow2$")


def _backed_by(path: str, chains: set[str]) -> bool:
    """Whether the image's backing chain reaches one of the VM's images."""
    try:
        layers = overlays.image_chain(path)
    except VmkeepError:
        return False
    return any(os.path.realpath(layer.path) in chains for layer in layers[1:])


def _saved_from(path: str, uuid: str) -> bool:
    """Whether a memory state file was saved from the domain with this UUID."""
    try:
        with Path(path).open("rb") as state:
            header = state.read(_SAVE_HEADER_BYTES)
    except OSError:
        return False
    return f"<uuid>{uuid}</uuid>".encode() in header
