"""Lab VMs: small disposable guests to try vmkeep on without touching production VMs.

A lab VM is a persistent TCG domain booting the cached busybox guest, with qcow2 v3 disks in
its own directory ``LAB_ROOT/NAME``. The directory holds a marker file, and the domain's
metadata names the directory, so ``destroy_lab`` only ever deletes what ``create_lab`` made.
"""

from __future__ import annotations

import contextlib
import shutil
import string
from dataclasses import dataclass
from pathlib import Path

from vmkeep.domain.errors import (
    AlreadyExistsError,
    GuestAgentError,
    LabError,
    UsageError,
    VmkeepError,
    VmNotFoundError,
)
from vmkeep.domain.inventory import VmInfo
from vmkeep.domain.vmspec import DiskSpec, VmSpec
from vmkeep.ports import Clock, DiskImageTool, GuestBuilder, Hypervisor, Progress

LAB_MARKER = ".vmkeep-lab"
GUEST_CACHE = "guest"
HEARTBEAT_SOCKET = "heartbeat.sock"
MAX_DISKS = 20
MIN_MEMORY = 128 << 20


@dataclass(frozen=True, slots=True)
class LabOptions:
    """What ``vmkeep lab create`` was asked for. ``fill[i]`` fills disk ``i`` (vda, vdb...)."""

    name: str
    disks: int = 1
    disk_size: int = 8 << 30
    fill: tuple[Path, ...] = ()
    memory: int = 256 << 20
    vcpus: int = 1
    boot_timeout: float = 180.0
    tpm: bool = False
    """Give the VM an emulated TPM 2.0 (swtpm)."""
    heartbeat: bool = False
    """Boot the guest with a heartbeat: its uptime every 10 ms on its second serial port, a
    Unix socket ``heartbeat.sock`` in the VM's directory."""


@dataclass(frozen=True, slots=True)
class LabDeps:
    """The ports a lab use case needs, bundled so signatures stay short."""

    hypervisor: Hypervisor
    images: DiskImageTool
    guest: GuestBuilder
    clock: Clock
    progress: Progress


def validate_lab_name(name: str) -> None:
    """Refuse names that cannot be a directory name; everything else libvirt accepts is fine."""
    if not name or name.strip() != name:
        raise UsageError("a lab VM name must be non-empty, without leading or trailing spaces")
    if "/" in name or "\0" in name or name.startswith("."):
        raise UsageError(f"invalid lab VM name {name!r}: no '/', NUL or leading '.'")
    if name == GUEST_CACHE:
        raise UsageError(f"{GUEST_CACHE!r} is reserved for the lab's guest cache")
    if len(name.encode()) > 200:
        raise UsageError("a lab VM name must be at most 200 bytes long")


def _validate(options: LabOptions) -> None:
    validate_lab_name(options.name)
    if not 1 <= options.disks <= MAX_DISKS:
        raise UsageError(f"--disks must be between 1 and {MAX_DISKS}")
    if len(options.fill) > options.disks:
        raise UsageError(f"{len(options.fill)} --fill directories for {options.disks} disk(s)")
    for directory in options.fill:
        if not directory.is_dir():
            raise UsageError(f"--fill {directory}: not a directory")
    if options.memory < MIN_MEMORY:
        raise UsageError(f"--memory must be at least {MIN_MEMORY >> 20}M")
    if options.disk_size < 16 << 20:
        raise UsageError("--disk-size must be at least 16M")


def disk_targets(count: int) -> list[str]:
    """Guest device names for ``count`` virtio disks: vda, vdb, ..."""
    return [f"vd{letter}" for letter in string.ascii_lowercase[:count]]


