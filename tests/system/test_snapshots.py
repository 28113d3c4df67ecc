"""Snapshots of a running lab VM through the real CLI, libvirt and QEMU: create (quiesced, with
memory, as a group), list, revert (RAM and a running process come back; disks come back byte
for byte; later snapshots stay), delete (merged away while the VM runs, the guest's bytes
unchanged, no file left behind), and the faults of the issue. Tests run in file order and
share one lab VM; virsh and qemu-img are the independent witnesses."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TEST_PREFIX, VMKEEP, run_vmkeep, virsh

pytestmark = [pytest.mark.slow, pytest.mark.libvirt]

VM = f'{TEST_PREFIX} snap "q" ü'
PEER = f"{TEST_PREFIX}-snap-peer"
SNAP = "pre $(touch pwned);|&<x> \"q\" 'ü' *"  # shell metacharacters, no '/'
MEM = "with memory"
MiB = 1 << 20

# What earlier tests saw, for later ones (the module runs in file order).
seen: dict[str, Any] = {}


@pytest.fixture(scope="module")
def env(cli_env: dict[str, str]) -> dict[str, str]:
    return cli_env


@pytest.fixture(scope="module")
def vm(env: dict[str, str]) -> Iterator[dict[str, Any]]:
    created = run_vmkeep(
        env, "lab", "create", VM, "--disks", "2", "--disk-size", "32M", "--heartbeat", "--json"
    )
    yield json.loads(created.stdout)["vm"]
    run_vmkeep(env, "lab", "destroy", VM, check=False)


def guest(env: dict[str, str], script: str, name: str = VM) -> str:
    return run_vmkeep(env, "lab", "exec", name, "--", "sh", "-c", script).stdout


def md5s(env: dict[str, str], name: str = VM, disks: str = "vdb") -> dict[str, str]:
    """What the guest reads from its disks now (the tests write to vdb; hashing under TCG
    takes about a second per 32 MiB, so vda only where it matters)."""
    out = guest(env, " ".join(["md5sum", *(f"/dev/{d}" for d in disks.split())]), name)
    return {line.split()[1].rsplit("/", 1)[1]: line.split()[0] for line in out.splitlines()}


def counter(env: dict[str, str]) -> int:
    return int(guest(env, "cat /tmp/counter").strip())


def snapshot(env: dict[str, str], *args: str) -> dict[str, Any]:
    return json.loads(run_vmkeep(env, "snapshot", *args, "--json").stdout)  # type: ignore[no-any-return]


def listing(env: dict[str, str], name: str = VM) -> dict[str, Any]:
    (found,) = snapshot(env, "list", name)
    return found  # type: ignore[no-any-return]


def sources(name: str = VM) -> dict[str, str]:
    """Disk target to the image the VM writes to, as virsh reports it."""
    rows = virsh("domblklist", name).stdout.splitlines()[2:]
    return {row.split(None, 1)[0]: row.split(None, 1)[1].strip() for row in rows if row.strip()}


def chain(image: str) -> list[str]:
    out = subprocess.run(
        ["qemu-img", "info", "--output=json", "--backing-chain", "-U", image],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [layer["filename"] for layer in json.loads(out)]


def snapshot_names(name: str = VM) -> set[str]:
    return set(virsh("snapshot-list", name, "--name").stdout.splitlines()) - {""}


def snapshot_files(name: str = VM) -> tuple[set[str], set[str]]:
    """The frozen images and memory files of every snapshot libvirt knows."""
    frozen, memory = set(), set()
    for snap in snapshot_names(name):
        root = ET.fromstring(virsh("snapshot-dumpxml", name, snap).stdout)  # noqa: S314
        frozen |= {s.get("file", "") for s in root.iterfind("domain/devices/disk/source")}
        element = root.find("memory")
        if element is not None and element.get("file"):
            memory.add(element.get("file", ""))
    return frozen, memory


def assert_no_strays(vm_dir: Path, name: str = VM) -> None:
    """Every image and memory file in the VM's directory is read by the VM or a snapshot."""
    frozen, memory = snapshot_files(name)
    used = {image for source in sources(name).values() for image in chain(source)}
    used |= {image for image in frozen for image in chain(image)}
    present = {str(p) for p in vm_dir.iterdir() if p.suffix in (".qcow2", ".mem")}
    assert present == used | memory


