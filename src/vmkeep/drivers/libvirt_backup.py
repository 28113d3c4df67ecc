"""libvirt pull-mode backups: begin a job with an atomic checkpoint, export the disks over NBD,
end the job.

QEMU serves the exports on a Unix socket in the job's work directory; because QEMU runs as the
domain's DAC user (libvirt-qemu), that directory is handed to that user (mode 0700), and the
scratch files that keep the point-in-time view while the guest goes on writing live there
too. libvirt creates and removes the scratch files itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import nbd

from vmkeep.domain.backup import BackupJobRequest
from vmkeep.domain.errors import HypervisorError
from vmkeep.drivers.nbd_client import NbdReader, connect_pool
from vmkeep.drivers.process import run_tool

log = logging.getLogger(__name__)

SOCKET_NAME = "nbd.sock"
_DAC_LABEL = re.compile(r"^\+?(\d+):\+?(\d+)$")


def qemu_owner(live_xml: str) -> tuple[int, int] | None:
    """The uid and gid QEMU runs as for this domain (its DAC seclabel), or None for root or
    when the domain does not say."""
    root = ET.fromstring(live_xml)  # noqa: S314 - XML from the local libvirt daemon
    for seclabel in root.iterfind("seclabel"):
        if seclabel.get("model") == "dac":
            match = _DAC_LABEL.match(seclabel.findtext("label", ""))
            if match:
                return int(match.group(1)), int(match.group(2))
    return None


def backup_xml(request: BackupJobRequest, workdir: Path) -> str:
    """The ``<domainbackup mode='pull'>`` document for ``request``."""
    backup = ET.Element("domainbackup", mode="pull")
    if request.incremental_from is not None:
        ET.SubElement(backup, "incremental").text = request.incremental_from
    ET.SubElement(backup, "server", transport="unix", socket=str(workdir / SOCKET_NAME))
    disks = ET.SubElement(backup, "disks")
    for job in request.disks:
        mode = "incremental" if job.incremental and request.incremental_from else "full"
        disk = ET.SubElement(
            disks, "disk", name=job.target, backup="yes", type="file", backupmode=mode
        )
        ET.SubElement(disk, "scratch", file=str(workdir / f"{job.target}.scratch"))
    return ET.tostring(backup, encoding="unicode")


def checkpoint_xml(request: BackupJobRequest, all_targets: list[str]) -> str:
    """The ``<domaincheckpoint>`` document: a bitmap on every backed-up disk that can hold
    one, nothing on the others."""
    checkpoint = ET.Element("domaincheckpoint")
    ET.SubElement(checkpoint, "name").text = request.checkpoint
    ET.SubElement(checkpoint, "description").text = "created by vmkeep for incremental backups"
    disks = ET.SubElement(checkpoint, "disks")
    tracked = {job.target for job in request.disks if job.with_checkpoint}
    for target in all_targets:
        mode = "bitmap" if target in tracked else "no"
        ET.SubElement(disks, "disk", name=target, checkpoint=mode)
    return ET.tostring(checkpoint, encoding="unicode")


def _disk_targets(live_xml: str) -> list[str]:
    root = ET.fromstring(live_xml)  # noqa: S314 - XML from the local libvirt daemon
    return [
        target.get("dev", "")
        for disk in root.iterfind("devices/disk")
        if disk.get("device", "disk") in ("disk", "lun")
        for target in disk.iterfind("target")
    ]


class LibvirtExport:
    """BackupExport of a running pull-mode job."""

    def __init__(self, workdir: Path, request: BackupJobRequest) -> None:
        self._socket = workdir / SOCKET_NAME
        self._incremental = {
            job.target: job.incremental and request.incremental_from is not None
            for job in request.disks
        }

    @contextlib.contextmanager
    def open_disk(self, target: str, connections: int = 4) -> Iterator[NbdReader]:
        if target not in self._incremental:
            raise HypervisorError(f"disk {target} is not part of this backup job")
        # libvirt names the export after the disk, and its bitmap "backup-<disk>".
        dirty = f"qemu:dirty-bitmap:backup-{target}" if self._incremental[target] else None
        contexts = (nbd.CONTEXT_BASE_ALLOCATION,) + ((dirty,) if dirty else ())
        pool = connect_pool(self._socket, connections, export_name=target, contexts=contexts)
        try:
            yield NbdReader(pool, dirty)
        finally:
            pool.close(flush=False)


def _translate(action: str, exc: libvirt.libvirtError) -> HypervisorError:
    return HypervisorError(f"{action}: {exc.get_error_message() or exc}")


def job_active(dom: Any) -> bool:
    """Whether the domain has a backup job (libvirt answers backupGetXMLDesc only then)."""
    try:
        dom.backupGetXMLDesc(0)
    except libvirt.libvirtError:
        return False
    return True


def end_job(dom: Any) -> None:
    """End the domain's backup job; pull-mode jobs end by being aborted. Idempotent."""
    try:
        dom.abortJob()
    except libvirt.libvirtError as exc:
        if job_active(dom):
            raise _translate(f"ending the backup job of {dom.name()!r}", exc) from exc


