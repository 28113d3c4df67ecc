"""Reading and writing libvirt XML: domains, checkpoints and snapshots.

Pure functions over strings, so every XML shape seen in the wild can be unit-tested without a
libvirt daemon. The XML comes from libvirt itself, a trusted local source, which is why the
standard library parser is fine here.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import TypeVar

from vmkeep.domain.errors import HypervisorError
from vmkeep.domain.inventory import (
    BackingImage,
    CheckpointInfo,
    DiskDevice,
    DiskInfo,
    SnapshotInfo,
    SourceType,
)
from vmkeep.domain.vmspec import VmSpec

GUEST_AGENT_CHANNEL = "org.qemu.guest_agent.0"
LAB_XMLNS = "https://vmkeep.dev/xmlns/lab/1"

_MEMORY_UNITS = {
    "b": 1,
    "bytes": 1,
    "k": 1 << 10,
    "kib": 1 << 10,
    "kb": 1000,
    "m": 1 << 20,
    "mib": 1 << 20,
    "mb": 1000**2,
    "g": 1 << 30,
    "gib": 1 << 30,
    "gb": 1000**3,
    "t": 1 << 40,
    "tib": 1 << 40,
    "tb": 1000**4,
}


@dataclass(frozen=True, slots=True)
class ParsedDomain:
    """What a domain's XML alone tells (no sizes, no live state)."""

    name: str
    uuid: str
    vcpus: int
    memory: int
    max_memory: int
    disks: tuple[DiskInfo, ...]
    has_agent_channel: bool
    agent_channel_state: str | None
    lab_dir: str | None
    nvram: str | None = None
    tpm_version: str | None = None
    """``2.0`` or ``1.2`` for an emulated TPM (``<tpm><backend type='emulator'>``)."""


def _emulated_tpm(root: ET.Element) -> str | None:
    backend = root.find("devices/tpm/backend")
    if backend is None or backend.get("type") != "emulator":
        return None
    return backend.get("version") or "1.2"  # libvirt's default for emulators without one


def _parse(xml: str, what: str) -> ET.Element:
    try:
        return ET.fromstring(xml)  # noqa: S314 - XML produced by the local libvirt daemon
    except ET.ParseError as exc:
        raise HypervisorError(f"libvirt returned unreadable {what} XML: {exc}") from exc


def _memory_bytes(element: ET.Element | None) -> int:
    if element is None or not (element.text or "").strip():
        return 0
    unit = element.get("unit", "KiB").lower()
    return int(element.text or "0") * _MEMORY_UNITS.get(unit, 1 << 10)


def parse_domain(xml: str) -> ParsedDomain:
    """Parse ``virDomainGetXMLDesc`` output. Raises HypervisorError on malformed XML."""
    root = _parse(xml, "domain")
    memory_el = root.find("currentMemory")
    max_memory = _memory_bytes(root.find("memory"))
    channel_state: str | None = None
    has_channel = False
    for target in root.iterfind("devices/channel/target"):
        if target.get("type") == "virtio" and target.get("name") == GUEST_AGENT_CHANNEL:
            has_channel = True
            channel_state = target.get("state")
    lab = root.find(f"metadata/{{{LAB_XMLNS}}}lab")
    return ParsedDomain(
        name=root.findtext("name", ""),
        uuid=root.findtext("uuid", ""),
        vcpus=int(root.findtext("vcpu", "1") or "1"),
        memory=_memory_bytes(memory_el) if memory_el is not None else max_memory,
        max_memory=max_memory,
        disks=tuple(_parse_disk(d) for d in root.iterfind("devices/disk")),
        has_agent_channel=has_channel,
        agent_channel_state=channel_state,
        lab_dir=lab.get("dir") if lab is not None else None,
        nvram=(root.findtext("os/nvram") or "").strip() or None,
        tpm_version=_emulated_tpm(root),
    )


_E = TypeVar("_E", SourceType, DiskDevice)


def _enum_value(cls: type[_E], raw: str | None, default: _E) -> _E:
    try:
        return cls(raw) if raw is not None else default
    except ValueError:
        return default


