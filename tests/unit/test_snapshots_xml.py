"""Snapshot XML: what vmkeep asks libvirt for, what it reads back (a document captured from
libvirt 9.0), and the rewrites for merged images, reverts and repointed disks."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from vmkeep.domain.snapshots import (
    SnapshotFacts,
    SnapshotKind,
    SnapshotRequest,
    encode_facts,
)
from vmkeep.drivers import domain_xml, snapshot_xml

D = "/var/lib/vmkeep/lab/vm"
# `virsh snapshot-dumpxml` of a memory snapshot taken by vmkeep (domain trimmed).
CAPTURED = f"""<domainsnapshot>
  <name>a &lt;b&gt; &amp; &quot;c&quot;</name>
  <description>vmkeep snapshot {{&quot;expires&quot;: 1795542596, &quot;group&quot;: null,
  &quot;members&quot;: [], &quot;quiesced&quot;: false, &quot;v&quot;: 1}}</description>
  <state>running</state>
  <parent><name>before</name></parent>
  <creationTime>1795456196</creationTime>
  <memory snapshot='external' file='{D}/vm.a_b_c.61f7ed.mem'/>
  <disks>
    <disk name='vda' snapshot='external' type='file'>
      <driver type='qcow2'/>
      <source file='{D}/vda.a_b_c.61f7ed.qcow2'/>
    </disk>
    <disk name='vdb' snapshot='external' type='file'>
      <driver type='qcow2'/>
      <source file='{D}/vdb.a_b_c.61f7ed.qcow2'/>
    </disk>
    <disk name='sda' snapshot='no'/>
  </disks>
  <domain type='qemu'>
    <name>vm</name>
    <metadata xmlns:vmkeep="https://vmkeep.dev/xmlns/lab/1">
      <vmkeep:lab dir="{D}"/>
    </metadata>
    <devices>
      <disk type='file' device='disk'>
        <driver name='qemu' type='qcow2' discard='unmap'/>
        <source file='{D}/vda.qcow2'/>
        <backingStore/>
        <target dev='vda' bus='virtio'/>
      </disk>
      <disk type='block' device='disk'>
        <driver name='qemu' type='raw'/>
        <source dev='/dev/vg/vdb'/>
        <target dev='vdb' bus='virtio'/>
      </disk>
      <disk type='file' device='cdrom'>
        <target dev='sda' bus='sata'/>
        <readonly/>
      </disk>
    </devices>
  </domain>
