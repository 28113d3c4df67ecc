"""End to end through the real CLI: a lab VM boots under QEMU, its agent answers, tests write
into its disks, and `vm list` / `vm show` agree with what virsh reports. Runs in file order:
the last test adds a checkpoint and an external snapshot to the shared lab VM."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TEST_PREFIX, run_vmkeep, virsh

pytestmark = [pytest.mark.slow, pytest.mark.libvirt]

LAB_NAME = f"{TEST_PREFIX} lab 'ü'"
HAND_MADE = f"{TEST_PREFIX} defined by hand"


@pytest.fixture(scope="module")
def fill_dir(workdir: Path) -> Path:
    content = workdir / "fill"
    (content / "docs").mkdir(parents=True)
    (content / "hello.txt").write_text("hello from the host\n")
    (content / "docs" / "big.bin").write_bytes(bytes(range(256)) * 4096)
    return content


@pytest.fixture(scope="module")
def lab_vm(cli_env: dict[str, str], fill_dir: Path) -> Iterator[dict[str, Any]]:
    created = run_vmkeep(
        cli_env,
        "lab", "create", LAB_NAME,
        "--disks", "2", "--disk-size", "256M", "--fill", str(fill_dir), "--memory", "192M",
        "--json",
    )  # fmt: skip
    result = json.loads(created.stdout)
    yield result["vm"]
    run_vmkeep(cli_env, "lab", "destroy", LAB_NAME, check=False)


@pytest.fixture(scope="module")
def hand_made(workdir: Path) -> Iterator[str]:
    disk = workdir / "hand made.raw"
    subprocess.run(["qemu-img", "create", "-f", "raw", str(disk), "16M"], check=True)
    xml = workdir / "hand.xml"
    xml.write_text(
        f"""<domain type='qemu'><name>{HAND_MADE}</name><memory unit='MiB'>64</memory>
        <os><type arch='x86_64'>hvm</type></os><devices>
        <disk type='file' device='disk'><driver name='qemu' type='raw'/>
        <source file='{disk}'/><target dev='vda' bus='virtio'/></disk></devices></domain>"""
    )
    virsh("define", str(xml))
    yield HAND_MADE
    virsh("undefine", HAND_MADE, check=False)


def _dominfo(name: str) -> dict[str, str]:
    out = virsh("dominfo", name).stdout
    return {
        k.strip(): v.strip() for k, v in (ln.split(":", 1) for ln in out.splitlines() if ":" in ln)
    }


def _blk(name: str) -> list[tuple[str, str, str, str]]:
    """virsh domblklist --details rows: (type, device, target, source)."""
    rows = virsh("domblklist", name, "--details").stdout.splitlines()[2:]
    return [tuple(row.split(None, 3)) for row in rows if row.strip()]  # type: ignore[misc]


def test_lab_vm_is_running_with_agent(lab_vm: dict[str, Any]) -> None:
    assert lab_vm["name"] == LAB_NAME
    assert lab_vm["state"] == "running"
    assert lab_vm["agent"] == "responding"
    assert virsh("domstate", LAB_NAME).stdout.strip() == "running"
    ping = virsh("qemu-agent-command", LAB_NAME, '{"execute":"guest-ping"}')
    assert json.loads(ping.stdout) == {"return": {}}


def test_vm_list_json_matches_virsh(
    cli_env: dict[str, str], lab_vm: dict[str, Any], hand_made: str
) -> None:
    listed = {
        vm["name"]: vm for vm in json.loads(run_vmkeep(cli_env, "vm", "list", "--json").stdout)
    }
    assert set(listed) == set(virsh("list", "--all", "--name").stdout.splitlines()) - {""}
    assert listed[hand_made]["state"] == "shut off"
    assert listed[hand_made]["disks"][0]["virtual_size"] == 16 << 20
    for name in (LAB_NAME, hand_made):
        info = _dominfo(name)
        vm = listed[name]
        assert vm["state"] == info["State"]
        assert vm["vcpus"] == int(info["CPU(s)"])
        assert vm["max_memory"] == int(info["Max memory"].split()[0]) * 1024
        assert vm["uuid"] == info["UUID"]
        assert vm["persistent"] == (info["Persistent"] == "yes")
        assert [(d["source_type"], d["device"], d["target"], d["source"]) for d in vm["disks"]] == [
            tuple(row) for row in _blk(name)
        ]


def test_vm_show_sizes_match_domblkinfo(cli_env: dict[str, str], lab_vm: dict[str, Any]) -> None:
    vm = json.loads(run_vmkeep(cli_env, "vm", "show", LAB_NAME, "--json").stdout)
    assert [d["target"] for d in vm["disks"]] == ["vda", "vdb"]
    for disk in vm["disks"]:
        out = virsh("domblkinfo", LAB_NAME, disk["target"]).stdout
        fields = {
            k: v.strip() for k, v in (ln.split(":", 1) for ln in out.splitlines() if ":" in ln)
        }
        assert disk["virtual_size"] == int(fields["Capacity"]) == 256 << 20
        assert disk["format"] == "qcow2"
    human = run_vmkeep(cli_env, "vm", "show", LAB_NAME).stdout
    assert LAB_NAME in human and "responding" in human and "vda.qcow2" in human


def test_unknown_vm_is_a_one_line_error(cli_env: dict[str, str]) -> None:
    done = run_vmkeep(cli_env, "vm", "show", f"{TEST_PREFIX} no such vm", check=False)
    assert done.returncode == 3
    assert done.stdout == ""
    assert done.stderr.strip().count("\n") == 0
    assert "no VM named" in done.stderr


def test_filled_disk_holds_the_host_files(cli_env: dict[str, str], lab_vm: dict[str, Any]) -> None:
    done = run_vmkeep(
        cli_env, "lab", "exec", LAB_NAME, "--",
        "sh", "-c", "mount -t ext4 -o ro /dev/vda /mnt && cat /mnt/hello.txt "
        "&& md5sum /mnt/docs/big.bin; umount /mnt",
    )  # fmt: skip
    lines = done.stdout.splitlines()
    assert lines[0] == "hello from the host"
    assert lines[1].split()[0] == hashlib.md5(bytes(range(256)) * 4096).hexdigest()  # noqa: S324


def test_guest_writes_reach_the_disk_image(
    cli_env: dict[str, str], lab_vm: dict[str, Any], workdir: Path
) -> None:
    marker = "vmkeep-marker-0123456789"
    run_vmkeep(
        cli_env, "lab", "exec", LAB_NAME, "--",
        "sh", "-c", f"printf {marker} | dd of=/dev/vdb bs=4096 seek=256 conv=fsync",
    )  # fmt: skip
    # Read the bytes back from the host, through QEMU's own tools, not through the guest.
    copy = workdir / "vdb-copy.raw"
    source = next(d["source"] for d in lab_vm["disks"] if d["target"] == "vdb")
    subprocess.run(
        ["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", source, str(copy)], check=True
    )
    with copy.open("rb") as handle:
        handle.seek(256 * 4096)
        assert handle.read(len(marker)) == marker.encode()
    copy.unlink()


def test_exec_exit_code_is_passed_through(cli_env: dict[str, str], lab_vm: dict[str, Any]) -> None:
    done = run_vmkeep(
        cli_env, "lab", "exec", LAB_NAME, "--", "sh", "-c", "echo oops >&2; exit 7", check=False
    )
    assert done.returncode == 7
    assert "oops" in done.stderr


def test_lab_refuses_to_touch_foreign_vms(cli_env: dict[str, str], hand_made: str) -> None:
    for args in (("lab", "destroy", hand_made), ("lab", "exec", hand_made, "--", "true")):
        done = run_vmkeep(cli_env, *args, check=False)
        assert done.returncode == 9, done.stderr
        assert "not a lab VM" in done.stderr
    assert virsh("domstate", hand_made).stdout.strip() == "shut off"
    done = run_vmkeep(cli_env, "lab", "create", hand_made, check=False)
    assert done.returncode == 4
    assert "already exists" in done.stderr


def test_checkpoints_snapshots_and_chains_are_reported(
    cli_env: dict[str, str], lab_vm: dict[str, Any]
) -> None:
    """Runs last: it leaves the lab VM on an overlay, with a checkpoint and a snapshot."""
    virsh("checkpoint-create-as", LAB_NAME, "cp-one")
    virsh("snapshot-create-as", LAB_NAME, "snap-one", "--disk-only", "--atomic")
    vm = json.loads(run_vmkeep(cli_env, "vm", "show", LAB_NAME, "--json").stdout)
    assert [c["name"] for c in vm["checkpoints"]] == virsh(
        "checkpoint-list", LAB_NAME, "--name"
    ).stdout.split()
    assert vm["checkpoints"][0]["disks"] == ["vda", "vdb"]
    assert [s["name"] for s in vm["snapshots"]] == ["snap-one"]
    snap = vm["snapshots"][0]
    assert snap["external"] and not snap["memory"] and snap["current"]
    original = {d["target"]: d["source"] for d in lab_vm["disks"]}
    for disk in vm["disks"]:
        assert disk["source"] != original[disk["target"]]  # now on the overlay
        assert [b["source"] for b in disk["backing_chain"]] == [original[disk["target"]]]


def test_destroy_removes_domain_metadata_and_files(
    cli_env: dict[str, str], lab_vm: dict[str, Any]
) -> None:
    """After the previous test the VM has a checkpoint, a snapshot and overlay files."""
    lab_dir = Path(lab_vm["lab_dir"])
    assert any(p.name.endswith("snap-one") for p in lab_dir.iterdir())
    run_vmkeep(cli_env, "lab", "destroy", LAB_NAME)
    assert LAB_NAME not in virsh("list", "--all", "--name").stdout.splitlines()
    assert not lab_dir.exists()
    again = run_vmkeep(cli_env, "lab", "destroy", LAB_NAME, check=False)
    assert again.returncode == 3


def test_failed_create_leaves_nothing_behind(cli_env: dict[str, str], lab_root: Path) -> None:
    """The agent cannot answer within 0.5 s of power-on: create must undo everything."""
    name = f"{TEST_PREFIX}-too-impatient"
    done = run_vmkeep(
        cli_env, "lab", "create", name, "--disk-size", "32M", "--boot-timeout", "0.5", check=False
    )
    assert done.returncode == 7, done.stderr
    assert "did not answer" in done.stderr
    assert name not in virsh("list", "--all", "--name").stdout.splitlines()
    assert not (lab_root / name).exists()
