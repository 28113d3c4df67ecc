"""The Hypervisor port over libvirt-python.

All libvirt errors are translated here into the vmkeep exception tree; nothing above this
module sees ``libvirt.libvirtError``.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar

import libvirt
import libvirt_qemu

from vmkeep.domain.backup import BackupJobRequest
from vmkeep.domain.errors import (
    AlreadyExistsError,
    GuestAgentError,
    HypervisorConnectionError,
    HypervisorError,
    ToolError,
    VmNotFoundError,
)
from vmkeep.domain.inventory import (
    AgentStatus,
    CheckpointInfo,
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
    SnapshotRequest,
)
from vmkeep.domain.vmspec import ExecResult, VmSpec
from vmkeep.drivers import domain_xml, libvirt_backup
from vmkeep.drivers.libvirt_backup import LibvirtExport
from vmkeep.drivers.qemu_img import read_backing_chain
from vmkeep.drivers.tpm_state import install_restored_tpm, tpm_state_dir

log = logging.getLogger(__name__)
_T = TypeVar("_T")

_STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: VmState.UNKNOWN,
    libvirt.VIR_DOMAIN_RUNNING: VmState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: VmState.BLOCKED,
    libvirt.VIR_DOMAIN_PAUSED: VmState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: VmState.SHUTDOWN,
    libvirt.VIR_DOMAIN_SHUTOFF: VmState.SHUTOFF,
    libvirt.VIR_DOMAIN_CRASHED: VmState.CRASHED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: VmState.PMSUSPENDED,
}


def _silence_libvirt(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr by default; we report them ourselves."""


libvirt.registerErrorHandler(_silence_libvirt, None)


@contextmanager
def _translated(action: str, name: str | None = None) -> Iterator[None]:
    """Turn libvirt errors raised inside the block into vmkeep errors."""
    try:
        yield
    except libvirt.libvirtError as exc:
        code = exc.get_error_code()
        if name is not None and code == libvirt.VIR_ERR_NO_DOMAIN:
            raise VmNotFoundError(name) from exc
        if code in (libvirt.VIR_ERR_AGENT_UNRESPONSIVE, libvirt.VIR_ERR_AGENT_UNSYNCED):
            raise GuestAgentError(f"{action}: guest agent does not answer") from exc
        raise HypervisorError(f"{action}: {exc.get_error_message() or exc}") from exc