def host_md5(image: str, scratch: Path) -> str:
    """The bytes an image chain holds, read on the host (not through the guest)."""
    raw = scratch / "witness.raw"
    subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", image, str(raw)], check=True)
    digest = hashlib.md5(raw.read_bytes()).hexdigest()  # noqa: S324 - a checksum, not security
    raw.unlink()
    return digest


def resumed_at_snapshot(value: int) -> bool:
    """Whether the guest's counter carries on from the memory snapshot's moment: at least
    where it was just before, well below where it had got to before the revert (reading it
    takes a moment, during which it counts on)."""
    return bool(seen["counter_before"] <= value < seen["went_to"] - 20)


def wait_for_agent(name: str = VM, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    ping = '{"execute":"guest-ping"}'
    while virsh("qemu-agent-command", name, ping, "--timeout", "2", check=False).returncode:
        assert time.monotonic() < deadline, f"the guest agent of {name} did not come back"
        time.sleep(0.5)


def test_create_quiesced_disk_snapshot_with_an_awkward_name(
    env: dict[str, str], vm: dict[str, Any], workdir: Path
) -> None:
    guest(env, "dd if=/dev/urandom of=/dev/vdb bs=1M count=4 seek=8 conv=fsync 2>/dev/null")
    seen["at_snap"] = md5s(env, disks="vda vdb")
    before = sources()
    result = snapshot(env, "create", VM, "--name", SNAP, "--expire", "72h")
    (created,) = result["snapshots"]
    assert (created["name"], created["kind"], created["quiesced"]) == (SNAP, "disk", True)
    assert created["warnings"] == [] and result["group"] is None
    expires = time.mktime(time.strptime(created["expires"], "%Y-%m-%dT%H:%M:%SZ"))
    assert abs(expires - time.mktime(time.gmtime()) - 72 * 3600) < 120
    vm_dir = Path(vm["lab_dir"])
    # libvirt agrees: the snapshot exists, carries vmkeep's facts, the VM writes to overlays
    # next to its disks, on top of the images it used before.
    assert SNAP in snapshot_names()
    assert '"quiesced": true' in virsh("snapshot-dumpxml", VM, SNAP).stdout.replace("&quot;", '"')
    for target, disk in {d["target"]: d for d in created["disks"]}.items():
        assert disk["frozen"] == before[target]
        assert sources()[target] == disk["overlay"]
        assert Path(disk["overlay"]).parent == vm_dir
    assert not (vm_dir / "pwned").exists() and not Path("pwned").exists()
    # The frozen image holds exactly what the guest read at the snapshot moment.
    frozen_vdb = next(d["frozen"] for d in created["disks"] if d["target"] == "vdb")
    assert host_md5(frozen_vdb, workdir) == seen["at_snap"]["vdb"]
    (entry,) = listing(env)["snapshots"]
    assert entry["quiesced"] is True and entry["expires"] == created["expires"]
    assert all(
        isinstance(d["overlay_bytes"], int) and d["overlay_bytes"] > 0 for d in entry["disks"]
    )
    assert_no_strays(vm_dir)


def test_the_heartbeat_ticks_on_its_socket(vm: dict[str, Any]) -> None:
    """``lab create --heartbeat``: the guest's uptime, about every 10 ms, on a Unix socket
    (what bench/snapshot_bench.py measures pauses with)."""
    path = Path(vm["lab_dir"]) / "heartbeat.sock"
    received = b""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(str(path))
        conn.settimeout(2)
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            received += conn.recv(4096)
    ticks = [float(line) for line in received.decode().split()[1:-1]]
    assert len(ticks) >= 20  # TCG is slow, but not that slow
    assert ticks == sorted(ticks) and ticks[-1] - ticks[0] > 0.2


def test_reverting_a_memory_snapshot_resumes_a_running_counter(
    env: dict[str, str], vm: dict[str, Any]
) -> None:
    guest(
        env,
        "(i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.1; done)"
        " >/dev/null 2>&1 &",
    )
    guest(env, "dd if=/dev/urandom of=/dev/vdb bs=1M count=2 seek=16 conv=fsync 2>/dev/null")
    seen["at_mem"] = md5s(env)
    seen["counter_before"] = counter(env)
    (created,) = snapshot(env, "create", VM, "--name", MEM, "--memory")["snapshots"]
    assert created["kind"] == "memory" and Path(created["memory_file"]).is_file()
    seen["counter_after"] = counter(env)
    deadline = time.monotonic() + 60
    while counter(env) < seen["counter_after"] + 50:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    guest(env, "dd if=/dev/urandom of=/dev/vdb bs=1M count=2 seek=20 conv=fsync 2>/dev/null")
    assert md5s(env)["vdb"] != seen["at_mem"]["vdb"]
    seen["went_to"] = counter(env)
    result = snapshot(env, "revert", VM, MEM)
    print(f"\nmemory revert: {result['seconds']:.2f} s, VM down {result['downtime']:.2f} s")
    assert (result["kind"], result["state"]) == ("memory", "running")
    assert virsh("domstate", VM).stdout.strip() == "running"
    resumed = counter(env)
    # The process came back in the middle of its count: not from zero, not where it was.
    assert resumed_at_snapshot(resumed)
    time.sleep(1)
    assert counter(env) > resumed
    assert md5s(env) == seen["at_mem"]
    assert result["seconds"] < 10
    assert_no_strays(Path(vm["lab_dir"]))


def test_a_failed_revert_leaves_the_vm_running_on_its_disks(
    env: dict[str, str], vm: dict[str, Any], workdir: Path
) -> None:
    vm_dir = Path(vm["lab_dir"])
    (broken,) = snapshot(env, "create", VM, "--name", "broken", "--memory")["snapshots"]
    with Path(broken["memory_file"]).open("r+b") as state:
        state.truncate(64 << 10)  # the header survives; QEMU fails half-way through the RAM
    before = sources()
    data = host_md5(before["vdb"], workdir)
    files = sorted(p.name for p in vm_dir.iterdir())
    done = run_vmkeep(env, "snapshot", "revert", VM, "broken", check=False)
    assert done.returncode == 5, done.stderr
    assert "restoring the memory" in done.stderr
    assert virsh("domstate", VM).stdout.strip() == "running"  # booted again on its disks
    assert sources() == before
    assert host_md5(before["vdb"], workdir) == data
    assert sorted(p.name for p in vm_dir.iterdir()) == files  # the new overlays are gone
    snapshot(env, "delete", VM, "broken")
    assert not Path(broken["memory_file"]).exists()
    assert_no_strays(vm_dir)


def test_disk_layout_change_is_refused_and_disk_revert_is_bit_exact(
    env: dict[str, str], vm: dict[str, Any], workdir: Path
) -> None:
    virsh("destroy", VM)
    extra = Path(vm["lab_dir"]) / "extra.raw"
    extra.write_bytes(bytes(MiB))
    try:
        virsh("attach-disk", VM, str(extra), "vdc", "--config")
        refused = run_vmkeep(env, "snapshot", "revert", VM, SNAP, check=False)
        assert refused.returncode == 2, refused.stderr
        assert "vdc was added after the snapshot" in refused.stderr
    finally:
        virsh("detach-disk", VM, "vdc", "--config")
        extra.unlink()
    before = sources()
    assert (
        run_vmkeep(env, "snapshot", "revert", VM, "no such snapshot", check=False).returncode == 3
    )
    assert sources() == before  # the refusals changed nothing
    result = snapshot(env, "revert", VM, SNAP, "--running")
    print(f"\ndisk revert of a shut-off VM, booting it: {result['seconds']:.2f} s")
    wait_for_agent()
    assert md5s(env, disks="vda vdb") == seen["at_snap"]
    assert host_md5(sources()["vdb"], workdir) == seen["at_snap"]["vdb"]
    # The later snapshot is still there, on its own branch of the tree.
    tree = {s["name"]: s for s in listing(env)["snapshots"]}
    assert set(tree) == {SNAP, MEM}
    assert tree[MEM]["parent"] == SNAP and tree[SNAP]["current"]
    assert_no_strays(Path(vm["lab_dir"]))
    # ...and reverting to it brings its RAM and disks back again.
    snapshot(env, "revert", VM, MEM)
    assert resumed_at_snapshot(counter(env))
    assert md5s(env) == seen["at_mem"]
    assert_no_strays(Path(vm["lab_dir"]))


def test_delete_merges_while_running_and_the_guest_sees_the_same_bytes(
    env: dict[str, str], vm: dict[str, Any]
) -> None:
    vm_dir = Path(vm["lab_dir"])
    snapshot(env, "create", VM, "--name", "third")
    guest(env, "dd if=/dev/urandom of=/dev/vdb bs=1M count=1 seek=26 conv=fsync 2>/dev/null")
    now = md5s(env)
    depth = len(chain(sources()["vdb"]))
    # The oldest snapshot: its overlay is merged into the disk below (an inner commit).
    deleted = snapshot(env, "delete", VM, SNAP)
    assert len(deleted["merged"]) == 2
    assert virsh("domstate", VM).stdout.strip() == "running"
    assert md5s(env) == now
    assert len(chain(sources()["vdb"])) == depth - 1
    assert snapshot_names() == {MEM, "third"}
    assert listing(env)["snapshots"][0]["parent"] is None  # MEM moved up to the root
    assert_no_strays(vm_dir)
    # The newest: an active commit and a pivot.
    snapshot(env, "delete", VM, "third")
    assert md5s(env) == now
    assert len(chain(sources()["vdb"])) == depth - 2
    assert_no_strays(vm_dir)
    # The memory snapshot's content survived both merges.
    snapshot(env, "revert", VM, MEM)
    assert resumed_at_snapshot(counter(env))
    assert md5s(env) == seen["at_mem"]
    memory_file = listing(env)["snapshots"][0]["memory_file"]
    snapshot(env, "delete", VM, MEM)
    assert md5s(env) == seen["at_mem"]
    assert not Path(memory_file).exists()
    assert snapshot_names() == set()
    assert sources() == {"vda": f"{vm_dir}/vda.qcow2", "vdb": f"{vm_dir}/vdb.qcow2"}
    assert sorted(p.name for p in vm_dir.iterdir() if p.suffix in (".qcow2", ".mem")) == [
        "vda.qcow2",
        "vdb.qcow2",
    ]


def test_a_hanging_agent_gives_a_crash_consistent_snapshot(
    env: dict[str, str], vm: dict[str, Any]
) -> None:
    guest(
        env,
        "(sleep 1; kill -STOP $(pidof qemu-ga); sleep 10; kill -CONT $(pidof qemu-ga))"
        " >/dev/null 2>&1 &",
    )
    time.sleep(2)
    started = time.monotonic()
    result = snapshot(env, "create", VM, "--name", "hung", "--quiesce", "--freeze-timeout", "2")
    assert time.monotonic() - started < 15
    (created,) = result["snapshots"]
    assert created["quiesced"] is False
    assert "could not quiesce" in created["warnings"][0]
    assert "hung" in snapshot_names()
    wait_for_agent()
    assert guest(env, "echo alive").strip() == "alive"  # the guest is not left frozen
    snapshot(env, "delete", VM, "hung")
    assert_no_strays(Path(vm["lab_dir"]))


@pytest.fixture
def tiny_dir(workdir: Path) -> Iterator[Path]:
    mount = workdir / "tiny-snapshots"
    mount.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs", str(mount)])
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_not_enough_space_is_refused_before_anything_starts(
    env: dict[str, str], vm: dict[str, Any], tiny_dir: Path
) -> None:
    before = sources()
    for extra in ((), ("--memory",)):
        done = run_vmkeep(
            env, "snapshot", "create", VM, "--dir", str(tiny_dir), *extra, check=False
        )
        assert done.returncode == 11, done.stderr
        assert f"{tiny_dir} needs at least" in done.stderr
        assert "16.0 MiB free" in done.stderr
    assert "memory state 272.0 MiB" in done.stderr  # 256 MiB of RAM, conservatively
    assert list(tiny_dir.iterdir()) == []
    assert snapshot_names() == set() and sources() == before


@pytest.fixture(scope="module")
def peer(env: dict[str, str]) -> Iterator[dict[str, Any]]:
    created = run_vmkeep(
        env, "lab", "create", PEER, "--disks", "2", "--disk-size", "32M", "--memory", "160M",
        "--json",
    )  # fmt: skip
    yield json.loads(created.stdout)["vm"]
    run_vmkeep(env, "lab", "destroy", PEER, check=False)


def test_a_group_is_one_consistency_point(
    env: dict[str, str], vm: dict[str, Any], peer: dict[str, Any]
) -> None:
    result = snapshot(env, "create", VM, PEER, "--name", "group")
    assert result["group"] is not None and result["frozen_seconds"] is not None
    assert [s["vm"] for s in result["snapshots"]] == [VM, PEER]
    for created in result["snapshots"]:
        assert (created["group"], created["members"]) == (result["group"], [VM, PEER])
        assert created["quiesced"] is True
    for name in (VM, PEER):
        entry = listing(env, name)["snapshots"][0]
        assert entry["group"] == result["group"]
        snapshot(env, "delete", name, "group")
        assert snapshot_names(name) == set()


def test_reverting_a_group_snapshot_reverts_every_member(
    env: dict[str, str], vm: dict[str, Any], peer: dict[str, Any]
) -> None:
    before = {name: md5s(env, name) for name in (VM, PEER)}
    snapshot(env, "create", VM, PEER, "--name", "group-mem", "--memory")
    for name in (VM, PEER):
        guest(env, "dd if=/dev/urandom of=/dev/vdb bs=1M count=1 seek=3 conv=fsync", name)
        assert md5s(env, name) != before[name]
    result = snapshot(env, "revert", PEER, "group-mem")
    assert result["group"] is not None and result["vm"] == PEER
    assert [m["vm"] for m in result["members"]] == [VM, PEER]
    for name in (VM, PEER):
        assert virsh("domstate", name).stdout.strip() == "running"
        assert md5s(env, name) == before[name]
    # --member-only reverts just the one VM.
    guest(env, "dd if=/dev/urandom of=/dev/vdb bs=1M count=1 seek=3 conv=fsync", PEER)
    changed = md5s(env, PEER)
    only = snapshot(env, "revert", VM, "group-mem", "--member-only")
    assert only["group"] is None and [m["vm"] for m in only["members"]] == [VM]
    assert md5s(env, PEER) == changed
    for name in (VM, PEER):
        snapshot(env, "delete", name, "group-mem")
        assert snapshot_names(name) == set()


def test_a_member_failing_mid_group_leaves_every_vm_as_it_was(
    env: dict[str, str], vm: dict[str, Any], peer: dict[str, Any]
) -> None:
    peer_dir = Path(peer["lab_dir"])
    vm_dir = Path(vm["lab_dir"])
    files = sorted(p.name for p in vm_dir.iterdir())
    data = md5s(env)
    before = (sources(VM), sources(PEER))
    # The peer's overlays cannot be written: libvirt fails after the first VM's snapshot.
    subprocess.run(["mount", "--bind", str(peer_dir), str(peer_dir)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(peer_dir)], check=True)
        done = run_vmkeep(env, "snapshot", "create", VM, PEER, "--name", "doomed", check=False)
    finally:
        subprocess.run(["umount", str(peer_dir)], check=False)
    assert done.returncode == 5, done.stderr
    assert snapshot_names(VM) == set() and snapshot_names(PEER) == set()
    assert (sources(VM), sources(PEER)) == before
    assert sorted(p.name for p in vm_dir.iterdir()) == files  # the rolled-back overlays are gone
    assert virsh("domstate", VM).stdout.strip() == "running"
    assert md5s(env) == data
    assert guest(env, "echo alive", PEER).strip() == "alive"


def test_usage_reports_and_prune_deletes_by_policy(env: dict[str, str], vm: dict[str, Any]) -> None:
    vm_dir = Path(vm["lab_dir"])
    snapshot(env, "create", VM, "--name", "short-lived", "--expire", "1s")
    snapshot(env, "create", VM, "--name", "middle")
    snapshot(env, "create", VM, "--name", "newest")
    guest(env, "dd if=/dev/urandom of=/dev/vdb bs=1M count=8 seek=4 conv=fsync 2>/dev/null")
    data = md5s(env)
    time.sleep(2)  # short-lived expires; every snapshot is older than 1 s
    usage = json.loads(
        run_vmkeep(env, "snapshot", "usage", "--max-age", "1s", "--max-chain", "2", "--json").stdout
    )
    (ours,) = [v for v in usage["vms"] if v["vm"] == VM]
    assert ours["snapshots"] == 3 and ours["longest_chain"] == 3
    assert ours["active_bytes"] >= 8 * MiB  # the guest's writes since "newest"
    assert ours["growth_bytes_per_hour"] > 0
    (fs,) = [f for f in usage["filesystems"] if VM in f["vms"]]
    assert fs["free_bytes"] > 0 and fs["overlay_bytes"] >= ours["active_bytes"]
    assert fs["fills_in_hours"] is not None and fs["fills_in_hours"] > 0
    warnings = "\n".join(usage["warnings"])
    for name in ("short-lived", "middle", "newest"):
        assert f"snapshot {name!r} is" in warnings
    assert f"{VM}: a disk has 3 images below its active one (policy: 2)" in warnings
    # A dry run names what the policy selects and changes nothing.
    planned = snapshot(env, "prune", VM, "--expired", "--dry-run")
    assert [(p["snapshot"], p["deleted"]) for p in planned["snapshots"]] == [("short-lived", False)]
    assert snapshot_names() == {"short-lived", "middle", "newest"}
    pruned = snapshot(env, "prune", VM, "--expired")
    assert [(p["snapshot"], p["deleted"]) for p in pruned["snapshots"]] == [("short-lived", True)]
    assert snapshot_names() == {"middle", "newest"}
    pruned = snapshot(env, "prune", VM, "--keep-last", "1")
    assert [p["snapshot"] for p in pruned["snapshots"]] == ["middle"]
    assert snapshot_names() == {"newest"}
    assert md5s(env) == data  # merging changed nothing the guest sees
    assert_no_strays(vm_dir)
    snapshot(env, "delete", VM, "newest")
    assert snapshot(env, "prune", VM, "--keep-last", "0")["snapshots"] == []


def test_try_keeps_a_good_change_and_reverts_a_bad_one(
    env: dict[str, str], vm: dict[str, Any]
) -> None:
    vm_dir = Path(vm["lab_dir"])
    change = "dd if=/dev/urandom of=/dev/vdb bs=1M count=1 seek=30 conv=fsync 2>/dev/null"
    before = md5s(env)
    kept = json.loads(
        run_vmkeep(
            env,
            "try",
            VM,
            "--in-guest",
            "--check-in-guest",
            "--check",
            "test -b /dev/vdb",
            "--json",
            "--",
            "sh",
            "-c",
            change,
        ).stdout
    )
    assert kept["outcome"] == "kept" and kept["change"]["ok"] and kept["check"]["ok"]
    after_good = md5s(env)
    assert after_good != before
    assert snapshot_names() == set() and kept["cleanup_error"] is None
    assert_no_strays(vm_dir)
    # A memory snapshot and a failing host-side check: the guest's disk and RAM go back.
    guest(env, "echo before-change > /tmp/state")
    bad = run_vmkeep(
        env,
        "try",
        VM,
        "--memory",
        "--in-guest",
        "--check",
        "false",
        "--json",
        "--",
        "sh",
        "-c",
        change + "; echo changed > /tmp/state",
        check=False,
    )
    assert bad.returncode == 1, bad.stderr
    result = json.loads(bad.stdout)
    assert result["outcome"] == "reverted" and result["check"]["exit_code"] == 1
    assert virsh("domstate", VM).stdout.strip() == "running"
    assert guest(env, "cat /tmp/state").strip() == "before-change"
    assert md5s(env) == after_good
    assert snapshot_names() == set()
    assert_no_strays(vm_dir)


def mark_deleting(name: str) -> None:
    """Leave snapshot ``name`` as a delete killed after its first step does: marked."""
    root = ET.fromstring(virsh("snapshot-dumpxml", VM, name).stdout)  # noqa: S314
    description = root.find("description")
    assert description is not None and description.text is not None
    facts = json.loads(description.text.removeprefix("vmkeep snapshot "))
    description.text = "vmkeep snapshot " + json.dumps({**facts, "deleting": True})
    redefined = Path(seen["workdir"]) / "redefine.xml"
    redefined.write_text(ET.tostring(root, encoding="unicode"))
    virsh("snapshot-create", VM, str(redefined), "--redefine", "--current")


def test_repair_finishes_what_a_killed_vmkeep_left(
    env: dict[str, str], vm: dict[str, Any], workdir: Path
) -> None:
    """The states a kill -9 leaves, made by hand (a kill cannot be timed to land exactly
    there): a frozen guest, a delete that marked its snapshot and started an active commit
    (left waiting for its pivot), and an overlay from a create or revert that nothing uses."""
    seen["workdir"] = str(workdir)
    vm_dir = Path(vm["lab_dir"])
    snapshot(env, "create", VM, "--name", "kept")
    snapshot(env, "create", VM, "--name", "doomed")
    guest(env, "dd if=/dev/urandom of=/dev/vdb bs=1M count=2 seek=12 conv=fsync 2>/dev/null")
    data = md5s(env)
    depth = len(chain(sources()["vdb"]))
    mark_deleting("doomed")
    # As vmkeep's delete does: commit the active image into the one below only. Without
    # --pivot the job then waits, as it does after a kill.
    below = chain(sources()["vdb"])[1]
    virsh("blockcommit", VM, "vdb", "--active", "--base", below)
    froze = virsh("domfsfreeze", VM).stdout
    stray = vm_dir / "vdb.revert-kept.a1b2c3.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
         str(vm_dir / "vdb.qcow2"), str(stray)],
        check=True,
    )  # fmt: skip
    lookalike = vm_dir / "vdb.other.d4e5f6.qcow2"  # vmkeep's naming, but not backed by the VM
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(lookalike), "1M"], check=True)
    # The listing tells the truth, and nothing builds on the half-deleted snapshot.
    entry = next(s for s in listing(env)["snapshots"] if s["name"] == "doomed")
    assert entry["deleting"] is True
    refused = run_vmkeep(env, "snapshot", "revert", VM, "doomed", check=False)
    assert refused.returncode == 2 and "snapshot repair" in refused.stderr
    assert run_vmkeep(env, "snapshot", "create", VM, check=False).returncode == 2
    result = snapshot(env, "repair", VM)
    actions = "\n".join(result["actions"])
    if "Froze 0" not in froze:
        assert "thawed" in actions
    assert "vdb: finished an interrupted block commit (pivoted)" in actions
    assert "finished deleting snapshot 'doomed'" in actions
    assert f"removed {stray}: nothing uses it" in actions
    assert not stray.exists() and lookalike.exists()
    lookalike.unlink()
    assert snapshot_names() == {"kept"}
    assert guest(env, "echo thawed > /dev/null && echo ok").strip() == "ok"
    assert md5s(env) == data
    assert len(chain(sources()["vdb"])) == depth - 1
    assert_no_strays(vm_dir)
    assert snapshot(env, "repair", VM)["actions"] == []  # nothing left to do
    snapshot(env, "delete", VM, "kept")
    assert_no_strays(vm_dir)


