"""In-memory stand-ins for the ports, for fast unit tests. They prove nothing about libvirt:
the contract suite in tests/contract runs the same checks against the real thing."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from vmkeep.domain.errors import (
    AlreadyExistsError,
    GuestAgentError,
    HypervisorError,
    LockedError,
    NotFoundError,
    ToolError,
    VmNotFoundError,
)
from vmkeep.domain.extents import Extent
from vmkeep.domain.inventory import (
    AgentStatus,
    DiskDevice,
    DiskInfo,
    SnapshotInfo,
    SourceType,
    VmInfo,
    VmState,
)
from vmkeep.domain.snapshots import (
    FreeSpace,
    RevertState,
    Snapshot,
    SnapshotDeletion,
    SnapshotDisk,
    SnapshotKind,
    SnapshotRequest,
    decode_facts,
)
from vmkeep.domain.vmspec import ExecResult, GuestBoot, VmSpec


@dataclass
class _FakeVm:
    spec: VmSpec
    uuid: str
    running: bool = False
    agent_up: bool = False


class FakeHypervisor:
    """Hypervisor port in memory. ``agent_ready`` decides whether started guests answer."""

    def __init__(self, agent_ready: bool = True) -> None:
        self._vms: dict[str, _FakeVm] = {}
        self.agent_ready = agent_ready
        self.exec_log: list[tuple[str, tuple[str, ...]]] = []

    @property
    def uri(self) -> str:
        return "fake:///"

    def _vm(self, name: str) -> _FakeVm:
        try:
            return self._vms[name]
        except KeyError:
            raise VmNotFoundError(name) from None

    def list_vms(self) -> list[VmInfo]:
        return [self.get_vm(name) for name in sorted(self._vms)]

    def get_vm(self, name: str) -> VmInfo:
        vm = self._vm(name)
        if not vm.running:
            agent = AgentStatus.VM_NOT_RUNNING
        else:
            agent = AgentStatus.RESPONDING if vm.agent_up else AgentStatus.NOT_RESPONDING
        return VmInfo(
            name=name,
            uuid=vm.uuid,
            state=VmState.RUNNING if vm.running else VmState.SHUTOFF,
            persistent=True,
            vcpus=vm.spec.vcpus,
            memory=vm.spec.memory,
            max_memory=vm.spec.memory,
            disks=tuple(
                DiskInfo(
                    target=d.target,
                    device=DiskDevice.DISK,
                    source_type=SourceType.FILE,
                    source=d.path,
                    format=d.format,
                    bus="virtio",
                )
                for d in vm.spec.disks
            ),
            agent=agent,
            snapshots=tuple(
                SnapshotInfo(
                    name=snap.name,
                    created=snap.created,
                    parent=snap.parent,
                    state=snap.state,
                    current=snap.current,
                    external=snap.external,
                    memory=snap.kind is SnapshotKind.MEMORY,
                    description=snap.description,
                )
                for snap in self._snapshot_book().get(name, [])
            ),
            lab_dir=vm.spec.lab_dir,
        )

    def define_vm(self, spec: VmSpec) -> None:
        if spec.name in self._vms:
            raise AlreadyExistsError(f"a VM named {spec.name!r} already exists")
        self._vms[spec.name] = _FakeVm(spec=spec, uuid=str(uuid.uuid4()))

    def start_vm(self, name: str) -> None:
        vm = self._vm(name)
        vm.running = True
        vm.agent_up = self.agent_ready

    def stop_vm(self, name: str) -> None:
        vm = self._vm(name)
        vm.running = False
        vm.agent_up = False

    def undefine_vm(self, name: str) -> None:
        if self._vm(name).running:
            raise HypervisorError(f"cannot undefine {name!r}: it is running")
        del self._vms[name]

    def agent_ping(self, name: str, timeout: int = 2) -> bool:
        return self._vm(name).agent_up

    def guest_exec(
        self, name: str, argv: Sequence[str], stdin: bytes | None = None, timeout: float = 60
    ) -> ExecResult:
        if not self._vm(name).agent_up:
            raise GuestAgentError(f"guest agent of {name!r} does not answer")
        self.exec_log.append((name, tuple(argv)))
        if list(argv[:1]) == ["echo"]:
            return ExecResult(0, (" ".join(argv[1:]) + "\n").encode(), b"")
        return ExecResult(127, b"", f"{argv[0]}: not found\n".encode())

    # -- snapshots: in memory, no files; disks move to their overlays like in libvirt ------

    def _snapshot_book(self) -> dict[str, list[Snapshot]]:
        """Snapshots by VM. Tests may set ``snapshot_failures`` (VM names whose snapshots fail)
        and ``free_bytes`` (what free_space reports) on the fake."""
        if not hasattr(self, "_snapshots"):
            self._snapshots: dict[str, list[Snapshot]] = {}
        return self._snapshots

    def list_snapshots(self, name: str) -> list[Snapshot]:
        self._vm(name)
        return list(self._snapshot_book().get(name, []))

    def create_snapshot(self, name: str, request: SnapshotRequest) -> Snapshot:
        vm = self._vm(name)
        book = self._snapshot_book()
        if any(s.name == request.name for s in book.get(name, [])):
            raise AlreadyExistsError(f"{name!r} already has a snapshot named {request.name!r}")
        if name in getattr(self, "snapshot_failures", ()):
            raise HypervisorError(f"snapshotting {name!r}: injected failure")
        if request.memory_file and not vm.running:
            raise HypervisorError(f"{name!r} is not running")
        overlays = dict(request.overlays)
        disks = tuple(
            SnapshotDisk(d.target, d.path, d.format, overlays[d.target])
            for d in vm.spec.disks
            if d.target in overlays
        )
        current = [s for s in book.get(name, []) if s.current]
        snapshot = Snapshot(
            vm=name,
            name=request.name,
            kind=SnapshotKind.MEMORY if request.memory_file else SnapshotKind.DISK,
            created=len(book.get(name, [])),
            parent=current[0].name if current else None,
            state="running" if vm.running else "shutoff",
            current=True,
            memory_file=request.memory_file,
            disks=disks,
            facts=decode_facts(request.description),
            description=request.description,
        )
        book[name] = [replace(s, current=False) for s in book.get(name, [])] + [snapshot]
        vm.spec = replace(
            vm.spec,
            disks=tuple(replace(d, path=overlays.get(d.target, d.path)) for d in vm.spec.disks),
        )
        return snapshot

    def _find_snapshot(self, name: str, snapshot: str) -> Snapshot:
        for found in self.list_snapshots(name):
            if found.name == snapshot:
                return found
        raise NotFoundError(f"{name!r} has no snapshot named {snapshot!r}")

    def revert_snapshot(self, name: str, snapshot: str, state: RevertState) -> float:
        vm = self._vm(name)
        target = self._find_snapshot(name, snapshot)
        frozen = {d.target: d.frozen for d in target.disks}
        vm.spec = replace(
            vm.spec,
            disks=tuple(
                replace(d, path=f"{frozen[d.target]}.revert") if d.target in frozen else d
                for d in vm.spec.disks
            ),
        )
        vm.running = state is not RevertState.SHUTOFF
        vm.agent_up = vm.running and self.agent_ready
        book = self._snapshot_book()
        book[name] = [replace(s, current=s.name == snapshot) for s in book[name]]
        return 0.0

    def delete_snapshot(self, name: str, snapshot: str) -> SnapshotDeletion:
        doomed = self._find_snapshot(name, snapshot)
        book = self._snapshot_book()
        book[name] = [
            replace(s, parent=doomed.parent) if s.parent == snapshot else s
            for s in book[name]
            if s.name != snapshot
        ]
        removed = (doomed.memory_file,) if doomed.memory_file else ()
        return SnapshotDeletion(removed=removed)

    def free_space(self, directory: str) -> FreeSpace:
        return FreeSpace(filesystem="/fake", free=getattr(self, "free_bytes", 1 << 40))

    def finish_block_jobs(self, name: str) -> list[str]:
        self._vm(name)
        return []

    def remove_stray_files(self, name: str) -> list[str]:
        self._vm(name)
        return []


class FakeImages:
    """DiskImageTool that writes tiny placeholder files; can be told to fail on the Nth disk."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.fail_on = fail_on
        self.created: list[tuple[Path, int, Path | None]] = []

    def create_disk(self, path: Path, size: int, fill_from: Path | None = None) -> None:
        if path.exists():
            raise AlreadyExistsError(f"{path} already exists")
        if self.fail_on is not None and len(self.created) == self.fail_on:
            raise ToolError("qemu-img failed: No space left on device")
        path.write_bytes(b"QFI\xfb")
        self.created.append((path, size, fill_from))


