"""Shared fixtures. Anything that talks to libvirt uses the real daemon at qemu:///system;
every domain a test makes is named with TEST_PREFIX and removed at the end of the session,
even when tests fail."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmkeep.domain.vmspec import GuestBoot

SYSTEM_URI = "qemu:///system"
TEST_PREFIX = "vmkeep-test"
# QEMU runs as libvirt-qemu: test files must live where that user can reach them, which
# pytest's private tmp directories are not.
TEST_ROOT = Path("/var/lib/vmkeep/tests")
VMKEEP = [sys.executable, "-m", "vmkeep.cli"]


def _virsh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["virsh", "-c", SYSTEM_URI, *args], capture_output=True, text=True, check=check
    )


def _remove_test_domains() -> None:
    names = _virsh("list", "--all", "--name").stdout.splitlines()
    for name in names:
        if name.startswith(TEST_PREFIX):
            _virsh("destroy", name, check=False)
            _virsh("undefine", name, "--snapshots-metadata", "--checkpoints-metadata", check=False)


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    """A per-session directory QEMU can read, removed afterwards with every test domain."""
    TEST_ROOT.mkdir(parents=True, exist_ok=True)
    for parent in (TEST_ROOT.parent, TEST_ROOT):
        parent.chmod(0o755)
    path = TEST_ROOT / f"session-{uuid.uuid4().hex[:8]}"
    path.mkdir(mode=0o755)
    path.chmod(0o755)
    try:
        yield path
    finally:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            _remove_test_domains()
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def lab_root(workdir: Path) -> Path:
    path = workdir / "lab"
    path.mkdir(mode=0o755)
    return path


@pytest.fixture(scope="session")
def guest_boot(lab_root: Path) -> GuestBoot:
    """The real lab guest, built once per session."""
    from vmkeep.drivers.lab_guest import BusyboxGuestBuilder

    return BusyboxGuestBuilder().ensure_guest(lab_root / "guest")


@pytest.fixture(scope="session")
def cli_env(workdir: Path, lab_root: Path) -> dict[str, str]:
    """Environment for running the vmkeep CLI against the session's lab directory."""
    config = workdir / "config.toml"
    state = workdir / "state"
    state.mkdir(mode=0o755, exist_ok=True)
    config.write_text(
        f'connect = "{SYSTEM_URI}"\nstate_dir = "{state}"\n[lab]\ndir = "{lab_root}"\n'
    )
    env = dict(os.environ)
    env.pop("VMKEEP_CONNECT", None)
    env["VMKEEP_CONFIG"] = str(config)
    env["COLUMNS"] = "200"
    return env


def repository_env(cli_env: dict[str, str], workdir: Path, name: str) -> dict[str, str]:
    """``cli_env`` plus a fresh encrypted repository ``workdir/<name>-repo`` (password file
    0600) and its own dedup cache; for the tests that back VMs up."""
    password = workdir / f"{name}-password"
    password.write_text(f"{name} tests\n")
    password.chmod(0o600)
    environment = {
        **cli_env,
        "VMKEEP_PASSWORD_FILE": str(password),
        "VMKEEP_REPO": str(workdir / f"{name}-repo"),
        "XDG_CACHE_HOME": str(workdir / f"{name}-cache"),
    }
    run_vmkeep(environment, "repo", "init")
    return environment


def run_vmkeep(
    env: dict[str, str], *args: str, check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess; ``check`` asserts exit code 0 and shows stderr."""
    done = subprocess.run(
        [*VMKEEP, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )
    if check:
        assert done.returncode == 0, f"vmkeep {args} exited {done.returncode}:\n{done.stderr}"
    return done


def virsh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``virsh -c qemu:///system ARGS``, the independent witness tests compare against."""
    return _virsh(*args, check=check)
