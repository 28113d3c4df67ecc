"""A VM to be defined, described without any hypervisor's vocabulary.

Only what vmkeep itself creates is described here (lab VMs, later restored VMs): a direct
kernel boot, virtio disks and a guest-agent channel.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DiskSpec:
    """One virtio disk; ``target`` is the guest device name (``vda``)."""

    target: str
    path: str
    format: str = "qcow2"


@dataclass(frozen=True, slots=True)
class VmSpec:
    """A persistent TCG domain booting ``kernel``/``initrd`` directly.

    ``lab_dir`` is recorded in the domain's metadata so vmkeep can tell its lab VMs from
    production ones and knows which files belong to them.
    """

    name: str
    memory: int
    vcpus: int
    kernel: str
    initrd: str
    cmdline: str
    disks: tuple[DiskSpec, ...]
    console_log: str | None = None
    lab_dir: str | None = None
    tpm: bool = False
    """An emulated TPM 2.0 (swtpm), whose state libvirt keeps per domain."""
    heartbeat_socket: str | None = None
    """A Unix socket QEMU listens on for the guest's second serial port (ttyS1), where a lab
    guest booted with ``vmkeep.heartbeat`` writes its uptime every 10 ms."""


@dataclass(frozen=True, slots=True)
class GuestBoot:
    """The files a lab guest boots from."""

    kernel: str
    initrd: str
    cmdline: str


@dataclass(frozen=True, slots=True)
class ExecResult:
    """The outcome of a command run inside a guest."""

    exit_code: int
    stdout: bytes
    stderr: bytes