class FakeGuest:
    """GuestBuilder that pretends the guest exists in ``cache_dir``."""

    def __init__(self) -> None:
        self.calls = 0

    def ensure_guest(self, cache_dir: Path) -> GuestBoot:
        self.calls += 1
        return GuestBoot(str(cache_dir / "vmlinuz"), str(cache_dir / "initrd.img"), "quiet")


@dataclass
class FakeClock:
    """Clock whose sleep advances time instantly."""

    now: float = 0.0
    sleeps: list[float] = field(default_factory=list)

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class RecordingProgress:
    """Progress port that remembers the steps and totals."""

    def __init__(self) -> None:
        self.steps: list[str] = []
        self.tasks: list[tuple[str, int]] = []
        self.done = 0

    def step(self, message: str) -> None:
        self.steps.append(message)

    def begin(self, label: str, total: int, unit: str = "bytes") -> None:
        self.tasks.append((label, total))
        self.done = 0

    def advance(self, amount: int) -> None:
        self.done += amount

    def finish(self) -> None:
        pass


class MemoryImage:
    """BlockReader over bytes; extents report 64 KiB blocks of zeros as zero, like qemu."""

    def __init__(self, data: bytes, fail_after: int | None = None) -> None:
        self.data = data
        self.reads: list[tuple[int, int]] = []
        self.fail_after = fail_after

    @property
    def size(self) -> int:
        return len(self.data)

    def extents(self) -> list[Extent]:
        block = 64 << 10
        found = []
        for offset in range(0, len(self.data), block):
            piece = self.data[offset : offset + block]
            found.append(Extent(offset, len(piece), zero=not any(piece)))
        return found

    def pread(self, offset: int, length: int) -> bytes:
        if self.fail_after is not None and len(self.reads) >= self.fail_after:
            raise ToolError("NBD read failed: connection reset")
        self.reads.append((offset, length))
        return self.data[offset : offset + length]


