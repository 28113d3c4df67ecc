"""Backing up a shut-off VM vmkeep did not create: a qcow2 disk, a raw disk, a cdrom, UEFI
variables. No guest boots: the images are read with qemu-nbd."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TEST_PREFIX, repository_env, run_vmkeep, virsh

pytestmark = pytest.mark.libvirt

NAME = f"{TEST_PREFIX} offline 'uefi'"
MiB = 1 << 20


@pytest.fixture(scope="module")
def env(cli_env: dict[str, str], workdir: Path) -> dict[str, str]:
    return repository_env(cli_env, workdir, "offline")


@pytest.fixture(scope="module")
def domain(workdir: Path) -> Iterator[dict[str, Path]]:
    files = {
        "vda": workdir / "offline-vda.qcow2",
        "vdb": workdir / "offline-vdb.raw",
        "nvram": workdir / "offline-VARS.fd",
    }
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(files["vda"]), "32M"], check=True
    )
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x61 1M 2M", str(files["vda"])],
        check=True,
        capture_output=True,
    )
    with files["vdb"].open("wb") as handle:
        handle.truncate(16 * MiB)
        handle.seek(5 * MiB)
        handle.write(b"raw disk data" * 1000)
    files["nvram"].write_bytes(b"\x00" * 65536 + b"UEFI variables" * 100 + b"\x00" * 4096)
    xml = f"""<domain type='qemu'><name>{NAME}</name><memory unit='MiB'>64</memory>
      <os><type arch='x86_64' machine='q35'>hvm</type>
        <loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader>
        <nvram>{files["nvram"]}</nvram></os>
      <features><acpi/></features>
      <devices>
        <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
          <source file='{files["vda"]}'/><target dev='vda' bus='virtio'/></disk>
        <disk type='file' device='disk'><driver name='qemu' type='raw'/>
          <source file='{files["vdb"]}'/><target dev='vdb' bus='virtio'/></disk>
        <disk type='file' device='cdrom'><driver name='qemu' type='raw'/>
          <target dev='sda' bus='sata'/><readonly/></disk>
      </devices></domain>"""
    definition = workdir / "offline.xml"
    definition.write_text(xml)
    virsh("define", str(definition))
    yield files
    virsh("undefine", NAME, "--nvram", check=False)


def test_shut_off_vm_with_raw_disk_and_uefi_variables(
    env: dict[str, str], domain: dict[str, Path], workdir: Path
) -> None:
    (result,) = json.loads(run_vmkeep(env, "backup", NAME, "--json").stdout)
    assert result["kind"] == "full"
    assert result["quiesced"] is False
    disks = {d["name"]: d for d in result["disks"]}
    assert set(disks) == {"vda", "vdb", "nvram"}  # the cdrom is media, not data
    assert disks["vda"]["read_bytes"] == 2 * MiB
    assert disks["nvram"]["mode"] == "file"
    assert any("vdb: raw disk" in w for w in result["warnings"])
    # libvirt cannot make checkpoints for a shut-off VM: the next backup is full again, said so.
    (again,) = json.loads(run_vmkeep(env, "backup", NAME, "--json").stdout)
    assert again["kind"] == "full"
    assert "checkpoint" in again["reason"]
    assert sum(d["new_bytes"] for d in again["disks"]) == 0  # deduplicated

    out = workdir / "offline-restore"
    copy = f"{TEST_PREFIX}-offline-copy"
    try:
        run_vmkeep(
            env, "restore", again["backup_id"], "--to", str(out), "--format", "raw", "--as", copy
        )
        for target in ("vda", "vdb"):
            done = subprocess.run(
                ["qemu-img", "compare", str(domain[target]), str(out / f"{target}.raw")],
                capture_output=True,
                text=True,
            )
            assert done.returncode == 0, done.stdout
        assert (out / domain["nvram"].name).read_bytes() == domain["nvram"].read_bytes()
        definition = virsh("dumpxml", copy, "--inactive").stdout
        assert f"<nvram>{out / domain['nvram'].name}</nvram>" in definition
        assert str(out / "vda.raw") in definition
        assert "<target dev='sda' bus='sata'/>" in definition  # the cdrom drive stays
    finally:
        virsh("undefine", copy, "--nvram", check=False)
