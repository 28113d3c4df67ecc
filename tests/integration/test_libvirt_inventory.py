"""LibvirtHypervisor against the real daemon, on domains vmkeep did not create: persistent and
transient, running and shut off, file, block and network disks, cdroms, raw and qcow2, a
backing chain, and names with spaces, quotes and unicode. virsh is the independent witness."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import libvirt
import pytest

from tests.conftest import SYSTEM_URI, TEST_PREFIX, virsh
from vmkeep.domain.inventory import AgentStatus, BackingImage, DiskDevice, SourceType, VmState
from vmkeep.drivers.libvirt_hypervisor import LibvirtHypervisor

pytestmark = pytest.mark.libvirt

PERSISTENT_NAME = f"{TEST_PREFIX} hand made 'one' \"two\" ü"
TRANSIENT_NAME = f"{TEST_PREFIX}-transient"


def _qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def images(workdir: Path) -> dict[str, Path]:
    base = workdir / "base image.qcow2"
    middle = workdir / "middle.qcow2"
    top = workdir / "top.qcow2"
    raw = workdir / "data.raw"
    iso = workdir / "install.iso"
    _qemu_img("create", "-f", "qcow2", str(base), "64M")
    _qemu_img("create", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(middle))
    _qemu_img("create", "-f", "qcow2", "-b", str(middle), "-F", "qcow2", str(top))
    _qemu_img("create", "-f", "raw", str(raw), "32M")
    iso.write_bytes(b"\0" * 2048 * 16)
    return {"base": base, "middle": middle, "top": top, "raw": raw, "iso": iso}


def _domain_xml(name: str, disks: str, memory_mib: int = 96) -> str:
    return f"""<domain type='qemu'>
  <name>{escape(name)}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>2</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>{disks}</devices>