def create_lab(deps: LabDeps, lab_root: Path, options: LabOptions) -> VmInfo:
    """Build (or reuse) the guest, create disks, define and start the VM, wait for its agent.

    Raises AlreadyExistsError if the name is taken. On any failure the VM is undefined and its
    directory removed: a failed create leaves nothing behind.
    """
    _validate(options)
    hv = deps.hypervisor
    with contextlib.suppress(VmNotFoundError):
        hv.get_vm(options.name)
        raise AlreadyExistsError(f"a VM named {options.name!r} already exists")
    vm_dir = lab_root / options.name
    if vm_dir.exists():
        raise AlreadyExistsError(
            f"{vm_dir} exists but no VM uses it: run `vmkeep lab destroy {options.name}`"
        )
    deps.progress.step("preparing the lab guest (built once, then cached)")
    boot = deps.guest.ensure_guest(lab_root / GUEST_CACHE)
    vm_dir.mkdir(parents=True)
    defined = False
    try:
        vm_dir.chmod(0o755)  # QEMU runs as libvirt-qemu and must reach the disks
        (vm_dir / LAB_MARKER).write_text(options.name + "\n")
        disks = []
        for index, target in enumerate(disk_targets(options.disks)):
            fill = options.fill[index] if index < len(options.fill) else None
            what = f" filled from {fill}" if fill else ""
            deps.progress.step(f"creating disk {target}{what}")
            path = vm_dir / f"{target}.qcow2"
            deps.images.create_disk(path, options.disk_size, fill)
            disks.append(DiskSpec(target=target, path=str(path)))
        spec = VmSpec(
            name=options.name,
            memory=options.memory,
            vcpus=options.vcpus,
            kernel=boot.kernel,
            initrd=boot.initrd,
            cmdline=boot.cmdline + (" vmkeep.heartbeat" if options.heartbeat else ""),
            disks=tuple(disks),
            console_log=str(vm_dir / "console.log"),
            lab_dir=str(vm_dir),
            heartbeat_socket=str(vm_dir / HEARTBEAT_SOCKET) if options.heartbeat else None,
            tpm=options.tpm,
        )
        hv.define_vm(spec)
        defined = True
        deps.progress.step("starting the VM")
        hv.start_vm(options.name)
        wait_for_agent(deps, options.name, options.boot_timeout)
    except BaseException:
        _remove_quietly(hv, options.name if defined else None, vm_dir)
        raise
    return hv.get_vm(options.name)


def ensure_lab(deps: LabDeps, lab_root: Path, options: LabOptions) -> tuple[VmInfo, bool]:
    """Reuse the lab VM ``options.name`` if it exists (starting it if needed), else create it.

    Returns the VM and whether it was created. Raises LabError if a VM of that name exists
    but is not a lab VM: vmkeep never takes over a VM it did not make.
    """
    try:
        existing = deps.hypervisor.get_vm(options.name)
    except VmNotFoundError:
        return create_lab(deps, lab_root, options), True
    if existing.lab_dir is None:
        raise LabError(f"{options.name!r} exists and is not a lab VM; choose another name")
    if not existing.state.is_active:
        deps.progress.step("starting the existing lab VM")
        deps.hypervisor.start_vm(options.name)
    wait_for_agent(deps, options.name, options.boot_timeout)
    return deps.hypervisor.get_vm(options.name), False


def wait_for_agent(deps: LabDeps, name: str, timeout: float) -> None:
    """Block until the guest agent of ``name`` answers. GuestAgentError after ``timeout`` s."""
    deps.progress.step("waiting for the guest agent")
    deadline = deps.clock.monotonic() + timeout
    while not deps.hypervisor.agent_ping(name, timeout=2):
        if deps.clock.monotonic() >= deadline:
            raise GuestAgentError(
                f"the guest agent of {name!r} did not answer within {timeout:g} s"
            )
        deps.clock.sleep(1.0)


def destroy_lab(hypervisor: Hypervisor, lab_root: Path, name: str) -> None:
    """Power off and undefine the lab VM ``name`` and delete its directory.

    Refuses (LabError) a VM that ``create_lab`` did not make. When the VM is already gone but
    its directory remains (an interrupted create), removes the directory. Raises
    VmNotFoundError when there is neither.
    """
    validate_lab_name(name)
    try:
        vm = hypervisor.get_vm(name)
    except VmNotFoundError:
        leftover = lab_root / name
        if (leftover / LAB_MARKER).is_file():
            shutil.rmtree(leftover)
            return
        raise
    if vm.lab_dir is None:
        raise LabError(f"{name!r} is not a lab VM; vmkeep lab destroy only removes lab VMs")
    vm_dir = Path(vm.lab_dir)
    hypervisor.stop_vm(name)
    hypervisor.undefine_vm(name)
    # The marker proves the directory is ours even if someone edited the domain's metadata.
    if (vm_dir / LAB_MARKER).is_file():
        shutil.rmtree(vm_dir)


def _remove_quietly(hypervisor: Hypervisor, name: str | None, vm_dir: Path) -> None:
    """Best-effort undo of a failed create; the original error is what the user must see."""
    if name is not None:
        with contextlib.suppress(VmkeepError):
            hypervisor.stop_vm(name)
        with contextlib.suppress(VmkeepError):
            hypervisor.undefine_vm(name)
    shutil.rmtree(vm_dir, ignore_errors=True)