class LibvirtHypervisor:
    """A Hypervisor on one libvirt connection. Not thread-safe; close() when done."""

    def __init__(self, uri: str) -> None:
        try:
            self._conn = libvirt.open(uri)
        except libvirt.libvirtError as exc:
            raise HypervisorConnectionError(
                f"cannot connect to {uri}: {exc.get_error_message() or exc}"
            ) from exc
        self._uri = uri

    @property
    def uri(self) -> str:
        return self._uri

    def close(self) -> None:
        """Release the connection. Safe to call twice."""
        if self._conn is not None:
            with _translated("closing the connection"):
                self._conn.close()
            self._conn = None

    # -- inventory --------------------------------------------------------------------------

    def list_vms(self) -> list[VmInfo]:
        with _translated("listing domains"):
            domains = self._conn.listAllDomains(0)
        infos = []
        for dom in domains:
            try:
                infos.append(self._describe(dom))
            except VmNotFoundError:
                continue  # undefined while we were looking: it is no longer in the list
        return sorted(infos, key=lambda vm: vm.name)

    def get_vm(self, name: str) -> VmInfo:
        return self._describe(self._lookup(name))

    def _lookup(self, name: str) -> Any:
        with _translated(f"looking up {name!r}", name):
            return self._conn.lookupByName(name)

    def _describe(self, dom: Any) -> VmInfo:
        name = dom.name()
        with _translated(f"describing {name!r}", name):
            state_code, max_kib, mem_kib, vcpus, _cpu_time = dom.info()
            active = bool(dom.isActive())
            parsed = domain_xml.parse_domain(dom.XMLDesc(0))
            persistent = bool(dom.isPersistent())
            autostart = bool(dom.autostart()) if persistent else False
            dom_id = dom.ID() if active else None
            checkpoints = self._checkpoints(dom)
            snapshots = self._snapshots(dom)
        state = _STATES.get(state_code, VmState.UNKNOWN)
        disks = tuple(self._with_sizes(dom, disk, active) for disk in parsed.disks)
        return VmInfo(
            name=name,
            uuid=parsed.uuid,
            state=state,
            persistent=persistent,
            vcpus=vcpus,
            memory=mem_kib * 1024,
            max_memory=max_kib * 1024,
            disks=disks,
            agent=self._agent_status(dom, active, parsed),
            checkpoints=checkpoints,
            snapshots=snapshots,
            autostart=autostart,
            domain_id=dom_id,
            lab_dir=parsed.lab_dir,
            nvram=parsed.nvram,
            tpm_state=tpm_state_dir(parsed.uuid, parsed.tpm_version),
        )

    def _with_sizes(self, dom: Any, disk: DiskInfo, active: bool) -> DiskInfo:
        """Add sizes (and, for a stopped VM, the backing chain) that the XML does not hold."""
        if disk.source is None:
            return disk
        virtual: int | None = None
        allocated: int | None = None
        try:
            capacity, allocation, _physical = dom.blockInfo(disk.target, 0)
            virtual, allocated = int(capacity), int(allocation)
        except libvirt.libvirtError as exc:
            # Network disks of stopped VMs, missing files, empty media: sizes stay unknown.
            log.debug("no block info for %s: %s", disk.target, exc.get_error_message())
        chain = disk.backing_chain
        # libvirt only reports backing chains of running VMs; ask qemu-img for the others.
        if (
            not active
            and not chain
            and disk.source_type in (SourceType.FILE, SourceType.BLOCK)
            and disk.format == "qcow2"
        ):
            try:
                chain = read_backing_chain(disk.source)
            except (ToolError, ValueError) as exc:
                log.debug("no backing chain for %s: %s", disk.source, exc)
        return DiskInfo(
            target=disk.target,
            device=disk.device,
            source_type=disk.source_type,
            source=disk.source,
            format=disk.format,
            bus=disk.bus,
            readonly=disk.readonly,
            virtual_size=virtual,
            allocated_size=allocated,
            backing_chain=chain,
        )

    def _checkpoints(self, dom: Any) -> tuple[CheckpointInfo, ...]:
        found = [
            domain_xml.parse_checkpoint(cp.getXMLDesc(libvirt.VIR_DOMAIN_CHECKPOINT_XML_NO_DOMAIN))
            for cp in dom.listAllCheckpoints(0)
        ]
        return tuple(sorted(found, key=lambda c: (c.created or 0, c.name)))

    def _snapshots(self, dom: Any) -> tuple[SnapshotInfo, ...]:
        found = [
            domain_xml.parse_snapshot(snap.getXMLDesc(0), current=bool(snap.isCurrent(0)))
            for snap in dom.listAllSnapshots(0)
        ]
        return tuple(sorted(found, key=lambda s: (s.created or 0, s.name)))

    def _agent_status(self, dom: Any, active: bool, parsed: domain_xml.ParsedDomain) -> AgentStatus:
        if not active:
            return AgentStatus.VM_NOT_RUNNING
        if not parsed.has_agent_channel:
            return AgentStatus.NO_CHANNEL
        # A disconnected channel means no agent is listening: skip the ping and its timeout.
        if parsed.agent_channel_state == "disconnected":
            return AgentStatus.NOT_RESPONDING
        return AgentStatus.RESPONDING if self._ping(dom, 2) else AgentStatus.NOT_RESPONDING

    # -- lifecycle --------------------------------------------------------------------------

    def define_vm(self, spec: VmSpec) -> None:
        if self._exists(spec.name):
            raise AlreadyExistsError(f"a VM named {spec.name!r} already exists")
        with _translated(f"defining {spec.name!r}"):
            self._conn.defineXML(domain_xml.render_domain(spec))

    def _exists(self, name: str) -> bool:
        try:
            self._lookup(name)
        except VmNotFoundError:
            return False
        return True

    def start_vm(self, name: str) -> None:
        dom = self._lookup(name)
        with _translated(f"starting {name!r}", name):
            if not dom.isActive():
                dom.create()

    def stop_vm(self, name: str) -> None:
        dom = self._lookup(name)
        with _translated(f"stopping {name!r}", name):
            if dom.isActive():
                dom.destroy()

    def undefine_vm(self, name: str) -> None:
        dom = self._lookup(name)
        with _translated(f"undefining {name!r}", name):
            if dom.isActive():
                raise HypervisorError(f"cannot undefine {name!r}: it is running")
            # Ask only for the clean-ups that apply: not every driver accepts every flag.
            flags = 0
            if dom.listAllSnapshots(0):
                flags |= libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            if dom.listAllCheckpoints(0):
                flags |= libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
            if dom.hasManagedSaveImage(0):
                flags |= libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
            if "<nvram" in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE):
                flags |= libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
            dom.undefineFlags(flags)

    # -- guest agent ------------------------------------------------------------------------

    def agent_ping(self, name: str, timeout: int = 2) -> bool:
        return self._ping(self._lookup(name), timeout)

    def _ping(self, dom: Any, timeout: int) -> bool:
        try:
            libvirt_qemu.qemuAgentCommand(dom, '{"execute":"guest-ping"}', timeout, 0)
        except libvirt.libvirtError:
            return False
        return True

    def _agent(self, dom: Any, command: str, arguments: dict[str, Any], timeout: int) -> Any:
        request = json.dumps({"execute": command, "arguments": arguments})
        with _translated(f"guest agent {command} in {dom.name()!r}", dom.name()):
            reply = libvirt_qemu.qemuAgentCommand(dom, request, timeout, 0)
        return json.loads(reply)["return"]

    def guest_exec(
        self, name: str, argv: Sequence[str], stdin: bytes | None = None, timeout: float = 60
    ) -> ExecResult:
        if not argv:
            raise GuestAgentError("guest_exec needs a command")
        dom = self._lookup(name)
        arguments: dict[str, Any] = {
            "path": argv[0],
            "arg": list(argv[1:]),
            "capture-output": True,
        }
        if stdin is not None:
            arguments["input-data"] = base64.b64encode(stdin).decode("ascii")
        pid = self._agent(dom, "guest-exec", arguments, 10)["pid"]
        status = _poll(
            lambda: self._agent(dom, "guest-exec-status", {"pid": pid}, 10),
            timeout,
            f"{argv[0]} in {name!r}",
        )
        return ExecResult(
            exit_code=int(status.get("exitcode", -int(status.get("signal", 1)))),
            stdout=base64.b64decode(status.get("out-data", "")),
            stderr=base64.b64decode(status.get("err-data", "")),
        )

    # -- backups ----------------------------------------------------------------------------

    def domain_xml(self, name: str) -> str:
        dom = self._lookup(name)
        with _translated(f"reading the definition of {name!r}", name):
            flags = libvirt.VIR_DOMAIN_XML_INACTIVE if dom.isPersistent() else 0
            return str(dom.XMLDesc(flags))

    def freeze_filesystems(self, name: str, timeout: int) -> int:
        dom = self._lookup(name)
        with _translated(f"freezing the filesystems of {name!r}", name):
            dom.agentSetResponseTimeout(timeout, 0)
            return int(dom.fsFreeze(None, 0))

    def thaw_filesystems(self, name: str, timeout: int) -> int:
        dom = self._lookup(name)
        with _translated(f"thawing the filesystems of {name!r}", name):
            dom.agentSetResponseTimeout(timeout, 0)
            return int(dom.fsThaw(None, 0))

    def backup_job(self, request: BackupJobRequest) -> AbstractContextManager[LibvirtExport]:
        return libvirt_backup.pull_backup(self._lookup(request.vm), request)

    def abort_backup_job(self, name: str) -> bool:
        dom = self._lookup(name)
        if not libvirt_backup.job_active(dom):
            return False
        libvirt_backup.end_job(dom)
        return True

    def define_restored_vm(
        self,
        xml: str,
        new_name: str,
        disks: dict[str, tuple[str, str]],
        files_dir: str,
        nvram: str | None = None,
        tpm_files: Mapping[str, str] | None = None,
    ) -> None:
        if self._exists(new_name):
            raise AlreadyExistsError(f"a VM named {new_name!r} already exists")
        definition = domain_xml.rewrite_for_restore(xml, new_name, disks, files_dir, nvram)
        with _translated(f"defining {new_name!r}"):
            dom = self._conn.defineXML(definition)
        with _translated(f"setting up the TPM of {new_name!r}"):
            install_restored_tpm(dom, definition, tpm_files or {})

    def delete_checkpoint(self, name: str, checkpoint: str) -> None:
        libvirt_backup.delete_checkpoint(self._lookup(name), checkpoint)

    # -- snapshots (drivers/libvirt_snapshots.py) -------------------------------------------
    # Those modules are imported on first use: backups and listings do not need them, and
    # every command's start-up would pay for them.

    def list_snapshots(self, name: str) -> list[Snapshot]:
        from vmkeep.drivers import libvirt_snapshots

        return libvirt_snapshots.list_snapshots(self._lookup(name))

    def create_snapshot(self, name: str, request: SnapshotRequest) -> Snapshot:
        from vmkeep.drivers import libvirt_snapshots

        return libvirt_snapshots.create_snapshot(self._lookup(name), request)

    def revert_snapshot(self, name: str, snapshot: str, state: RevertState) -> float:
        from vmkeep.drivers import libvirt_snapshots

        return libvirt_snapshots.revert_snapshot(self._lookup(name), snapshot, state)

    def delete_snapshot(self, name: str, snapshot: str) -> SnapshotDeletion:
        from vmkeep.drivers import libvirt_snapshots

        return libvirt_snapshots.delete_snapshot(self._lookup(name), snapshot)

    def free_space(self, directory: str) -> FreeSpace:
        from vmkeep.drivers import libvirt_snapshots

        return libvirt_snapshots.free_space(directory)

    def finish_block_jobs(self, name: str) -> list[str]:
        from vmkeep.drivers import snapshot_repair

        return snapshot_repair.finish_block_jobs(self._lookup(name))

    def remove_stray_files(self, name: str) -> list[str]:
        from vmkeep.drivers import snapshot_repair

        return snapshot_repair.remove_stray_files(self._lookup(name))


def _poll(fetch: Callable[[], dict[str, Any]], timeout: float, what: str) -> dict[str, Any]:
    """Call ``fetch`` until its result says ``exited``; GuestAgentError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        status = fetch()
        if status.get("exited"):
            return status
        if time.monotonic() > deadline:
            raise GuestAgentError(f"{what} did not finish within {timeout:g} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