</domain>"""


def _file_disk(path: Path, target: str, fmt: str) -> str:
    return (
        f"<disk type='file' device='disk'><driver name='qemu' type='{fmt}'/>"
        f"<source file={quoteattr(str(path))}/><target dev='{target}' bus='virtio'/></disk>"
    )


@pytest.fixture(scope="module")
def conn() -> Iterator[libvirt.virConnect]:
    connection = libvirt.open(SYSTEM_URI)
    yield connection
    connection.close()


@pytest.fixture(scope="module")
def loop_device(workdir: Path) -> Iterator[str]:
    """A real block device (a loop device over a 48 MiB file)."""
    backing = workdir / "block.img"
    with backing.open("wb") as handle:
        handle.truncate(48 << 20)
    device = subprocess.run(
        ["losetup", "--find", "--show", str(backing)], check=True, capture_output=True, text=True
    ).stdout.strip()
    yield device
    subprocess.run(["losetup", "--detach", device], check=False)


@pytest.fixture(scope="module")
def persistent_domain(
    conn: libvirt.virConnect, images: dict[str, Path], loop_device: str
) -> Iterator[str]:
    disks = "".join(
        [
            _file_disk(images["top"], "vda", "qcow2"),
            _file_disk(images["raw"], "vdb", "raw"),
            "<disk type='block' device='disk'><driver name='qemu' type='raw'/>"
            "<source dev='/dev/vmkeep-test-missing-lv'/><target dev='vdc' bus='virtio'/></disk>",
            "<disk type='block' device='disk'><driver name='qemu' type='raw'/>"
            f"<source dev='{loop_device}'/><target dev='vde' bus='virtio'/></disk>",
            "<disk type='network' device='disk'><driver name='qemu' type='raw'/>"
            "<source protocol='nbd' name='exp'><host name='127.0.0.1' port='10809'/></source>"
            "<target dev='vdd' bus='virtio'/></disk>",
            "<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>"
            "<target dev='hdc' bus='ide'/><readonly/></disk>",
            "<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>"
            f"<source file={quoteattr(str(images['iso']))}/><target dev='hdd' bus='ide'/>"
            "<readonly/></disk>",
        ]
    )
    dom = conn.defineXML(_domain_xml(PERSISTENT_NAME, disks))
    yield PERSISTENT_NAME
    dom.undefine()


@pytest.fixture(scope="module")
def transient_domain(conn: libvirt.virConnect, images: dict[str, Path]) -> Iterator[str]:
    """A running transient domain; paused at once so it costs no CPU under TCG."""
    disks = _file_disk(images["top"], "vda", "qcow2") + _file_disk(images["raw"], "vdb", "raw")
    xml = _domain_xml(TRANSIENT_NAME, disks).replace(
        "</devices>",
        "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>"
        "</devices>",
    )
    dom = conn.createXML(xml, libvirt.VIR_DOMAIN_START_PAUSED)
    yield TRANSIENT_NAME
    dom.destroy()


@pytest.fixture
def hv() -> Iterator[LibvirtHypervisor]:
    hypervisor = LibvirtHypervisor(SYSTEM_URI)
    yield hypervisor
    hypervisor.close()


def _domblkinfo(name: str, target: str) -> tuple[int, int]:
    fields = dict(
        line.split(":", 1)
        for line in virsh("domblkinfo", name, target).stdout.splitlines()
        if ":" in line
    )
    return int(fields["Capacity"]), int(fields["Allocation"])


def test_shut_off_persistent_domain_with_every_disk_kind(
    hv: LibvirtHypervisor, persistent_domain: str, images: dict[str, Path], loop_device: str
) -> None:
    vm = hv.get_vm(persistent_domain)
    assert vm.name == persistent_domain
    assert vm.state is VmState.SHUTOFF
    assert vm.persistent
    assert vm.domain_id is None
    assert (vm.vcpus, vm.max_memory) == (2, 96 << 20)
    assert vm.agent is AgentStatus.VM_NOT_RUNNING
    assert vm.lab_dir is None
    disks = {d.target: d for d in vm.disks}
    assert list(disks) == ["vda", "vdb", "vdc", "vdd", "vde", "hdc", "hdd"]

    vda = disks["vda"]
    assert (vda.source, vda.format) == (str(images["top"]), "qcow2")
    # libvirt does not report chains of stopped VMs: this comes from qemu-img.
    assert vda.backing_chain == (
        BackingImage(str(images["middle"]), "qcow2"),
        BackingImage(str(images["base"]), "qcow2"),
    )
    assert (vda.virtual_size, vda.allocated_size) == _domblkinfo(persistent_domain, "vda")
    assert vda.virtual_size == 64 << 20

    vdb = disks["vdb"]
    assert (vdb.format, vdb.virtual_size) == ("raw", 32 << 20)
    assert vdb.backing_chain == ()

    vdc = disks["vdc"]
    assert (vdc.source_type, vdc.source) == (SourceType.BLOCK, "/dev/vmkeep-test-missing-lv")
    assert vdc.virtual_size is None  # the device does not exist: unknown, not zero

    vde = disks["vde"]
    assert (vde.source_type, vde.source, vde.format) == (SourceType.BLOCK, loop_device, "raw")
    assert vde.virtual_size == 48 << 20
    assert (vde.virtual_size, vde.allocated_size) == _domblkinfo(persistent_domain, "vde")

    vdd = disks["vdd"]
    assert (vdd.source_type, vdd.source) == (SourceType.NETWORK, "nbd://127.0.0.1:10809/exp")

    assert (disks["hdc"].device, disks["hdc"].source) == (DiskDevice.CDROM, None)
    assert disks["hdd"].source == str(images["iso"])
    assert disks["hdd"].readonly


def test_running_transient_domain(
    hv: LibvirtHypervisor, transient_domain: str, images: dict[str, Path]
) -> None:
    vm = hv.get_vm(transient_domain)
    assert vm.state is VmState.PAUSED
    assert vm.state.is_active
    assert not vm.persistent
    assert vm.domain_id is not None and vm.domain_id > 0
    # The paused guest runs no agent: reported as such, without hanging.
    assert vm.agent is AgentStatus.NOT_RESPONDING
    vda = next(d for d in vm.disks if d.target == "vda")
    # For a running VM the chain comes from libvirt's live XML.
    assert [b.source for b in vda.backing_chain] == [str(images["middle"]), str(images["base"])]
    assert (vda.virtual_size, vda.allocated_size) == _domblkinfo(transient_domain, "vda")


def test_list_contains_exactly_what_virsh_lists(
    hv: LibvirtHypervisor, persistent_domain: str, transient_domain: str
) -> None:
    listed = {vm.name: vm for vm in hv.list_vms()}
    expected = set(virsh("list", "--all", "--name").stdout.split("\n")) - {""}
    assert set(listed) == expected
    assert listed[persistent_domain].state is VmState.SHUTOFF
    assert listed[transient_domain].state is VmState.PAUSED
    assert not listed[transient_domain].persistent