class MemoryWriter:
    def __init__(self, size: int) -> None:
        self.data = bytearray(size)
        self.written: list[int] = []
        self.reserved: list[tuple[int, int]] = []
        self.events: list[str] = []  # "reserve" and "write", in order

    def pwrite(self, offset: int, data: bytes) -> None:
        self.data[offset : offset + len(data)] = data
        self.written.append(offset)
        self.events.append("write")

    def reserve(self, offset: int, length: int) -> None:
        self.reserved.append((offset, length))
        self.events.append("reserve")


class FakeImageIO:
    """ImageIO over dicts: ``images`` to read from, ``outputs`` for what was restored (only
    committed ones: a writer whose block raised is discarded, like the real one)."""

    def __init__(self) -> None:
        self.images: dict[Path, MemoryImage] = {}
        self.outputs: dict[Path, bytes] = {}
        self.reserved: dict[Path, list[tuple[int, int]]] = {}
        self.events: dict[Path, list[str]] = {}

    @contextlib.contextmanager
    def open_reader(
        self,
        path: Path,
        connections: int = 4,
        *,
        image_format: str | None = None,
        bitmap: str | None = None,
    ) -> Iterator[MemoryImage]:
        if path not in self.images:
            raise NotFoundError(f"{path} does not exist")
        yield self.images[path]

    @contextlib.contextmanager
    def create_writer(
        self,
        path: Path,
        size: int,
        image_format: str,
        overwrite: bool = False,
        *,
        data_bytes: int | None = None,
    ) -> Iterator[MemoryWriter]:
        if path in self.outputs and not overwrite:
            raise AlreadyExistsError(f"{path} exists")
        writer = MemoryWriter(size)
        yield writer
        self.outputs[path] = bytes(writer.data)
        self.reserved[path] = writer.reserved
        self.events[path] = writer.events


class MemoryLocks:
    """HostLocks in memory: ``held`` maps each held key to what holds it."""

    def __init__(self) -> None:
        self.held: dict[str, str] = {}
        self.history: list[str] = []

    @contextlib.contextmanager
    def hold(self, key: str, what: str) -> Iterator[None]:
        if key in self.held:
            raise LockedError(f"cannot start {what}: {self.held[key]} is running on this host")
        self.held[key] = what
        self.history.append(what)
        try:
            yield
        finally:
            del self.held[key]
