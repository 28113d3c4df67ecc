"""Seams between the use cases (engine) and the outside world (drivers).

Each port is a small Protocol with one shared contract test suite (tests/contract) that every
implementation passes. Only ``vmkeep.services`` picks the concrete implementation.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

from vmkeep.domain.backup import BackupJobRequest
from vmkeep.domain.extents import Extent
from vmkeep.domain.inventory import VmInfo
from vmkeep.domain.objects import ObjectInfo
from vmkeep.domain.snapshots import (
    FreeSpace,
    RevertState,
    Snapshot,
    SnapshotDeletion,
    SnapshotRequest,
)
from vmkeep.domain.vmspec import ExecResult, GuestBoot, VmSpec


class Hypervisor(Protocol):
    """A connection to one hypervisor (one libvirt URI).

    Every method raises VmNotFoundError for an unknown name, HypervisorError when the
    hypervisor refuses, and GuestAgentError for guest-agent failures. Names are passed through
    verbatim: spaces, quotes and unicode are fine.
    """

    @property
    def uri(self) -> str:
        """The URI this hypervisor was reached at."""
        ...

    def list_vms(self) -> list[VmInfo]:
        """Every domain, persistent or transient, running or not, sorted by name."""
        ...

    def get_vm(self, name: str) -> VmInfo:
        """One domain, fully described (disks, agent, checkpoints, snapshots)."""
        ...

    def define_vm(self, spec: VmSpec) -> None:
        """Define a persistent domain. Raises AlreadyExistsError if the name is taken."""
        ...

    def start_vm(self, name: str) -> None:
        """Start a defined domain. Idempotent: a running domain is left alone."""
        ...

    def stop_vm(self, name: str) -> None:
        """Power a domain off at once. Idempotent: a stopped domain is left alone."""
        ...

    def undefine_vm(self, name: str) -> None:
        """Forget a stopped domain, with its snapshot and checkpoint metadata."""
        ...

    def agent_ping(self, name: str, timeout: int = 2) -> bool:
        """True when the guest agent answers ``guest-ping`` within ``timeout`` seconds."""
        ...

    def guest_exec(
        self, name: str, argv: Sequence[str], stdin: bytes | None = None, timeout: float = 60
    ) -> ExecResult:
        """Run ``argv`` in the guest through the agent and wait for it to finish.

        Raises GuestAgentError when the agent cannot run it or it outlives ``timeout``.
        """
        ...

    def domain_xml(self, name: str) -> str:
        """The persistent (inactive) definition, without secrets; what a restore redefines."""
        ...

    def freeze_filesystems(self, name: str, timeout: int) -> int:
        """Freeze the guest's filesystems through the agent; returns how many. Raises
        GuestAgentError if the agent is missing, hangs past ``timeout`` s, or refuses."""
        ...

    def thaw_filesystems(self, name: str, timeout: int) -> int:
        """Thaw what freeze_filesystems froze and return how many filesystems were frozen.
        Safe to call when nothing is frozen (returns 0)."""
        ...

    def backup_job(self, request: BackupJobRequest) -> AbstractContextManager[BackupExport]:
        """Start a pull-mode backup creating ``request.checkpoint`` atomically with it.

        Leaving the block normally ends the job and keeps the checkpoint. Leaving it with an
        exception ends the job *and deletes the new checkpoint*, so a failed backup never
        leaves a checkpoint that could mislead the next incremental. Either way the job's
        scratch files and socket are gone afterwards. Raises HypervisorError if the job
        cannot start (for example, a bitmap the incremental needs is missing or broken).
        """
        ...

    def abort_backup_job(self, name: str) -> bool:
        """End a backup job left running by a killed process; True if there was one."""
        ...

    def define_restored_vm(
        self,
        xml: str,
        new_name: str,
        disks: dict[str, tuple[str, str]],
        files_dir: str,
        nvram: str | None = None,
        tpm_files: Mapping[str, str] | None = None,
    ) -> None:
        """Define a copy of the VM described by ``xml`` (a backed-up definition) named
        ``new_name``, with fresh UUID and MACs, its disks ``{target: (path, format)}``, its
        UEFI variables at ``nvram`` and, for an emulated TPM, the state files ``tpm_files``
        (name to path) put where the new VM's TPM will find them. Raises AlreadyExistsError if
        the name is taken; if the TPM state cannot be put in place, the new VM is undefined
        again and HypervisorError raised."""
        ...

    def delete_checkpoint(self, name: str, checkpoint: str) -> None:
        """Delete a checkpoint (its changes merge into its parent's bitmap). Idempotent."""
        ...

    # -- snapshots (external: overlay files on the disks, optionally a memory state file) ---

    def list_snapshots(self, name: str) -> list[Snapshot]:
        """Every snapshot of the VM, external or internal, sorted by creation time, with the
        bytes each overlay occupies."""
        ...

    def create_snapshot(self, name: str, request: SnapshotRequest) -> Snapshot:
        """Take an external snapshot atomically across ``request.overlays`` (the VM running
        or not), saving RAM live to ``request.memory_file`` if given (running VMs only). The
        guest is not frozen here: callers quiesce around it. Raises AlreadyExistsError if the
        name or a file is taken, HypervisorError if libvirt refuses; on any failure no overlay
        or memory file is left and the VM runs on as before."""
        ...

    def revert_snapshot(self, name: str, snapshot: str, state: RevertState) -> float:
        """Bring the VM back to the snapshot: stop it, put new overlays on the snapshot's
        frozen images, point the disks at them, and restore the saved RAM (memory snapshots)
        or boot (disk-only, unless ``state`` is SHUTOFF). Later snapshots stay available.
        Returns how many seconds the VM was down (from stopping it until it ran again).
        Overlays no snapshot needs any more are removed afterwards. Raises NotFoundError for
        an unknown snapshot, UsageError for an internal one or a changed disk layout; if
        the revert fails the VM is left on its previous disks (running again if it ran)."""
        ...

    def delete_snapshot(self, name: str, snapshot: str) -> SnapshotDeletion:
        """Forget the snapshot and merge away the images only it needed (block commit in a
        running VM, ``qemu-img commit`` otherwise), removing its memory state and the overlay
        files no longer used. What the guest sees and every other snapshot's content stay
        byte for byte the same. Raises NotFoundError, UsageError for an internal snapshot,
        HypervisorError if a block job is already running on the VM's disks."""
        ...

    def free_space(self, directory: str) -> FreeSpace:
        """Free space on the filesystem holding ``directory`` (which must exist)."""
        ...

    def finish_block_jobs(self, name: str) -> list[str]:
        """Complete the block commits left running on the VM's disks (an interrupted
        delete_snapshot; callers hold the VM's lock, so no live vmkeep owns them), pivoting
        an active commit. Returns what was done, as sentences. Raises HypervisorError for
        other kinds of block job."""
        ...

    def remove_stray_files(self, name: str) -> list[str]:
        """Remove the overlays and memory states vmkeep made for the VM that neither the VM
        nor any snapshot uses (left by an interrupted create or revert); return them."""
        ...


class BackupExport(Protocol):
    """A running pull-mode backup job: the disks frozen at the job's start, readable while
    the VM goes on writing."""

    def open_disk(self, target: str, connections: int = 4) -> AbstractContextManager[ExportReader]:
        """Connect to the export of disk ``target``."""
        ...


class DiskImageTool(Protocol):
    """Creates disk images for VMs vmkeep makes itself."""

    def create_disk(self, path: Path, size: int, fill_from: Path | None = None) -> None:
        """Create a qcow2 v3 image of ``size`` bytes at ``path``.

        With ``fill_from`` the image holds an ext4 filesystem with a copy of that directory.
        Never overwrites: raises AlreadyExistsError if ``path`` exists. On failure nothing is
        left at ``path``.
        """
        ...


class GuestBuilder(Protocol):
    """Builds (once) and caches the small Linux guest lab VMs boot."""

    def ensure_guest(self, cache_dir: Path) -> GuestBoot:
        """Return the kernel and initramfs, building them into ``cache_dir`` if missing."""
        ...


class Hooks(Protocol):
    """The administrator's host-side commands around a backup's consistency point."""

    def run(self, phase: str, vm: str, backup_id: str) -> None:
        """Run the ``phase`` (``pre``: before the freeze, ``post``: after the thaw) command,
        if one is configured. Raises HookError if it fails or times out."""
        ...


class CommandRunner(Protocol):
    """Runs an administrator's host-side command (an argv, never through a shell)."""

    def run(self, argv: Sequence[str], env: Mapping[str, str], timeout: float) -> ExecResult:
        """Run ``argv`` with ``env`` added to vmkeep's environment, wait at most ``timeout``
        seconds, and return its exit code and output. Raises ToolError when it cannot be
        started or does not finish in time (it is killed then)."""
        ...


class HostLocks(Protocol):
    """Exclusive locks between processes on this host, released when the holder dies."""

    def hold(self, key: str, what: str) -> AbstractContextManager[None]:
        """Hold the lock ``key`` for the block; LockedError naming ``what`` if it is taken."""
        ...


class Clock(Protocol):
    """Time, injected so waits can be tested without sleeping."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""
        ...

    def sleep(self, seconds: float) -> None:
        """Block for ``seconds``."""
        ...


class Progress(Protocol):
    """Where long-running use cases report what they are doing (a spinner, a log, nothing)."""

    def step(self, message: str) -> None:
        """A new phase has started; ``message`` is a short human sentence."""
        ...

    def begin(self, label: str, total: int, unit: str = "bytes") -> None:
        """A measurable task starts: ``total`` units (``bytes`` or ``items``) to go. Ends any
        earlier task."""
        ...

    def advance(self, amount: int) -> None:
        """``amount`` more units of the current task are done. Thread-safe."""
        ...

    def finish(self) -> None:
        """The current task is over."""
        ...


class ObjectStore(Protocol):
    """A flat namespace of write-once objects: a local directory, an S3 bucket, memory.

    Names are validated by ``domain.objects.validate_object_name``. Every implementation
    passes tests/contract/test_object_store_contract.py. Errors: ObjectNotFoundError for a
    missing object, StoreTransientError for failures worth retrying, StoreFullError when out of
    space, StoreError otherwise.
    """

    @property
    def location(self) -> str:
        """Where the store lives, for messages (``/srv/repo``, ``s3://bucket/prefix``)."""
        ...

    def put(self, name: str, data: bytes | bytearray) -> bool:
        """Create ``name`` holding ``data``, atomically: readers see all of it or nothing.

        Never overwrites: returns False, leaving the existing object untouched, if ``name``
        already exists; True if it was created.
        """
        ...

    def get(self, name: str) -> bytes:
        """The whole content of ``name``."""
        ...

    def exists(self, name: str) -> bool:
        """Whether ``name`` exists."""
        ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose name starts with ``prefix`` (``""`` for all), in no set order."""
        ...

    def delete(self, name: str) -> None:
        """Remove ``name``. Idempotent: deleting a missing object is not an error."""
        ...

    def sync(self) -> None:
        """Make every ``put`` that returned durable (a no-op where puts are durable already,
        as on S3). Callers sync before publishing an object that refers to earlier ones."""
        ...


class BlockReader(Protocol):
    """Random read access to a disk image or a VM disk export. ``pread`` is thread-safe."""

    @property
    def size(self) -> int:
        """Virtual size in bytes."""
        ...

    def extents(self) -> list[Extent]:
        """Extents covering the disk in order, telling which ranges read as zeros."""
        ...

    def pread(self, offset: int, length: int) -> bytes | bytearray:
        """Exactly ``length`` bytes at ``offset`` (a bytearray where that saves a copy)."""
        ...


class ExportReader(BlockReader, Protocol):
    """A disk exported by a backup job: a BlockReader that also knows what changed."""

    def dirty_ranges(self) -> list[Extent] | None:
        """Ranges written since the job's ``incremental_from`` checkpoint; None for a disk
        read in full."""
        ...


class BlockWriter(Protocol):
    """Random write access to a new image. ``pwrite`` is thread-safe; unwritten ranges read
    as zeros and take no space."""

    def pwrite(self, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset``."""
        ...

    def reserve(self, offset: int, length: int) -> None:
        """Set space aside for data about to be written at ``[offset, offset + length)``,
        where the image can and the filesystem has room (best effort: lack of room is for the
        writes to report). Space reserved and not written is given back when the image is
        complete."""
        ...


class ImageIO(Protocol):
    """Opens disk images for reading and creates new ones, whatever their format."""

    def open_reader(
        self,
        path: Path,
        connections: int = 4,
        *,
        image_format: str | None = None,
        bitmap: str | None = None,
    ) -> AbstractContextManager[ExportReader]:
        """Read-only access to an existing image that no running VM uses.

        ``image_format`` None means probe it (never do that for guest-writable raw images:
        a guest could fake a qcow2 header). With ``bitmap``, ``dirty_ranges`` reports the
        changes that persistent bitmap recorded. Raises ToolError/NotFoundError if the image
        cannot be opened."""
        ...

    def create_writer(
        self,
        path: Path,
        size: int,
        image_format: str,
        overwrite: bool = False,
        *,
        data_bytes: int | None = None,
    ) -> AbstractContextManager[BlockWriter]:
        """A new thin image of ``size`` bytes that appears at ``path`` only when the block
        ends without an exception; on an exception nothing is left at ``path``. Raises
        AlreadyExistsError if ``path`` exists and ``overwrite`` is False. ``data_bytes``, when
        known, is about how much will be written: it may choose how the image is written,
        never what it contains."""
        ...
