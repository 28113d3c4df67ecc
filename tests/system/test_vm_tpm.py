"""A VM with an emulated TPM (swtpm): its TPM state is backed up with its disks, and a VM
restored as a copy gets that state (not a new, empty TPM), so it starts with it."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TEST_PREFIX, repository_env, run_vmkeep, virsh

pytestmark = [pytest.mark.slow, pytest.mark.libvirt]

VM = f"{TEST_PREFIX}-tpm"
COPY = f"{TEST_PREFIX}-tpm-copy"
SWTPM = Path("/var/lib/libvirt/swtpm")


@pytest.fixture(scope="module")
def env(cli_env: dict[str, str], workdir: Path) -> dict[str, str]:
    return repository_env(cli_env, workdir, "tpm")


@pytest.fixture(scope="module")
def vm(env: dict[str, str]) -> Iterator[dict[str, Any]]:
    created = run_vmkeep(
        env, "lab", "create", VM, "--disks", "1", "--disk-size", "16M", "--tpm", "--json"
    )
    yield json.loads(created.stdout)["vm"]
    run_vmkeep(env, "lab", "destroy", VM, check=False)


def test_tpm_state_is_backed_up_and_restored_into_the_copy(
    env: dict[str, str], vm: dict[str, Any], workdir: Path
) -> None:
    state_dir = SWTPM / vm["uuid"] / "tpm2"
    assert vm["tpm_state"] == str(state_dir)
    state = (state_dir / "tpm2-00.permall").read_bytes()  # made by swtpm_setup at first start
    assert len(state) > 1000
    (manifest,) = json.loads(run_vmkeep(env, "backup", VM, "--json").stdout)
    (record,) = [d for d in manifest["disks"] if d["name"].startswith("tpm/")]
    assert (record["name"], record["mode"], record["size"]) == (
        "tpm/tpm2-00.permall",
        "file",
        len(state),
    )
    target = workdir / "tpm-restore"
    copy_uuid = ""
    try:
        run_vmkeep(env, "restore", manifest["backup_id"], "--to", str(target), "--as", COPY)
        assert (target / "tpm2-00.permall").read_bytes() == state
        assert (target / "tpm2-00.permall").stat().st_mode & 0o777 == 0o600  # a secret
        copy_uuid = virsh("domuuid", COPY).stdout.strip()
        assert copy_uuid != vm["uuid"]
        restored = SWTPM / copy_uuid / "tpm2" / "tpm2-00.permall"
        assert restored.read_bytes() == state  # in place before the first start
        virsh("start", COPY)  # swtpm accepts it; libvirt did not make a new TPM over it
        assert virsh("domstate", COPY).stdout.strip() == "running"
        assert restored.read_bytes()[:64] == state[:64]
    finally:
        virsh("destroy", COPY, check=False)
        virsh("undefine", COPY, check=False)
        if copy_uuid:
            shutil.rmtree(SWTPM / copy_uuid, ignore_errors=True)
