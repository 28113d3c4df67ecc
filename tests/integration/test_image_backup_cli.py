"""backup-image / restore-image / repo check through the real CLI, on real qcow2 and raw
images read by qemu-nbd and libnbd, into a local repository. Includes the fault cases:
corruption, wrong password, insecure password file, a full disk, and kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_vmkeep

MiB = 1 << 20


def qemu_io(image: Path, *commands: str, fmt: str = "qcow2") -> None:
    argv = ["qemu-io", "-f", fmt]
    for command in commands:
        argv += ["-c", command]
    subprocess.run([*argv, str(image)], check=True, capture_output=True)


def make_image(path: Path, size: str = "64M", fmt: str = "qcow2") -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(path), size], check=True)
    return path


def compare(a: Path, b: Path) -> None:
    done = subprocess.run(["qemu-img", "compare", str(a), str(b)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    password = tmp_path / "password"
    password.write_text("correct horse\n")
    password.chmod(0o600)
    environment = dict(os.environ)
    environment.update(
        VMKEEP_PASSWORD_FILE=str(password),
        VMKEEP_REPO=str(tmp_path / "repo"),
        VMKEEP_CONFIG=str(tmp_path / "no-config.toml"),
        XDG_CACHE_HOME=str(tmp_path / "cache"),
    )
    environment.pop("VMKEEP_PASSWORD", None)
    (tmp_path / "no-config.toml").write_text(f'[cache]\ndir = "{tmp_path / "cache"}"\n')
    run_vmkeep(environment, "repo", "init", "--chunk-size", "1M")
    return environment


def backup(env: dict[str, str], image: Path, *extra: str) -> dict[str, object]:
    return json.loads(run_vmkeep(env, "backup-image", str(image), "--json", *extra).stdout)  # type: ignore[no-any-return]


def restore(
    env: dict[str, str], backup_id: str, target: Path, *extra: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return run_vmkeep(env, "restore-image", backup_id, "--to", str(target), *extra, check=check)


@pytest.mark.parametrize("fmt", ["qcow2", "raw"])
def test_round_trip_is_identical_and_thin(env: dict[str, str], tmp_path: Path, fmt: str) -> None:
    image = make_image(tmp_path / f"disk.{fmt}", "96M", fmt)
    qemu_io(image, "write -P 0xa5 0 3M", "write -P 0x5a 40M 5M", "write -P 0x01 95M 1M", fmt=fmt)
    manifest = backup(env, image)
    (disk,) = manifest["disks"]  # type: ignore[misc]
    assert disk["size"] == 96 * MiB
    assert disk["read_bytes"] == 9 * MiB  # only allocated chunks were read
    for out_format in ("qcow2", "raw"):
        target = tmp_path / f"restored.{out_format}"
        restore(env, str(manifest["backup_id"]), target, "--format", out_format)
        compare(image, target)
        # Thin: the restored image takes about the data, not the virtual size.
        assert target.stat().st_blocks * 512 < 16 * MiB
        if out_format == "qcow2":
            # Thin for QEMU too: only the clusters that hold data are allocated.
            assert data_bytes(target) == 9 * MiB
            subprocess.run(["qemu-img", "check", "-q", str(target)], check=True)


def data_bytes(image: Path) -> int:
    """How much of ``image`` QEMU reports as allocated data."""
    done = subprocess.run(
        ["qemu-img", "map", "--output=json", str(image)], check=True, capture_output=True
    )
    return sum(e["length"] for e in json.loads(done.stdout) if e["data"])


def test_backup_of_an_overlay_restores_identical(env: dict[str, str], tmp_path: Path) -> None:
    """Part of an overlay's data is read from its file directly, the rest (its backing
    file's) through qemu-nbd: the restore must still be the overlay's view, bit for bit."""
    base = make_image(tmp_path / "base.qcow2", "16M")
    qemu_io(base, "write -P 0x11 0 6M")
    overlay = tmp_path / "overlay.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(overlay)],
        check=True,
    )
    qemu_io(overlay, "write -P 0x22 2M 1536k", "write -z 4M 1M")
    manifest = backup(env, overlay)
    target = tmp_path / "restored.qcow2"
    restore(env, str(manifest["backup_id"]), target)
    compare(overlay, target)


@pytest.fixture
def no_direct_io_dir(tmp_path: Path) -> Iterator[Path]:
    """A ramfs mount: a filesystem without O_DIRECT, where qemu-nbd --cache=none cannot open."""
    mount = tmp_path / "ramfs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "ramfs", "ramfs", str(mount)], check=True)
    try:
        with pytest.raises(OSError):
            os.close(os.open(mount / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT))
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_images_on_a_filesystem_without_direct_io(
    env: dict[str, str], tmp_path: Path, no_direct_io_dir: Path
) -> None:
    """qemu-nbd is started without the page cache first; where O_DIRECT does not exist it
    must fall back to the page cache, for reading and for writing qcow2."""
    image = make_image(no_direct_io_dir / "disk.qcow2", "16M")
    qemu_io(image, "write -P 0x77 1M 2M")
    manifest = backup(env, image)
    assert manifest["disks"][0]["read_bytes"] == 2 * MiB  # type: ignore[index]
    target = no_direct_io_dir / "restored.qcow2"
    restore(env, str(manifest["backup_id"]), target)
    compare(image, target)


def test_second_backup_is_deduplicated(env: dict[str, str], tmp_path: Path) -> None:
    image = make_image(tmp_path / "disk.qcow2")
    # Eight distinct chunks, and a ninth that repeats the first: dedup within one backup too.
    qemu_io(image, *(f"write -P {0x31 + n} {n}M 1M" for n in range(8)), "write -P 0x31 20M 1M")
    first = backup(env, image)
    second = backup(env, image)
    assert first["disks"][0]["read_bytes"] == 9 * MiB  # type: ignore[index]
    assert first["disks"][0]["new_bytes"] == 8 * MiB  # type: ignore[index]
    assert second["disks"][0]["new_bytes"] == 0  # type: ignore[index]
    listed = json.loads(run_vmkeep(env, "list", "--json").stdout)
    assert [b["backup_id"] for b in listed["backups"]] == sorted(
        [first["backup_id"], second["backup_id"]]
    )
    stats = json.loads(run_vmkeep(env, "repo", "stats", "--json").stdout)
    assert stats["backups"] == 2
    assert stats["dedup_ratio"] == pytest.approx(18 / 8)
    assert stats["compression_ratio"] > 10  # a repeated byte pattern compresses well


def _objects(repo: Path, prefix: str) -> list[Path]:
    return sorted(p for p in (repo / prefix).rglob("*") if p.is_file())


def test_corruption_is_named_and_never_restored(env: dict[str, str], tmp_path: Path) -> None:
    image = make_image(tmp_path / "disk.qcow2")
    qemu_io(image, *(f"write -P {0x11 + n} {n}M 1M" for n in range(4)))
    manifest = backup(env, image)
    repo = Path(env["VMKEEP_REPO"])
    assert run_vmkeep(env, "repo", "check", "--read-data").returncode == 0
    victim = _objects(repo, "data")[2]
    blob = bytearray(victim.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    victim.chmod(0o600)
    victim.write_bytes(bytes(blob))
    done = run_vmkeep(env, "repo", "check", "--read-data", "--json", check=False)
    assert done.returncode == 13
    report = json.loads(done.stdout)
    assert [p["object_name"] for p in report["problems"]] == [
        f"data/{victim.parent.name}/{victim.name}"
    ]
    assert report["damaged_backups"] == [manifest["backup_id"]]
    target = tmp_path / "restored.qcow2"
    failed = restore(env, str(manifest["backup_id"]), target, check=False)
    assert failed.returncode == 13
    assert victim.name in failed.stderr
    assert not target.exists()
    assert not list(tmp_path.glob(".restored*"))  # no partial file either


def test_missing_and_truncated_objects(env: dict[str, str], tmp_path: Path) -> None:
    image = make_image(tmp_path / "disk.qcow2")
    qemu_io(image, "write -P 0x22 0 2M")
    manifest = backup(env, image)
    repo = Path(env["VMKEEP_REPO"])
    chunk = _objects(repo, "data")[0]
    chunk.unlink()
    done = run_vmkeep(env, "repo", "check", "--json", check=False)
    assert done.returncode == 13
    assert json.loads(done.stdout)["problems"][0]["message"] == "missing"
    (manifest_file,) = _objects(repo, "manifests")
    manifest_file.chmod(0o600)
    manifest_file.write_bytes(manifest_file.read_bytes()[:30])
    report = json.loads(run_vmkeep(env, "repo", "check", "--json", check=False).stdout)
    assert report["problems"][0]["object_name"] == f"manifests/{manifest['backup_id']}"
    listing = json.loads(run_vmkeep(env, "list", "--json").stdout)
    assert listing["unreadable"] == [manifest["backup_id"]]


def test_wrong_password_writes_nothing(env: dict[str, str], tmp_path: Path) -> None:
    image = make_image(tmp_path / "disk.qcow2")
    qemu_io(image, "write -P 0x44 0 1M")
    repo = Path(env["VMKEEP_REPO"])
    before = sorted(p.relative_to(repo) for p in repo.rglob("*"))
    wrong = tmp_path / "wrong"
    wrong.write_text("incorrect")
    wrong.chmod(0o600)
    done = run_vmkeep(
        {**env, "VMKEEP_PASSWORD_FILE": str(wrong)}, "backup-image", str(image), check=False
    )
    assert done.returncode == 14
    assert "wrong password" in done.stderr
    assert sorted(p.relative_to(repo) for p in repo.rglob("*")) == before


def test_insecure_password_file_is_refused(env: dict[str, str]) -> None:
    password = Path(env["VMKEEP_PASSWORD_FILE"])
    password.chmod(0o644)
    done = run_vmkeep(env, "list", check=False)
    assert done.returncode == 16
    assert f"chmod 600 {password}" in done.stderr


def test_key_management(env: dict[str, str], tmp_path: Path) -> None:
    new = tmp_path / "new-password"
    new.write_text("second password")
    new.chmod(0o600)
    added = json.loads(
        run_vmkeep(env, "repo", "key", "add", "--new-password-file", str(new), "--json").stdout
    )
    keys = json.loads(run_vmkeep(env, "repo", "key", "list", "--json").stdout)
    assert {k["key_id"] for k in keys} >= {added["added"]}
    run_vmkeep({**env, "VMKEEP_PASSWORD_FILE": str(new)}, "list")  # the new password opens it
    exported = tmp_path / "key.txt"
    run_vmkeep(env, "repo", "key", "export", "--output", str(exported))
    assert exported.stat().st_mode & 0o777 == 0o600
    assert "scrypt" in exported.read_text()
    third = tmp_path / "third-password"
    third.write_text("third password")
    third.chmod(0o600)
    changed = json.loads(
        run_vmkeep(
            env, "repo", "key", "change-password", "--new-password-file", str(third), "--json"
        ).stdout
    )
    done = run_vmkeep(env, "list", check=False)
    assert done.returncode == 14  # the old password is gone
    second_env = {**env, "VMKEEP_PASSWORD_FILE": str(new)}
    refused = run_vmkeep(second_env, "repo", "key", "remove", added["added"], check=False)
    assert refused.returncode == 2 and "in use" in refused.stderr
    run_vmkeep(second_env, "repo", "key", "remove", changed["key_id"])
    keys = json.loads(run_vmkeep(second_env, "repo", "key", "list", "--json").stdout)
    assert [k["key_id"] for k in keys] == [added["added"]]
    assert (
        run_vmkeep({**env, "VMKEEP_PASSWORD_FILE": str(third)}, "list", check=False).returncode
        == 14
    )


def test_random_key_files(env: dict[str, str], tmp_path: Path) -> None:
    key = tmp_path / "host.key"
    added = json.loads(
        run_vmkeep(env, "repo", "key", "add", "--key-file", str(key), "--json").stdout
    )
    assert added["key_file"] == str(key)
    assert key.stat().st_mode & 0o777 == 0o600
    assert key.read_text().startswith("vmkeep-random-key-v1:")
    key_env = {**env, "VMKEEP_PASSWORD_FILE": str(key)}
    keys = json.loads(run_vmkeep(key_env, "repo", "key", "list", "--json").stdout)
    assert {(k["kind"], k["current"]) for k in keys} == {("password", False), ("random key", True)}
    before = key.read_bytes()
    again = run_vmkeep(env, "repo", "key", "add", "--key-file", str(key), check=False)
    assert again.returncode == 2 and "never overwritten" in again.stderr
    assert key.read_bytes() == before
    assert len(json.loads(run_vmkeep(env, "repo", "key", "list", "--json").stdout)) == 2

    fresh = tmp_path / "fresh.key"
    fresh_env = {**env, "VMKEEP_REPO": str(tmp_path / "repo2"), "VMKEEP_PASSWORD_FILE": ""}
    made = json.loads(
        run_vmkeep(fresh_env, "repo", "init", "--key-file", str(fresh), "--json").stdout
    )
    assert made["key_file"] == str(fresh) and fresh.stat().st_mode & 0o777 == 0o600
    opened = {**fresh_env, "VMKEEP_PASSWORD_FILE": str(fresh)}
    keys = json.loads(run_vmkeep(opened, "repo", "key", "list", "--json").stdout)
    assert [k["kind"] for k in keys] == ["random key"]
    refused = run_vmkeep(
        fresh_env, "repo", "init", "--key-file", str(tmp_path / "b.key"), check=False
    )
    assert refused.returncode != 0 and "exists" in refused.stderr
    assert not (tmp_path / "b.key").exists()  # removed again: it opens nothing


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_fails_cleanly_and_the_repository_stays_consistent(
    env: dict[str, str], tmp_path: Path, small_disk: Path
) -> None:
    small_env = {**env, "VMKEEP_REPO": str(small_disk / "repo")}
    run_vmkeep(small_env, "repo", "init", "--chunk-size", "1M")
    image = make_image(tmp_path / "noise.raw", "16M", "raw")
    subprocess.run(
        ["dd", "if=/dev/urandom", f"of={image}", "bs=1M", "count=16", "conv=notrunc"],
        check=True,
        capture_output=True,
    )
    done = run_vmkeep(small_env, "backup-image", str(image), check=False)
    assert done.returncode == 11, done.stderr
    assert "no space left" in done.stderr
    report = json.loads(run_vmkeep(small_env, "repo", "check", "--read-data", "--json").stdout)
    assert report["ok"] and report["backups"] == 0
    assert not list((small_disk / "repo" / "locks").glob("*"))
    assert not list((small_disk / "repo" / "tmp").glob("*"))


def test_a_restore_that_does_not_fit_fails_cleanly_and_leaves_nothing(
    env: dict[str, str], tmp_path: Path, small_disk: Path
) -> None:
    """On a 6 MiB filesystem a 16 MiB image of random data fails with "no space left", and no
    partial file stays (the reservation is given back, then the writes find the disk full)."""
    image = make_image(tmp_path / "noise.raw", "16M", "raw")
    subprocess.run(
        ["dd", "if=/dev/urandom", f"of={image}", "bs=1M", "count=16", "conv=notrunc"],
        check=True,
        capture_output=True,
    )
    backup_id = str(backup(env, image)["backup_id"])
    for image_format in ("raw", "qcow2"):
        target = small_disk / f"restored.{image_format}"
        done = restore(env, backup_id, target, "--format", image_format, check=False)
        assert done.returncode == 11, done.stderr
        assert "no space left" in done.stderr
        assert not list(small_disk.iterdir())


def test_a_restore_that_fits_only_without_its_zero_blocks_still_works(
    env: dict[str, str], tmp_path: Path, small_disk: Path
) -> None:
    """Restores reserve whole data chunks first, zero blocks inside them too: 16 chunks with
    64 KiB of data each reserve 16 MiB on a 6 MiB filesystem. The reservation is given back
    and the 1 MiB of data is written as without it."""
    image = make_image(tmp_path / "sparse.raw", "16M", "raw")
    with image.open("r+b") as file:
        for number in range(16):
            file.seek(number << 20)
            file.write(os.urandom(64 << 10))
    backup_id = str(backup(env, image)["backup_id"])
    for image_format in ("raw", "qcow2"):
        target = small_disk / f"restored.{image_format}"
        restore(env, backup_id, target, "--format", image_format)
        compare(image, target)
        target.unlink()


def test_kill_9_leaves_no_backup_and_the_next_run_works(
    env: dict[str, str], tmp_path: Path
) -> None:
    image = make_image(tmp_path / "noise.raw", "48M", "raw")
    subprocess.run(
        ["dd", "if=/dev/urandom", f"of={image}", "bs=1M", "count=48", "conv=notrunc"],
        check=True,
        capture_output=True,
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "vmkeep.cli", "backup-image", str(image), "--limit-upload", "8M"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    repo = Path(env["VMKEEP_REPO"])
    deadline = time.monotonic() + 60
    while len(_objects(repo, "data")) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)  # vmkeep and its qemu-nbd
    process.wait()
    assert 3 <= len(_objects(repo, "data")) < 48  # killed mid-way
    listing = json.loads(run_vmkeep(env, "list", "--json").stdout)
    assert listing["backups"] == []
    assert json.loads(run_vmkeep(env, "repo", "check", "--read-data", "--json").stdout)["ok"]
    # The dead process's lock is stale (its pid is gone on this host): no unlock needed.
    manifest = backup(env, image)
    target = tmp_path / "back.raw"
    restore(env, str(manifest["backup_id"]), target, "--format", "raw")
    compare(image, target)