def delete_checkpoint(dom: Any, name: str) -> None:
    """Delete a checkpoint if it exists.

    libvirt 9 deletes checkpoints of running domains only. For a shut-off domain vmkeep
    removes the checkpoint's bitmaps from the qcow2 images itself (``qemu-img bitmap
    --remove``) and then libvirt's metadata, leaving the same state behind.
    """
    try:
        checkpoint = dom.checkpointLookupByName(name, 0)
    except libvirt.libvirtError:
        return
    try:
        if dom.isActive():
            checkpoint.delete(0)
            return
        for image in _qcow2_images(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)):
            _remove_bitmap(image, name)
        checkpoint.delete(libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY)
    except libvirt.libvirtError as exc:
        raise _translate(f"deleting checkpoint {name} of {dom.name()!r}", exc) from exc


def _qcow2_images(xml: str) -> list[str]:
    root = ET.fromstring(xml)  # noqa: S314 - XML from the local libvirt daemon
    images = []
    for disk in root.iterfind("devices/disk"):
        driver, source = disk.find("driver"), disk.find("source")
        if driver is not None and driver.get("type") == "qcow2" and source is not None:
            path = source.get("file") or source.get("dev")
            if path:
                images.append(path)
    return images


def _remove_bitmap(image: str, bitmap: str) -> None:
    """Remove a persistent bitmap from a qcow2 image no QEMU has open; absent is fine."""
    info = json.loads(run_tool(["qemu-img", "info", "--output=json", "-U", image], timeout=60))
    names = {
        b.get("name") for b in info.get("format-specific", {}).get("data", {}).get("bitmaps", [])
    }
    if bitmap in names:
        run_tool(["qemu-img", "bitmap", "--remove", image, bitmap], timeout=60)


@contextlib.contextmanager
def pull_backup(dom: Any, request: BackupJobRequest) -> Iterator[LibvirtExport]:
    """See ports.Hypervisor.backup_job."""
    live_xml = dom.XMLDesc(0)
    workdir = Path(request.workdir)
    workdir.mkdir(mode=0o700, parents=True, exist_ok=False)
    try:
        owner = qemu_owner(live_xml)
        if owner is not None:
            os.chown(workdir, *owner)
        try:
            dom.backupBegin(
                backup_xml(request, workdir), checkpoint_xml(request, _disk_targets(live_xml)), 0
            )
        except libvirt.libvirtError as exc:
            raise _translate(f"starting the backup of {request.vm!r}", exc) from exc
        try:
            yield LibvirtExport(workdir, request)
        except BaseException:
            with contextlib.suppress(HypervisorError):
                end_job(dom)
            with contextlib.suppress(HypervisorError):
                delete_checkpoint(dom, request.checkpoint)
            raise
        end_job(dom)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
