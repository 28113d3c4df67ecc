"""One contract, every Hypervisor: the in-memory fake, libvirt's test driver, and the real
libvirt daemon with QEMU. Anything the engine relies on belongs here."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SYSTEM_URI, TEST_PREFIX
from tests.fakes import FakeHypervisor
from vmkeep.domain.errors import (
    AlreadyExistsError,
    HypervisorConnectionError,
    HypervisorError,
    VmNotFoundError,
)
from vmkeep.domain.inventory import AgentStatus, VmState
from vmkeep.domain.vmspec import DiskSpec, GuestBoot, VmSpec
from vmkeep.drivers.libvirt_hypervisor import LibvirtHypervisor
from vmkeep.ports import Hypervisor

AWKWARD_NAME = f"{TEST_PREFIX} contract 'quoted' \"double\" ünïcode"


@pytest.fixture(params=["fake", "libvirt-test-driver", "libvirt-qemu"])
def hypervisor(request: pytest.FixtureRequest) -> Iterator[Any]:
    if request.param == "fake":
        yield FakeHypervisor()
        return
    uri = "test:///default" if request.param == "libvirt-test-driver" else SYSTEM_URI
    hv = LibvirtHypervisor(uri)
    try:
        yield hv
    finally:
        hv.close()


@pytest.fixture
def spec(request: pytest.FixtureRequest, workdir: Path) -> VmSpec:
    """A spec that can really boot under QEMU: the lab kernel and a fresh qcow2 disk."""
    boot: GuestBoot = request.getfixturevalue("guest_boot")
    disk = workdir / f"contract-{request.node.name[-20:].strip('[]')}.qcow2"
    disk.unlink(missing_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    return VmSpec(
        name=AWKWARD_NAME,
        memory=128 << 20,
        vcpus=1,
        kernel=boot.kernel,
        initrd=boot.initrd,
        cmdline=boot.cmdline,
        disks=(DiskSpec("vda", str(disk)),),
        lab_dir=str(workdir),
    )


def _cleanup(hv: Hypervisor, name: str) -> None:
    try:
        hv.stop_vm(name)
        hv.undefine_vm(name)
    except VmNotFoundError:
        pass


def test_unknown_vm_is_not_found(hypervisor: Hypervisor) -> None:
    with pytest.raises(VmNotFoundError, match="no-such-vm"):
        hypervisor.get_vm(f"{TEST_PREFIX}-no-such-vm")
    with pytest.raises(VmNotFoundError):
        hypervisor.start_vm(f"{TEST_PREFIX}-no-such-vm")


def test_define_describe_lifecycle(hypervisor: Hypervisor, spec: VmSpec) -> None:
    try:
        hypervisor.define_vm(spec)
        vm = hypervisor.get_vm(spec.name)
        assert vm.name == spec.name
        assert vm.state is VmState.SHUTOFF
        assert vm.persistent
        assert (vm.vcpus, vm.max_memory) == (1, 128 << 20)
        assert [(d.target, d.source, d.format) for d in vm.disks] == [
            ("vda", spec.disks[0].path, "qcow2")
        ]
        assert vm.agent is AgentStatus.VM_NOT_RUNNING
        assert vm.lab_dir == spec.lab_dir
        assert spec.name in [v.name for v in hypervisor.list_vms()]
        with pytest.raises(AlreadyExistsError):
            hypervisor.define_vm(spec)
        assert hypervisor.agent_ping(spec.name) is False

        hypervisor.start_vm(spec.name)
        hypervisor.start_vm(spec.name)  # idempotent
        assert hypervisor.get_vm(spec.name).state.is_active
        with pytest.raises(HypervisorError):
            hypervisor.undefine_vm(spec.name)  # refuses a running VM

        hypervisor.stop_vm(spec.name)
        hypervisor.stop_vm(spec.name)  # idempotent
        assert hypervisor.get_vm(spec.name).state is VmState.SHUTOFF
        with pytest.raises(HypervisorError):
            hypervisor.guest_exec(spec.name, ["true"])  # no agent in a stopped VM

        hypervisor.undefine_vm(spec.name)
        with pytest.raises(VmNotFoundError):
            hypervisor.get_vm(spec.name)
    finally:
        _cleanup(hypervisor, spec.name)


def test_list_is_sorted_by_name(hypervisor: Hypervisor, spec: VmSpec) -> None:
    names = [f"{TEST_PREFIX}-b", f"{TEST_PREFIX}-a"]
    try:
        for name in names:
            hypervisor.define_vm(VmSpec(**{**_fields(spec), "name": name}))
        listed = [vm.name for vm in hypervisor.list_vms()]
        assert listed == sorted(listed)
        assert set(names) <= set(listed)
    finally:
        for name in names:
            _cleanup(hypervisor, name)


def _fields(spec: VmSpec) -> dict[str, Any]:
    return {f: getattr(spec, f) for f in spec.__slots__}


def test_unreachable_uri_is_a_connection_error() -> None:
    with pytest.raises(HypervisorConnectionError, match="cannot connect"):
        LibvirtHypervisor("qemu+unix:///system?socket=/nonexistent/libvirt-sock")
