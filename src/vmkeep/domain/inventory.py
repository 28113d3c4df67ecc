"""What vmkeep knows about a VM: state, CPUs, memory, disks, agent, checkpoints, snapshots.

These are plain frozen values. Drivers fill them in from the hypervisor; the CLI renders them.
``None`` always means "unknown" (for example the size of a network disk), never zero.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class VmState(enum.StrEnum):
    """Run state of a domain, named as libvirt names it."""

    RUNNING = "running"
    BLOCKED = "blocked"
    PAUSED = "paused"
    SHUTDOWN = "shutdown"
    SHUTOFF = "shut off"
    CRASHED = "crashed"
    PMSUSPENDED = "pmsuspended"
    UNKNOWN = "unknown"

    @property
    def is_active(self) -> bool:
        """True while a QEMU process exists for the domain."""
        return self not in (VmState.SHUTOFF, VmState.CRASHED, VmState.UNKNOWN)


class AgentStatus(enum.StrEnum):
    """Whether the QEMU guest agent can be talked to right now."""

    RESPONDING = "responding"
    NOT_RESPONDING = "not responding"
    NO_CHANNEL = "no channel"
    VM_NOT_RUNNING = "vm not running"


class DiskDevice(enum.StrEnum):
    """The ``device`` attribute of a libvirt ``<disk>``."""

    DISK = "disk"
    CDROM = "cdrom"
    FLOPPY = "floppy"
    LUN = "lun"


class SourceType(enum.StrEnum):
    """The ``type`` attribute of a libvirt ``<disk>``: where the bytes live."""

    FILE = "file"
    BLOCK = "block"
    NETWORK = "network"
    VOLUME = "volume"
    DIR = "dir"
    NVME = "nvme"
    VHOSTUSER = "vhostuser"
    VHOSTVDPA = "vhostvdpa"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class BackingImage:
    """One layer below a disk's top image, nearest first."""

    source: str
    format: str | None


@dataclass(frozen=True, slots=True)
class DiskInfo:
    """One ``<disk>`` of a domain.

    ``source`` is a path for file and block disks, ``protocol://host:port/name`` for network
    disks, ``pool/volume`` for volume disks, and ``None`` for an empty cdrom drive.
    """

    target: str
    device: DiskDevice
    source_type: SourceType
    source: str | None
    format: str | None
    bus: str | None = None
    readonly: bool = False
    virtual_size: int | None = None
    allocated_size: int | None = None
    backing_chain: tuple[BackingImage, ...] = ()


@dataclass(frozen=True, slots=True)
class CheckpointInfo:
    """A libvirt checkpoint (a point incremental backups start from)."""

    name: str
    created: int | None
    parent: str | None
    disks: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """A libvirt snapshot; ``external`` when its disks live in overlay files."""

    name: str
    created: int | None
    parent: str | None
    state: str | None
    current: bool = False
    external: bool = False
    memory: bool = False
    description: str | None = None


@dataclass(frozen=True, slots=True)
class VmInfo:
    """Everything ``vmkeep vm show`` reports about one domain. ``memory`` is in bytes."""

    name: str
    uuid: str
    state: VmState
    persistent: bool
    vcpus: int
    memory: int
    max_memory: int
    disks: tuple[DiskInfo, ...] = ()
    agent: AgentStatus = AgentStatus.NO_CHANNEL
    checkpoints: tuple[CheckpointInfo, ...] = ()
    snapshots: tuple[SnapshotInfo, ...] = ()
    autostart: bool = False
    domain_id: int | None = None
    lab_dir: str | None = None
    """Set when the VM was made by ``vmkeep lab create``: the directory holding its files."""
    nvram: str | None = None
    """Path of the UEFI variable store (``<os><nvram>``), if the VM has one."""
    tpm_state: str | None = None
    """Directory of the VM's emulated TPM state (swtpm), if it has an emulated TPM."""