def test_a_delete_killed_by_sigkill_is_listed_truthfully_and_repaired(
    env: dict[str, str], vm: dict[str, Any]
) -> None:
    """A real kill -9 of `snapshot delete` as soon as it has marked the snapshot (polled
    through virsh); wherever in the merge the kill lands, the listing says so and repair
    leaves the VM as a completed delete would."""
    vm_dir = Path(vm["lab_dir"])
    snapshot(env, "create", VM, "--name", "base-of-kill")
    snapshot(env, "create", VM, "--name", "killed")
    guest(env, "dd if=/dev/urandom of=/dev/vdb bs=1M count=16 seek=8 conv=fsync 2>/dev/null")
    data = md5s(env)
    depth = len(chain(sources()["vdb"]))
    deleting = subprocess.Popen(
        [*VMKEEP, "snapshot", "delete", VM, "killed"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    marked = False
    deadline = time.monotonic() + 30
    while deleting.poll() is None and time.monotonic() < deadline:
        dumped = virsh("snapshot-dumpxml", VM, "killed", check=False).stdout
        if "deleting" in dumped:
            marked = True
            break
    deleting.kill()
    deleting.wait()
    assert marked, "the delete finished before it could be killed"
    if "killed" in snapshot_names():  # the kill landed before the metadata went
        entry = next(s for s in listing(env)["snapshots"] if s["name"] == "killed")
        assert entry["deleting"] is True
    snapshot(env, "repair", VM)
    assert snapshot_names() == {"base-of-kill"}
    assert md5s(env) == data
    assert len(chain(sources()["vdb"])) == depth - 1
    assert_no_strays(vm_dir)
    snapshot(env, "delete", VM, "base-of-kill")
    assert_no_strays(vm_dir)


def write_pattern(image: str, pattern: int, offset_mib: int) -> None:
    """Write 1 MiB of ``pattern`` into an image no QEMU has open (the VM is shut off)."""
    command = f"write -P {pattern:#x} {offset_mib}M 1M"
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", command, image], check=True, capture_output=True
    )


def test_shut_off_vm_and_other_branches_merge_with_qemu_img(
    env: dict[str, str], vm: dict[str, Any], workdir: Path
) -> None:
    """With the VM shut off, every merge runs through qemu-img, including one on a branch
    the VM does not use; every snapshot still reads its own bytes afterwards."""
    vm_dir = Path(vm["lab_dir"])
    virsh("destroy", VM)
    witness: dict[str, str] = {}
    for number, name in enumerate(("A", "B", "C")):
        snapshot(env, "create", VM, "--name", name)
        write_pattern(sources()["vdb"], 0xA0 + number, number)
        witness[name] = host_md5(sources()["vdb"], workdir)  # B's and C's state once frozen
    frozen = {s["name"]: s["disks"][1]["frozen"] for s in listing(env)["snapshots"]}
    assert host_md5(frozen["C"], workdir) == witness["B"]
    result = snapshot(env, "revert", VM, "A")
    assert result["state"] == "shut off"
    assert virsh("domstate", VM).stdout.strip() == "shut off"
    assert_no_strays(vm_dir)  # C's overlay, the abandoned state, is gone
    # B's frozen image lies on the branch the VM left: merged with qemu-img commit.
    snapshot(env, "delete", VM, "B")
    frozen_c = next(s for s in listing(env)["snapshots"] if s["name"] == "C")["disks"][1]
    assert host_md5(frozen_c["frozen"], workdir) == witness["B"]
    snapshot(env, "revert", VM, "C")
    assert host_md5(sources()["vdb"], workdir) == witness["B"]
    for name in ("A", "C"):
        snapshot(env, "delete", VM, name)
        assert host_md5(sources()["vdb"], workdir) == witness["B"]
        assert_no_strays(vm_dir)
    assert sources() == {"vda": f"{vm_dir}/vda.qcow2", "vdb": f"{vm_dir}/vdb.qcow2"}
    assert snapshot_names() == set()
