"""Parsing the domain, checkpoint and snapshot XML shapes libvirt produces."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmkeep.domain.errors import HypervisorError
from vmkeep.domain.inventory import BackingImage, DiskDevice, SourceType
from vmkeep.domain.vmspec import DiskSpec, VmSpec
from vmkeep.drivers import domain_xml

DATA = Path(__file__).parent.parent / "data" / "domains"


def load(name: str) -> str:
    return (DATA / name).read_text()


def test_running_domain_with_backing_chain_and_cdrom() -> None:
    parsed = domain_xml.parse_domain(load("running_backing_chain.xml"))
    assert parsed.name == "web01"
    assert parsed.uuid == "4dea22b3-1d52-d8f3-2516-782e98ab3fa0"
    assert parsed.vcpus == 4
    assert parsed.max_memory == 4 << 30
    assert parsed.memory == 2 << 30
    assert parsed.has_agent_channel
    assert parsed.agent_channel_state == "connected"
    assert parsed.lab_dir is None
    vda, sda = parsed.disks
    assert (vda.target, vda.device, vda.source_type, vda.format, vda.bus) == (
        "vda",
        DiskDevice.DISK,
        SourceType.FILE,
        "qcow2",
        "virtio",
    )
    assert vda.source == "/var/lib/libvirt/images/web01.snap2"
    assert vda.backing_chain == (
        BackingImage("/var/lib/libvirt/images/web01.snap1", "qcow2"),
        BackingImage("/var/lib/libvirt/images/web01.qcow2", "qcow2"),
    )
    assert sda.device is DiskDevice.CDROM
    assert sda.readonly
    assert sda.source == "/var/lib/libvirt/isos/debian-12.iso"
    assert sda.backing_chain == ()  # an empty <backingStore/> ends the chain


def test_inactive_domain_with_block_network_volume_and_empty_media() -> None:
    parsed = domain_xml.parse_domain(load("inactive_mixed_storage.xml"))
    assert parsed.name == 'db "primary" ü'
    assert parsed.memory == parsed.max_memory == 8 << 30  # no currentMemory: same as memory
    assert not parsed.has_agent_channel
    by_target = {d.target: d for d in parsed.disks}
    assert by_target["vdb"].source_type is SourceType.BLOCK
    assert by_target["vdb"].source == "/dev/vg0/db-data"
    assert by_target["vdb"].format == "raw"
    assert by_target["vda"].source_type is SourceType.NETWORK
    assert by_target["vda"].source == "rbd://10.0.0.1:6789/vms/db-root"
    assert by_target["vdc"].source == "nbd+unix:///run/nbd/export.sock/export1"
    assert by_target["sdb"].source == "iscsi://san.example.com/iqn.2013-07.com.example:iscsi-pool/1"
    assert by_target["vdd"].source_type is SourceType.VOLUME
    assert by_target["vdd"].source == "default/db-logs.qcow2"
    assert by_target["hdc"].device is DiskDevice.CDROM
    assert by_target["hdc"].source is None
    assert by_target["fda"].device is DiskDevice.FLOPPY
    assert by_target["fda"].source == "/srv/floppy.img"


@pytest.mark.parametrize(
    ("unit", "value", "expected"),
    [
        ("KiB", "1024", 1 << 20),
        ("MiB", "512", 512 << 20),
        ("b", "4096", 4096),
        ("GB", "2", 2 * 10**9),
    ],
)
def test_memory_units(unit: str, value: str, expected: int) -> None:
    xml = f"<domain><name>m</name><memory unit='{unit}'>{value}</memory></domain>"
    assert domain_xml.parse_domain(xml).max_memory == expected


def test_malformed_xml_is_a_hypervisor_error() -> None:
    with pytest.raises(HypervisorError, match="unreadable domain XML"):
        domain_xml.parse_domain("<domain><name>x</name>")


def test_checkpoint_lists_only_bitmap_disks() -> None:
    checkpoint = domain_xml.parse_checkpoint(load("checkpoint.xml"))
    assert checkpoint.name == "vmkeep-0002"
    assert checkpoint.parent == "vmkeep-0001"
    assert checkpoint.created == 1763900000
    assert checkpoint.disks == ("vda",)


def test_external_memory_snapshot() -> None:
    snap = domain_xml.parse_snapshot(load("snapshot_external_memory.xml"), current=True)
    assert (snap.name, snap.parent, snap.state, snap.created) == (
        "before-patch",
        "base",
        "running",
        1763900100,
    )
    assert snap.external and snap.memory and snap.current
    assert snap.description == "kernel upgrade"


def test_internal_disk_snapshot_without_parent() -> None:
    snap = domain_xml.parse_snapshot(load("snapshot_internal.xml"))
    assert snap.parent is None
    assert not snap.external
    assert not snap.memory
    assert not snap.current


def test_rendered_lab_domain_parses_back_with_awkward_name() -> None:
    name = "lab 'one' \"two\" <&> ünïcode"
    spec = VmSpec(
        name=name,
        memory=256 << 20,
        vcpus=2,
        kernel="/k/vmlinuz",
        initrd="/k/initrd.img",
        cmdline="console=ttyS0",
        disks=(DiskSpec("vda", "/lab/my vm/vda.qcow2"), DiskSpec("vdb", "/lab/vdb.raw", "raw")),
        console_log="/lab/console.log",
        lab_dir="/lab/my vm",
        heartbeat_socket="/lab/my vm/heartbeat.sock",
    )
    xml = domain_xml.render_domain(spec)
    assert '<source mode="bind" path="/lab/my vm/heartbeat.sock" />' in xml
    assert '<target port="1" />' in xml
    assert 'type="qemu"' in xml  # TCG: KVM is unusable on these hosts
    parsed = domain_xml.parse_domain(xml)
    assert parsed.name == name
    assert parsed.vcpus == 2
    assert parsed.max_memory == 256 << 20
    assert parsed.has_agent_channel
    assert parsed.lab_dir == "/lab/my vm"
    assert [(d.target, d.source, d.format) for d in parsed.disks] == [
        ("vda", "/lab/my vm/vda.qcow2", "qcow2"),
        ("vdb", "/lab/vdb.raw", "raw"),
    ]


def test_rewrite_for_restore() -> None:
    xml = (
        load("running_backing_chain.xml")
        .replace(
            "</devices>",
            "<interface type='network'><mac address='52:54:00:12:34:56'/>"
            "<source network='default'/></interface>"
            "<serial type='file'><source path='/old/dir/console.log'/></serial>"
            "<serial type='unix'><source mode='bind' path='/old/dir/heartbeat.sock'/>"
            "<target port='1'/></serial>"
            "</devices>",
        )
        .replace(
            "<metadata>",
            f"<metadata><vmkeep:lab xmlns:vmkeep='{domain_xml.LAB_XMLNS}' "
            "dir='/var/lib/vmkeep/lab/web01'/>",
        )
    )
    out = domain_xml.rewrite_for_restore(
        xml, "web01 restored", {"vda": ("/restore/vda.raw", "raw")}, "/restore"
    )
    parsed = domain_xml.parse_domain(out)
    assert parsed.name == "web01 restored"
    assert parsed.uuid == ""
    assert parsed.lab_dir is None
    vda = next(d for d in parsed.disks if d.target == "vda")
    assert (vda.source, vda.format, vda.backing_chain) == ("/restore/vda.raw", "raw", ())
    assert any(d.device is DiskDevice.CDROM for d in parsed.disks)  # media stay
    assert "52:54:00:12:34:56" not in out
    assert '<source network="default"' in out
    assert "/restore/console.log" in out
    assert "/restore/heartbeat.sock" in out and "/old/dir" not in out
