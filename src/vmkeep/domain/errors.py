"""The one exception tree of vmkeep.

Every error vmkeep raises on purpose derives from :class:`VmkeepError` and carries the process
exit code the CLI uses for it. Adapters translate foreign exceptions at the boundary
(``raise HypervisorError(...) from exc``); only the CLI turns an error into an exit code.
"""

from __future__ import annotations


class VmkeepError(Exception):
    """Base of every deliberate vmkeep failure. ``str(err)`` is a one-line message for users."""

    exit_code: int = 1


class UsageError(VmkeepError):
    """The user asked for something malformed (bad size, bad name, conflicting options)."""

    exit_code = 2


class ConfigError(VmkeepError):
    """The configuration file cannot be read or holds an invalid value."""

    exit_code = 2


class NotFoundError(VmkeepError):
    """A named thing (VM, snapshot, backup) does not exist."""

    exit_code = 3


class VmNotFoundError(NotFoundError):
    """No domain of that name is known to the hypervisor."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no VM named {name!r}")
        self.name = name


class AlreadyExistsError(VmkeepError):
    """Creating something would overwrite what is already there."""

    exit_code = 4


class HypervisorError(VmkeepError):
    """The hypervisor (libvirt, QEMU) refused or failed an operation."""

    exit_code = 5


class HypervisorConnectionError(HypervisorError):
    """The hypervisor cannot be reached at all (wrong URI, daemon not running)."""

    exit_code = 6


class GuestAgentError(HypervisorError):
    """The guest agent is missing, does not answer, or reported a failure."""

    exit_code = 7


class ToolError(VmkeepError):
    """An external tool (qemu-img, mkfs.ext4, cpio) failed or is missing."""

    exit_code = 8


class LabError(VmkeepError):
    """The lab could not build its guest or its VM."""

    exit_code = 9


class StoreError(VmkeepError):
    """An object store (local directory, S3) failed."""

    exit_code = 10


class StoreTransientError(StoreError):
    """A failure worth retrying: a timeout, a 5xx, a dropped connection."""


class ObjectNotFoundError(StoreError):
    """The named object does not exist in the store."""

    exit_code = 3


class StoreFullError(StoreError):
    """The store has no room left (ENOSPC, quota)."""

    exit_code = 11


class RepositoryError(VmkeepError):
    """The repository is missing, malformed, or refuses the operation."""

    exit_code = 12


class IntegrityError(RepositoryError):
    """An object failed authentication or its hash: it is corrupt or was tampered with."""

    exit_code = 13


class WrongPasswordError(RepositoryError):
    """No key in the repository opens with the given password."""

    exit_code = 14


class LockedError(RepositoryError):
    """Another process holds a conflicting repository lock."""

    exit_code = 15


class InsecureFileError(VmkeepError):
    """A secret file is readable by other users."""

    exit_code = 16


class HookError(VmkeepError):
    """A configured hook command failed or timed out."""

    exit_code = 17