def _describe_source(source_type: SourceType, source: ET.Element | None) -> str | None:
    """A one-string description of where a disk's bytes live, or None for empty media."""
    if source is None:
        return None
    if source_type is SourceType.NETWORK:
        protocol = source.get("protocol", "network")
        name = source.get("name", "")
        host = source.find("host")
        if host is None:
            return f"{protocol}:{name}"
        if host.get("transport") == "unix":
            return f"{protocol}+unix://{host.get('socket', '')}/{name}".rstrip("/")
        address = host.get("name", "")
        if host.get("port"):
            address = f"{address}:{host.get('port')}"
        return f"{protocol}://{address}/{name}".rstrip("/")
    if source_type is SourceType.VOLUME:
        return f"{source.get('pool', '')}/{source.get('volume', '')}"
    for attribute in ("file", "dev", "dir", "path"):
        value = source.get(attribute)
        if value:
            return value
    return None


def _parse_backing_chain(disk: ET.Element) -> tuple[BackingImage, ...]:
    chain: list[BackingImage] = []
    node = disk.find("backingStore")
    while node is not None and len(node) > 0:
        kind = _enum_value(SourceType, node.get("type"), SourceType.FILE)
        source = _describe_source(kind, node.find("source"))
        fmt = node.find("format")
        if source is not None:
            chain.append(BackingImage(source, fmt.get("type") if fmt is not None else None))
        node = node.find("backingStore")
    return tuple(chain)


def _parse_disk(disk: ET.Element) -> DiskInfo:
    source_type = _enum_value(SourceType, disk.get("type"), SourceType.UNKNOWN)
    driver = disk.find("driver")
    target = disk.find("target")
    return DiskInfo(
        target=target.get("dev", "") if target is not None else "",
        device=_enum_value(DiskDevice, disk.get("device"), DiskDevice.DISK),
        source_type=source_type,
        source=_describe_source(source_type, disk.find("source")),
        format=driver.get("type") if driver is not None else None,
        bus=target.get("bus") if target is not None else None,
        readonly=disk.find("readonly") is not None,
        backing_chain=_parse_backing_chain(disk),
    )


def _int_or_none(text: str | None) -> int | None:
    return int(text) if text and text.strip().isdigit() else None


def parse_checkpoint(xml: str) -> CheckpointInfo:
    """Parse ``virDomainCheckpointGetXMLDesc`` output."""
    root = _parse(xml, "checkpoint")
    return CheckpointInfo(
        name=root.findtext("name", ""),
        created=_int_or_none(root.findtext("creationTime")),
        parent=root.findtext("parent/name"),
        disks=tuple(
            d.get("name", "")
            for d in root.iterfind("disks/disk")
            if d.get("checkpoint", "bitmap") == "bitmap"
        ),
    )


def parse_snapshot(xml: str, current: bool = False) -> SnapshotInfo:
    """Parse ``virDomainSnapshotGetXMLDesc`` output."""
    root = _parse(xml, "snapshot")
    memory = root.find("memory")
    memory_mode = memory.get("snapshot") if memory is not None else None
    disk_modes = {d.get("snapshot") for d in root.iterfind("disks/disk")}
    return SnapshotInfo(
        name=root.findtext("name", ""),
        created=_int_or_none(root.findtext("creationTime")),
        parent=root.findtext("parent/name"),
        state=root.findtext("state"),
        current=current,
        external="external" in disk_modes or memory_mode == "external",
        memory=memory_mode in ("internal", "external"),
        description=root.findtext("description"),
    )


