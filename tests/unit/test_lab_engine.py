"""Lab use cases over in-memory ports: validation, cleanup on failure, destroy safety."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fakes import FakeClock, FakeGuest, FakeHypervisor, FakeImages, RecordingProgress
from vmkeep.domain.errors import (
    AlreadyExistsError,
    GuestAgentError,
    LabError,
    ToolError,
    UsageError,
    VmNotFoundError,
)
from vmkeep.domain.vmspec import VmSpec
from vmkeep.engine import lab


def make_deps(hv: FakeHypervisor | None = None, images: FakeImages | None = None) -> lab.LabDeps:
    return lab.LabDeps(
        hypervisor=hv or FakeHypervisor(),
        images=images or FakeImages(),
        guest=FakeGuest(),
        clock=FakeClock(),
        progress=RecordingProgress(),
    )


def test_create_defines_starts_and_waits(tmp_path: Path) -> None:
    deps = make_deps()
    fill = tmp_path / "content"
    fill.mkdir()
    vm = lab.create_lab(
        deps, tmp_path / "lab", lab.LabOptions(name="my lab", disks=3, fill=(fill,))
    )
    assert vm.state.value == "running"
    assert vm.agent.value == "responding"
    assert [d.target for d in vm.disks] == ["vda", "vdb", "vdc"]
    assert vm.lab_dir == str(tmp_path / "lab" / "my lab")
    images = deps.images
    assert isinstance(images, FakeImages)
    assert [(p.name, f) for p, _, f in images.created] == [
        ("vda.qcow2", fill),
        ("vdb.qcow2", None),
        ("vdc.qcow2", None),
    ]
    assert (tmp_path / "lab" / "my lab" / lab.LAB_MARKER).is_file()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (lab.LabOptions(name=""), "non-empty"),
        (lab.LabOptions(name="a/b"), "no '/'"),
        (lab.LabOptions(name=".hidden"), "leading '.'"),
        (lab.LabOptions(name="guest"), "reserved"),
        (lab.LabOptions(name="x", disks=0), "--disks"),
        (lab.LabOptions(name="x", disks=21), "--disks"),
        (lab.LabOptions(name="x", memory=64 << 20), "--memory"),
        (lab.LabOptions(name="x", disk_size=1 << 20), "--disk-size"),
        (lab.LabOptions(name="x", fill=(Path("/nonexistent-dir"),)), "not a directory"),
        (lab.LabOptions(name="x", disks=1, fill=(Path("/"), Path("/"))), "2 --fill"),
    ],
)
def test_bad_options_are_refused_before_anything_happens(
    tmp_path: Path, options: lab.LabOptions, message: str
) -> None:
    deps = make_deps()
    with pytest.raises(UsageError, match=message):
        lab.create_lab(deps, tmp_path, options)
    assert list(tmp_path.iterdir()) == []
    assert deps.hypervisor.list_vms() == []


def test_existing_name_is_refused(tmp_path: Path) -> None:
    deps = make_deps()
    lab.create_lab(deps, tmp_path, lab.LabOptions(name="a"))
    with pytest.raises(AlreadyExistsError):
        lab.create_lab(deps, tmp_path, lab.LabOptions(name="a"))


def test_failed_disk_creation_leaves_nothing(tmp_path: Path) -> None:
    deps = make_deps(images=FakeImages(fail_on=1))
    with pytest.raises(ToolError, match="No space left"):
        lab.create_lab(deps, tmp_path, lab.LabOptions(name="a", disks=2))
    assert not (tmp_path / "a").exists()
    assert deps.hypervisor.list_vms() == []


def test_agent_timeout_undefines_and_removes_files(tmp_path: Path) -> None:
    deps = make_deps(hv=FakeHypervisor(agent_ready=False))
    with pytest.raises(GuestAgentError, match="did not answer within 30 s"):
        lab.create_lab(deps, tmp_path, lab.LabOptions(name="a", boot_timeout=30))
    assert deps.hypervisor.list_vms() == []
    assert not (tmp_path / "a").exists()
    clock = deps.clock
    assert isinstance(clock, FakeClock)
    assert 29 <= sum(clock.sleeps) <= 32


def test_ensure_reuses_a_stopped_lab_vm(tmp_path: Path) -> None:
    deps = make_deps()
    lab.create_lab(deps, tmp_path, lab.LabOptions(name="a"))
    deps.hypervisor.stop_vm("a")
    vm, created = lab.ensure_lab(deps, tmp_path, lab.LabOptions(name="a"))
    assert not created
    assert vm.state.value == "running"
    vm, created = lab.ensure_lab(deps, tmp_path, lab.LabOptions(name="b"))
    assert created


def _define_foreign(hv: FakeHypervisor, name: str) -> None:
    hv.define_vm(VmSpec(name, 256 << 20, 1, "k", "i", "", ()))


def test_ensure_and_destroy_refuse_foreign_vms(tmp_path: Path) -> None:
    deps = make_deps()
    hv = deps.hypervisor
    assert isinstance(hv, FakeHypervisor)
    _define_foreign(hv, "prod")
    with pytest.raises(LabError, match="not a lab VM"):
        lab.ensure_lab(deps, tmp_path, lab.LabOptions(name="prod"))
    with pytest.raises(LabError, match="not a lab VM"):
        lab.destroy_lab(hv, tmp_path, "prod")
    assert [vm.name for vm in hv.list_vms()] == ["prod"]


def test_destroy_removes_vm_and_directory(tmp_path: Path) -> None:
    deps = make_deps()
    lab.create_lab(deps, tmp_path, lab.LabOptions(name="a"))
    lab.destroy_lab(deps.hypervisor, tmp_path, "a")
    assert deps.hypervisor.list_vms() == []
    assert not (tmp_path / "a").exists()


def test_destroy_cleans_an_orphaned_directory_but_not_a_foreign_one(tmp_path: Path) -> None:
    hv = FakeHypervisor()
    orphan = tmp_path / "orphan"
    orphan.mkdir()
    (orphan / lab.LAB_MARKER).write_text("orphan\n")
    lab.destroy_lab(hv, tmp_path, "orphan")
    assert not orphan.exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    with pytest.raises(VmNotFoundError):
        lab.destroy_lab(hv, tmp_path, "foreign")
    assert foreign.exists()


def test_disk_targets() -> None:
    assert lab.disk_targets(3) == ["vda", "vdb", "vdc"]
