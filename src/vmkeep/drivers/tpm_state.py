"""Where libvirt keeps an emulated TPM's state, and putting a restored state in place.

libvirt runs swtpm with its state in ``/var/lib/libvirt/swtpm/<domain uuid>/tpm2`` (or
``tpm1.2``), created on the first start and removed when the domain is undefined. A restored
VM gets a new UUID, so its TPM state must be written to the new UUID's directory before it
first starts; libvirt would otherwise manufacture a new, empty TPM (and everything sealed to
the old one, such as a disk encryption key, would be lost).
"""

from __future__ import annotations

import os
import pwd
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import libvirt

from vmkeep.domain.errors import HypervisorError
from vmkeep.drivers import domain_xml

SWTPM_STORAGE = Path("/var/lib/libvirt/swtpm")
SWTPM_USER = "tss"  # libvirt's default swtpm_user on Debian (qemu.conf)


def tpm_state_dir(uuid: str, version: str | None, root: Path = SWTPM_STORAGE) -> str | None:
    """The state directory of the domain's emulated TPM, None without one."""
    if version is None or not uuid:
        return None
    return str(root / uuid / ("tpm2" if version == "2.0" else "tpm1.2"))


def install_tpm_state(
    uuid: str, version: str, files: Mapping[str, str], root: Path = SWTPM_STORAGE
) -> str:
    """Copy ``files`` (name to restored file) into the new domain's state directory, owned
    like libvirt's own (the swtpm user, 0600 files in 0700 directories). Returns the directory.
    Raises HypervisorError when it cannot be written."""
    target = Path(tpm_state_dir(uuid, version, root) or "")
    try:
        owner = pwd.getpwnam(SWTPM_USER)
        uid, gid = owner.pw_uid, owner.pw_gid
    except KeyError:
        uid, gid = os.getuid(), os.getgid()
    try:
        target.mkdir(parents=True, exist_ok=True, mode=0o700)
        for directory in (target.parent, target):
            os.chown(directory, uid, gid)
            directory.chmod(0o700)
        for name, source in files.items():
            destination = target / Path(name).name
            shutil.copyfile(source, destination)
            os.chown(destination, uid, gid)
            destination.chmod(0o600)
    except OSError as exc:
        raise HypervisorError(f"cannot restore the TPM state into {target}: {exc}") from exc
    return str(target)


def install_restored_tpm(dom: Any, definition: str, files: Mapping[str, str]) -> None:
    """Put a restored VM's TPM state (``files``) in place for the just-defined ``dom``. If
    that fails the domain is undefined again (a restored VM without its TPM would start with
    a new, empty one) and HypervisorError raised. Nothing to do without files or a TPM."""
    version = domain_xml.parse_domain(definition).tpm_version
    if not files or version is None:
        return
    try:
        install_tpm_state(dom.UUIDString(), version, files)
    except HypervisorError:
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        raise
