"""libvirt XML for external snapshots: writing ``<domainsnapshot>`` documents, reading them
into vmkeep's Snapshot values, rewriting them when images merge, and pointing a domain's
disks at new overlays.

Pure functions over strings, unit-tested without a daemon. The XML comes from libvirt (a
trusted local source) or from vmkeep itself, which is why the standard library parser is fine.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping

from vmkeep.domain.errors import HypervisorError
from vmkeep.domain.snapshots import (
    Snapshot,
    SnapshotDisk,
    SnapshotKind,
    SnapshotRequest,
    decode_facts,
)
from vmkeep.drivers.domain_xml import LAB_XMLNS

# Keep the lab metadata's prefix when a domain is rewritten, as domain_xml writes it.
ET.register_namespace("vmkeep", LAB_XMLNS)

KEEP_PARENT = object()
"""``rewrite_snapshot(parent=KEEP_PARENT)`` leaves the parent as it is."""


def _parse(xml: str, what: str) -> ET.Element:
    try:
        return ET.fromstring(xml)  # noqa: S314 - XML from the local libvirt daemon or vmkeep
    except ET.ParseError as exc:
        raise HypervisorError(f"unreadable {what} XML: {exc}") from exc


def _source_path(element: ET.Element | None) -> str | None:
    """The file or block device a ``<disk>`` (or snapshot ``<disk>``) reads from."""
    source = element.find("source") if element is not None else None
    if source is None:
        return None
    return source.get("file") or source.get("dev") or None


def snapshot_xml(request: SnapshotRequest, all_targets: Iterable[str]) -> str:
    """The ``<domainsnapshot>`` for ``request``: an external overlay for each requested
    disk, ``snapshot='no'`` for every other disk of the domain (cdroms, disks left out), and
    the memory state saved externally or not at all."""
    root = ET.Element("domainsnapshot")
    ET.SubElement(root, "name").text = request.name
    ET.SubElement(root, "description").text = request.description
    if request.memory_file is not None:
        ET.SubElement(root, "memory", snapshot="external", file=request.memory_file)
    else:
        ET.SubElement(root, "memory", snapshot="no")
    disks = ET.SubElement(root, "disks")
    overlays = dict(request.overlays)
    for target in all_targets:
        if target in overlays:
            disk = ET.SubElement(disks, "disk", name=target, snapshot="external", type="file")
            ET.SubElement(disk, "driver", type="qcow2")
            ET.SubElement(disk, "source", file=overlays[target])
        else:
            ET.SubElement(disks, "disk", name=target, snapshot="no")
    return ET.tostring(root, encoding="unicode")


def _kind(root: ET.Element) -> SnapshotKind:
    memory = root.find("memory")
    memory_mode = memory.get("snapshot") if memory is not None else None
    disk_modes = {d.get("snapshot") for d in root.iterfind("disks/disk")}
    if memory_mode == "internal" or "internal" in disk_modes:
        return SnapshotKind.INTERNAL
    if memory_mode == "external":
        return SnapshotKind.MEMORY
    if "external" in disk_modes:
        return SnapshotKind.DISK
    # No disks element and no memory mode: libvirt's default is an internal snapshot.
    return SnapshotKind.INTERNAL


def _domain_disks(root: ET.Element) -> dict[str, ET.Element]:
    found = {}
    for disk in root.iterfind("domain/devices/disk"):
        target = disk.find("target")
        if target is not None and target.get("dev"):
            found[target.get("dev", "")] = disk
    return found


def parse_snapshot(xml: str, vm: str, current: bool = False) -> Snapshot:
    """A Snapshot from ``virDomainSnapshotGetXMLDesc`` output (overlay sizes unknown).

    For each disk snapshotted externally, the frozen image is the disk's source in the
    snapshot's saved ``<domain>`` (what the VM used at that moment) and the overlay is the
    source in ``<disks>`` (what libvirt put on top)."""
    root = _parse(xml, "snapshot")
    kind = _kind(root)
    domain_disks = _domain_disks(root)
    disks = []
    for disk in root.iterfind("disks/disk"):
        target = disk.get("name", "")
        if disk.get("snapshot") != "external" or target not in domain_disks:
            continue
        frozen_disk = domain_disks[target]
        frozen = _source_path(frozen_disk)
        if frozen is None:
            continue
        driver = frozen_disk.find("driver")
        disks.append(
            SnapshotDisk(
                target=target,
                frozen=frozen,
                frozen_format=(driver.get("type") if driver is not None else None) or "raw",
                overlay=_source_path(disk),
            )
        )
    memory = root.find("memory")
    description = root.findtext("description")
    created = (root.findtext("creationTime") or "").strip()
    return Snapshot(
        vm=vm,
        name=root.findtext("name", ""),
        kind=kind,
        created=int(created) if created.isdigit() else None,
        parent=root.findtext("parent/name"),
        state=root.findtext("state"),
        current=current,
        memory_file=memory.get("file") if memory is not None else None,
        disks=tuple(disks),
        facts=decode_facts(description),
        description=description,
    )


def _set_source(disk: ET.Element, path: str, image_format: str | None = None) -> None:
    """Point a ``<disk>`` at ``path``: a fresh ``<source>``, no stale chain. Images vmkeep
    points disks at are files, except a block device base that overlays were merged into."""
    for child in list(disk):
        if child.tag in ("source", "backingStore"):
            disk.remove(child)
    block = path.startswith("/dev/")
    disk.set("type", "block" if block else "file")
    driver = disk.find("driver")
    if image_format is not None:
        if driver is None:
            driver = ET.Element("driver", name="qemu")
            disk.insert(0, driver)
        driver.set("type", image_format)
    position = list(disk).index(driver) + 1 if driver is not None else 0
    disk.insert(position, ET.Element("source", {"dev" if block else "file": path}))


def rewrite_snapshot(
    xml: str,
    moved: Mapping[str, str] | None = None,
    overlays: Mapping[str, str] | None = None,
    parent: object = KEEP_PARENT,
    description: str | None = None,
) -> str:
    """A snapshot document for ``REDEFINE``: every image in ``moved`` replaced by the image
    that now holds its content (frozen images in the saved ``<domain>``, overlays in
    ``<disks>``), the overlays of the disks in ``overlays`` (target to path) replaced, and
    the parent set to ``parent`` (a name, None for a root, or KEEP_PARENT), and the
    description replaced by ``description`` if given."""
    root = _parse(xml, "snapshot")
    if description is not None:
        element = root.find("description")
        if element is None:
            element = ET.SubElement(root, "description")
        element.text = description
    moved = moved or {}
    for disk in _domain_disks(root).values():
        path = _source_path(disk)
        if path is not None and path in moved:
            _set_source(disk, moved[path])
    for disk in root.iterfind("disks/disk"):
        path = _source_path(disk)
        new = (overlays or {}).get(disk.get("name", "")) or (moved.get(path) if path else None)
        if new is not None and disk.get("snapshot") == "external":
            source = disk.find("source")
            if source is None:
                source = ET.SubElement(disk, "source")
            source.attrib.clear()
            source.set("file", new)
            disk.set("type", "file")
    if parent is not KEEP_PARENT:
        for element in root.findall("parent"):
            root.remove(element)
        if isinstance(parent, str):
            element = ET.Element("parent")
            ET.SubElement(element, "name").text = parent
            name = root.find("name")
            root.insert(list(root).index(name) + 1 if name is not None else 0, element)
    return ET.tostring(root, encoding="unicode")


def repoint_domain(xml: str, images: Mapping[str, tuple[str, str]]) -> str:
    """The domain (or saved-state) XML with the disks ``{target: (path, format)}`` reading
    from the given files; libvirt probes their backing chains itself."""
    root = _parse(xml, "domain")
    for disk in root.iterfind("devices/disk"):
        target = disk.find("target")
        dev = target.get("dev", "") if target is not None else ""
        if dev in images:
            path, image_format = images[dev]
            _set_source(disk, path, image_format)
    return ET.tostring(root, encoding="unicode")