</domainsnapshot>"""


def parse(xml: str) -> ET.Element:
    return ET.fromstring(xml)  # noqa: S314 - XML vmkeep itself wrote


def test_request_becomes_external_disk_snapshot_xml() -> None:
    request = SnapshotRequest(
        name='pre $(x);|& "q" <ü>',
        description=encode_facts(SnapshotFacts(quiesced=True)),
        overlays=(("vda", "/vm/vda.pre.1.qcow2"),),
    )
    root = parse(snapshot_xml.snapshot_xml(request, ["vda", "vdb", "sda"]))
    assert root.findtext("name") == request.name  # escaped on the way, intact on the way back
    assert root.find("memory").get("snapshot") == "no"
    disks = {d.get("name"): d for d in root.iterfind("disks/disk")}
    assert disks["vda"].get("snapshot") == "external"
    assert disks["vda"].find("source").get("file") == "/vm/vda.pre.1.qcow2"
    assert disks["vda"].find("driver").get("type") == "qcow2"
    assert disks["vdb"].get("snapshot") == disks["sda"].get("snapshot") == "no"


def test_memory_request_saves_ram_externally() -> None:
    request = SnapshotRequest("m", "d", (("vda", "/o"),), memory_file="/vm/m.mem")
    root = parse(snapshot_xml.snapshot_xml(request, ["vda"]))
    memory = root.find("memory")
    assert memory is not None
    assert (memory.get("snapshot"), memory.get("file")) == ("external", "/vm/m.mem")


def test_captured_snapshot_is_read_with_frozen_images_and_overlays() -> None:
    snap = snapshot_xml.parse_snapshot(CAPTURED, "vm", current=True)
    assert snap.name == 'a <b> & "c"'
    assert snap.kind is SnapshotKind.MEMORY
    assert (snap.parent, snap.created, snap.state, snap.current) == (
        "before",
        1795456196,
        "running",
        True,
    )
    assert snap.memory_file == f"{D}/vm.a_b_c.61f7ed.mem"
    assert snap.facts == SnapshotFacts(quiesced=False, expires=1795542596)
    vda, vdb = snap.disks
    assert (vda.target, vda.frozen, vda.frozen_format) == ("vda", f"{D}/vda.qcow2", "qcow2")
    assert vda.overlay == f"{D}/vda.a_b_c.61f7ed.qcow2"
    assert (vdb.frozen, vdb.frozen_format) == ("/dev/vg/vdb", "raw")  # a block device


def test_internal_and_disk_only_kinds() -> None:
    internal = "<domainsnapshot><name>i</name><state>running</state></domainsnapshot>"
    assert snapshot_xml.parse_snapshot(internal, "vm").kind is SnapshotKind.INTERNAL
    disk_only = CAPTURED.replace("snapshot='external' file", "snapshot='no' file")
    parsed = snapshot_xml.parse_snapshot(disk_only, "vm")
    assert parsed.kind is SnapshotKind.DISK and parsed.external


def test_rewrite_moves_images_sets_overlays_and_parent() -> None:
    moved = {f"{D}/vda.qcow2": f"{D}/vda.base.qcow2"}
    xml = snapshot_xml.rewrite_snapshot(
        CAPTURED, moved=moved, overlays={"vdb": "/new/vdb.revert.qcow2"}, parent=None
    )
    snap = snapshot_xml.parse_snapshot(xml, "vm")
    vda, vdb = snap.disks
    assert vda.frozen == f"{D}/vda.base.qcow2"
    assert vda.overlay == f"{D}/vda.a_b_c.61f7ed.qcow2"
    assert vdb.overlay == "/new/vdb.revert.qcow2"
    assert vdb.frozen == "/dev/vg/vdb"
    assert snap.parent is None
    assert "<backingStore" not in xml.split("vda.base.qcow2")[1].split("</disk>")[0]
    assert snap.name == 'a <b> & "c"' and snap.facts is not None
    reparented = snapshot_xml.rewrite_snapshot(CAPTURED, parent="other")
    assert snapshot_xml.parse_snapshot(reparented, "vm").parent == "other"
    assert snapshot_xml.parse_snapshot(snapshot_xml.rewrite_snapshot(CAPTURED), "vm").parent == (
        "before"
    )


def test_a_block_device_base_stays_a_block_source() -> None:
    xml = snapshot_xml.rewrite_snapshot(CAPTURED, moved={f"{D}/vda.qcow2": "/dev/vg/vda"})
    root = parse(xml)
    disk = next(
        d for d in root.iterfind("domain/devices/disk") if d.find("target").get("dev") == "vda"
    )
    assert disk.get("type") == "block"
    assert disk.find("source").attrib == {"dev": "/dev/vg/vda"}


def test_repoint_domain_points_disks_at_new_overlays() -> None:
    domain = CAPTURED.split("<domain type='qemu'>")[1].split("</domain>")[0]
    domain = f"<domain type='qemu'>{domain}</domain>"
    xml = snapshot_xml.repoint_domain(
        domain, {"vda": ("/new/vda.qcow2", "qcow2"), "vdb": ("/new/vdb.qcow2", "qcow2")}
    )
    parsed = domain_xml.parse_domain(xml)
    by_target = {d.target: d for d in parsed.disks}
    assert by_target["vda"].source == "/new/vda.qcow2"
    assert by_target["vdb"].source == "/new/vdb.qcow2"  # a block disk now reads a file overlay
    assert by_target["vdb"].source_type.value == "file"
    assert by_target["vdb"].format == "qcow2"
    assert by_target["sda"].source is None  # the empty cdrom is left alone
    assert parsed.lab_dir == D  # the lab metadata survives, prefix and all
    assert "vmkeep:lab" in xml
    assert "<backingStore" not in xml
