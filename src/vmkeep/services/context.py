"""Builds the concrete object graph for one CLI invocation (or one daemon job)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vmkeep.domain.errors import VmkeepError
from vmkeep.drivers.host_locks import FileLocks
from vmkeep.drivers.libvirt_hypervisor import LibvirtHypervisor
from vmkeep.ports import HostLocks, Hypervisor, Progress
from vmkeep.services.config import Settings

if TYPE_CHECKING:  # imported where used: only `try` and `lab` need them, and every command
    # (a backup too) would otherwise pay for importing the snapshot and lab machinery
    from vmkeep.engine.lab import LabDeps
    from vmkeep.engine.try_change import TryDeps


@dataclass
class Services:
    """Lazily opened drivers for the given settings. Use through :func:`open_services`."""

    settings: Settings
    _hypervisor: LibvirtHypervisor | None = field(default=None, init=False)

    def hypervisor(self) -> Hypervisor:
        """The libvirt connection at ``settings.uri``, opened on first use."""
        if self._hypervisor is None:
            self._hypervisor = LibvirtHypervisor(self.settings.uri)
        return self._hypervisor

    def host_locks(self) -> HostLocks:
        """The per-VM locks that backups and snapshot operations on this host share."""
        return host_locks(self.settings)

    def try_deps(self) -> TryDeps:
        """Everything ``vmkeep try`` needs."""
        from vmkeep.drivers.host_commands import SubprocessRunner
        from vmkeep.drivers.system_clock import SystemClock
        from vmkeep.engine.try_change import TryDeps

        return TryDeps(
            hypervisor=self.hypervisor(),
            locks=self.host_locks(),
            runner=SubprocessRunner(),
            clock=SystemClock(),
        )

    def lab_deps(self, progress: Progress) -> LabDeps:
        """Everything the lab use cases need."""
        from vmkeep.drivers.lab_guest import BusyboxGuestBuilder
        from vmkeep.drivers.qemu_img import QemuImgTool
        from vmkeep.drivers.system_clock import SystemClock
        from vmkeep.engine.lab import LabDeps

        return LabDeps(
            hypervisor=self.hypervisor(),
            images=QemuImgTool(),
            guest=BusyboxGuestBuilder(),
            clock=SystemClock(),
            progress=progress,
        )

    def close(self) -> None:
        """Close what was opened. Never raises: closing must not hide the real outcome."""
        if self._hypervisor is not None:
            with contextlib.suppress(VmkeepError):
                self._hypervisor.close()
            self._hypervisor = None


def host_locks(settings: Settings) -> HostLocks:
    """Per-VM locks in the state directory (see drivers/host_locks.py)."""
    return FileLocks(settings.data_dir / "locks")


@contextlib.contextmanager
def open_services(settings: Settings) -> Iterator[Services]:
    """Services for ``settings``, closed when the block ends."""
    services = Services(settings)
    try:
        yield services
    finally:
        services.close()