def render_domain(spec: VmSpec) -> str:
    """The libvirt XML for a VmSpec: a TCG domain (KVM is unusable on these hosts) booting a
    kernel directly, with virtio disks, a guest-agent channel and the serial console in a file.
    """
    ET.register_namespace("vmkeep", LAB_XMLNS)
    domain = ET.Element("domain", type="qemu")
    ET.SubElement(domain, "name").text = spec.name
    ET.SubElement(domain, "memory", unit="b").text = str(spec.memory)
    ET.SubElement(domain, "vcpu").text = str(spec.vcpus)
    if spec.lab_dir is not None:
        metadata = ET.SubElement(domain, "metadata")
        ET.SubElement(metadata, f"{{{LAB_XMLNS}}}lab", dir=spec.lab_dir)
    os_el = ET.SubElement(domain, "os")
    ET.SubElement(os_el, "type", arch="x86_64", machine="pc").text = "hvm"
    ET.SubElement(os_el, "kernel").text = spec.kernel
    ET.SubElement(os_el, "initrd").text = spec.initrd
    ET.SubElement(os_el, "cmdline").text = spec.cmdline
    ET.SubElement(domain, "on_poweroff").text = "destroy"
    ET.SubElement(domain, "on_reboot").text = "restart"
    ET.SubElement(domain, "on_crash").text = "destroy"
    devices = ET.SubElement(domain, "devices")
    for disk in spec.disks:
        disk_el = ET.SubElement(devices, "disk", type="file", device="disk")
        ET.SubElement(disk_el, "driver", name="qemu", type=disk.format, discard="unmap")
        ET.SubElement(disk_el, "source", file=disk.path)
        ET.SubElement(disk_el, "target", dev=disk.target, bus="virtio")
    channel = ET.SubElement(devices, "channel", type="unix")
    ET.SubElement(channel, "target", type="virtio", name=GUEST_AGENT_CHANNEL)
    if spec.console_log is not None:
        serial = ET.SubElement(devices, "serial", type="file")
        ET.SubElement(serial, "source", path=spec.console_log)
        ET.SubElement(serial, "target", port="0")
    if spec.tpm:
        tpm = ET.SubElement(devices, "tpm", model="tpm-tis")
        ET.SubElement(tpm, "backend", type="emulator", version="2.0")
    if spec.heartbeat_socket is not None:
        serial = ET.SubElement(devices, "serial", type="unix")
        ET.SubElement(serial, "source", mode="bind", path=spec.heartbeat_socket)
        ET.SubElement(serial, "target", port="1")
    ET.SubElement(devices, "memballoon", model="none")
    return ET.tostring(domain, encoding="unicode")


def rewrite_for_restore(
    xml: str,
    new_name: str,
    disks: dict[str, tuple[str, str]],
    files_dir: str,
    nvram: str | None = None,
) -> str:
    """A definition for a copy of the VM in ``xml``: named ``new_name``, with no UUID and no
    MAC addresses (libvirt makes fresh ones, so the copy can run beside the original), its
    disks ``{target: (path, format)}`` pointing at the restored images (disks not listed are
    dropped, cdroms kept), file-backed serial logs moved to ``files_dir``, and no vmkeep lab
    metadata (the copy is not a lab VM: ``lab destroy`` must not touch the original's files).
    """
    root = _parse(xml, "domain")
    name = root.find("name")
    if name is None:
        name = ET.SubElement(root, "name")
    name.text = new_name
    for tag in ("uuid", "id"):
        for element in root.findall(tag):
            root.remove(element)
    metadata = root.find("metadata")
    if metadata is not None:
        for lab in metadata.findall(f"{{{LAB_XMLNS}}}lab"):
            metadata.remove(lab)
    os_element = root.find("os")
    nvram_element = os_element.find("nvram") if os_element is not None else None
    if os_element is not None and nvram_element is not None:
        if nvram is not None:
            nvram_element.text = nvram  # the restored variables, not the original's file
        else:
            os_element.remove(nvram_element)  # libvirt makes a fresh one from its template
    devices = root.find("devices")
    if devices is None:
        return ET.tostring(root, encoding="unicode")
    for mac in devices.findall("interface/mac"):
        for interface in devices.iterfind("interface"):
            if mac in list(interface):
                interface.remove(mac)
    for disk in list(devices.iterfind("disk")):
        if disk.get("device", "disk") not in ("disk", "lun"):
            continue
        target = disk.find("target")
        dev = target.get("dev", "") if target is not None else ""
        if dev not in disks:
            devices.remove(disk)
            continue
        path, image_format = disks[dev]
        _point_disk_at(disk, path, image_format)
    for kind in ("serial", "console"):
        for device in devices.iterfind(kind):
            source = device.find("source")
            # Files (console logs) and listening sockets (a lab heartbeat) would clash with
            # the original VM's: the copy gets its own in its directory.
            bound = (
                device.get("type") == "unix" and source is not None and source.get("mode") == "bind"
            )
            if (
                (device.get("type") == "file" or bound)
                and source is not None
                and source.get("path")
            ):
                base = source.get("path", "").rsplit("/", 1)[-1]
                source.set("path", f"{files_dir}/{base}")
    return ET.tostring(root, encoding="unicode")


def _point_disk_at(disk: ET.Element, path: str, image_format: str) -> None:
    for child in list(disk):
        if child.tag in ("source", "backingStore", "auth", "encryption"):
            disk.remove(child)
    disk.set("type", "file")
    driver = disk.find("driver")
    if driver is None:
        driver = ET.Element("driver", name="qemu")
        disk.insert(0, driver)
    driver.set("type", image_format)
    source = ET.Element("source", file=path)
    disk.insert(list(disk).index(driver) + 1, source)
