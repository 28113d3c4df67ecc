"""VM backup benchmark: vmkeep against virtnbdbackup, restic and borg, on one running VM.

    sudo .venv/bin/python bench/vm_bench.py --quick     # 2 GiB disk, 500 MiB of files
    sudo .venv/bin/python bench/vm_bench.py             # 8 GiB disk, 3 GiB of files

A lab VM (``vmkeep lab create``) gets the cached realistic test disk of bench/make_disk.py as
its second disk (vdb). Measured in one run, each command timed with the sync after it and the
page cache dropped before it (bench/repository_bench.py's ``measure``):

- vmkeep: ``backup --full`` of the running VM; ~200 MiB written inside the guest (50 writes of
  4 MiB at random offsets of vdb); ``backup`` (incremental); ``restore --to DIR --format qcow2``.
- virtnbdbackup 1.9 (Debian): ``-l full``; the same kind of guest writes; ``-l inc``;
  ``virtnbdrestore``. It writes plain files: no dedup, no encryption.
- restic and borg: the qcow2 file of the test disk (what a file-level tool backs up), first
  backup and restore, as the restore baseline.

vmkeep's repository is made with ``repo init --key-file`` (a random key, as an unattended host
would use; a password adds one scrypt unlock, ~0.2 s, to every command).

With ``--repeat N`` every tool runs N times, the tools taking turns in each round so that all
see the same host (these machines' speed drifts by a third within an hour); the tables show
the median of each column and the JSON keeps every run.

Targets from the issue: vmkeep full <= 0.6x virtnbdbackup, incremental <= 0.5x virtnbdbackup,
restore <= 0.5x restic, stored <= restic. Results: printed and bench/results/*-vm.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_floor import measure_floor
from make_disk import build_disk
from repository_bench import (
    PASSWORD,
    Measurement,
    Preparation,
    du_bytes,
    ensure_tools,
    measure,
    run,
)

BENCH_DIR = Path(__file__).resolve().parent
VMKEEP = BENCH_DIR.parent / ".venv" / "bin" / "vmkeep"
VM = "vmkeep-bench-vm"
MIB = 1 << 20
CHANGE_WRITES, CHANGE_MIB = 50, 4  # 200 MiB of changes inside the guest


def _env(work: Path) -> dict[str, str]:
    password = work / "password"
    password.write_text(PASSWORD)
    password.chmod(0o600)
    env = dict(os.environ)
    env.update(
        VMKEEP_PASSWORD_FILE=str(password),
        RESTIC_PASSWORD_FILE=str(password),
        BORG_PASSPHRASE=PASSWORD.strip(),
        XDG_CACHE_HOME=str(work / "cache"),
    )
    return env


def prepare_vm(disk: Path, env: dict[str, str], disk_cache: str = "default") -> Path:
    """A running lab VM whose vdb is a fresh copy of the test disk, opened by QEMU with the
    ``disk_cache`` mode ("default": libvirt's, i.e. QEMU's writeback); returns vdb's path."""
    if _exists():
        run([VMKEEP, "lab", "destroy", VM], env=env)
    out = run(
        [VMKEEP, "lab", "create", VM, "--disks", "2", "--disk-size", "64M", "--json"], env=env
    )
    vdb = Path(next(d["source"] for d in json.loads(out)["vm"]["disks"] if d["target"] == "vdb"))
    run(["virsh", "destroy", VM])
    vdb.unlink()
    run(["qemu-img", "convert", "-O", "qcow2", "-o", "compat=1.1", str(disk), str(vdb)])
    if disk_cache != "default":
        _set_disk_cache(vdb, disk_cache)
    run([VMKEEP, "lab", "create", VM, "--reuse"], env=env)
    return vdb


def _set_disk_cache(source: Path, mode: str) -> None:
    """Give the (shut-off) VM's disk at ``source`` the cache mode ``mode``; with "none" also
    io="native", as Proxmox VE and OpenStack configure their VMs' disks."""
    root = ET.fromstring(run(["virsh", "dumpxml", "--inactive", VM]))  # noqa: S314 - local libvirtd
    for disk in root.iter("disk"):
        found = disk.find("source")
        driver = disk.find("driver")
        if found is not None and driver is not None and found.get("file") == str(source):
            driver.set("cache", mode)
            if mode == "none":
                driver.set("io", "native")
    with tempfile.NamedTemporaryFile("w", suffix=".xml") as xml:
        xml.write(ET.tostring(root, encoding="unicode"))
        xml.flush()
        run(["virsh", "define", xml.name])


def _exists() -> bool:
    names = subprocess.run(["virsh", "list", "--all", "--name"], capture_output=True, text=True)
    return VM in names.stdout.split()


def change_guest(env: dict[str, str], virtual_size: int, seed: int) -> None:
    """Write CHANGE_WRITES x CHANGE_MIB MiB of fresh random data at spread offsets of vdb."""
    slots = virtual_size // MIB // CHANGE_MIB
    offsets = [((seed * 7919 + i * 104729) % slots) * CHANGE_MIB for i in range(CHANGE_WRITES)]
    script = "; ".join(
        f"dd if=/dev/urandom of=/dev/vdb bs=1M count={CHANGE_MIB} seek={o} conv=notrunc 2>/dev/null"
        for o in offsets
    )
    run(
        [VMKEEP, "lab", "exec", VM, "--timeout", "900", "--", "sh", "-c", script + "; sync"],
        env=env,
    )


def bench_vmkeep(work: Path, env: dict[str, str], prep: Preparation, size: int) -> dict[str, Any]:
    repo, key = work / "vmkeep-repo", work / "vmkeep.key"
    env = {**env, "VMKEEP_REPO": str(repo), "VMKEEP_PASSWORD_FILE": str(key)}
    run([VMKEEP, "repo", "init", "--key-file", key], env=env)
    parse = json.loads
    full = measure(
        "vmkeep full", [VMKEEP, "backup", VM, "--full", "--json"], env=env, prep=prep, parse=parse
    )
    stored_full = du_bytes(repo)[0]
    change_guest(env, size, seed=1)
    inc = measure("vmkeep inc", [VMKEEP, "backup", VM, "--json"], env=env, prep=prep, parse=parse)
    if inc.output[0]["kind"] != "incremental":
        raise RuntimeError(f"vmkeep took a full backup: {inc.output[0]['reason']}")
    backup_id = inc.output[0]["backup_id"]
    out = work / "vmkeep-restore"
    restore = measure(
        "vmkeep restore",
        [VMKEEP, "restore", backup_id, "--to", out, "--disk", "vdb"],
        env=env,
        prep=prep,
    )
    return _row(
        "vmkeep",
        full,
        inc,
        restore,
        stored_full,
        read_inc=sum(d["read_bytes"] for d in inc.output[0]["disks"]),
    )


def bench_virtnbdbackup(
    work: Path, env: dict[str, str], prep: Preparation, size: int
) -> dict[str, Any]:
    target = work / "virtnbd"
    scratch = work / "virtnbd-scratch"
    scratch.mkdir()
    base = ["virtnbdbackup", "-d", VM, "-o", target, "-n", "-S", scratch]
    full = measure("virtnbdbackup full", [*base, "-l", "full"], env=env, prep=prep)
    stored_full = du_bytes(target)[0]
    change_guest(env, size, seed=2)
    inc = measure("virtnbdbackup inc", [*base, "-l", "inc"], env=env, prep=prep)
    out = work / "virtnbd-restore"
    restore = measure(
        "virtnbdrestore",
        ["virtnbdrestore", "-i", target, "-o", out, "-d", "vdb"],
        env=env,
        prep=prep,
    )
    return _row("virtnbdbackup", full, inc, restore, stored_full)


def bench_file_tool(
    name: str, work: Path, env: dict[str, str], prep: Preparation, disk: Path
) -> dict[str, Any]:
    repo, out = work / f"{name}-repo", work / f"{name}-restore"
    out.mkdir()
    if name == "restic":
        run(["restic", "init", "-r", repo], env=env)
        backup = measure(
            "restic backup", ["restic", "-r", repo, "backup", "--json", disk], env=env, prep=prep
        )
        restore = measure(
            "restic restore",
            ["restic", "-r", repo, "restore", "latest", "--target", out],
            env=env,
            prep=prep,
        )
    else:
        run(["borg", "init", "-e", "repokey", str(repo)], env=env)
        backup = measure(
            "borg create", ["borg", "create", f"{repo}::one", disk], env=env, prep=prep
        )
        restore = measure(
            "borg extract", ["borg", "extract", f"{repo}::one"], env=env, prep=prep, cwd=out
        )
    return _row(name, backup, None, restore, du_bytes(repo)[0])


def bench_floor(prep: Preparation) -> list[dict[str, Any]]:
    """Two rows: reading vdb's backup export alone, and reading it with zstd-3 compression
    (bench/export_floor.py), each after the same preparation as the tools' commands."""
    rows = []
    for compress, name in ((False, "floor: export read"), (True, "floor: read + zstd-3")):
        prep()
        floor = measure_floor(VM, "vdb", compress=compress)
        rows.append(
            {
                "name": name,
                "full_s": floor.seconds,
                "inc_s": None,
                "restore_s": None,
                "stored_mib": None,
                "peak_rss_mib": None,
                "inc_read_mib": None,
                "background": 0.0,
                "own_cpu_s": floor.own_cpu_s,
                "qemu_cpu_s": floor.qemu_cpu_s,
            }
        )
    return rows


def _row(
    name: str,
    full: Measurement,
    inc: Measurement | None,
    restore: Measurement,
    stored: int,
    read_inc: int | None = None,
) -> dict[str, Any]:
    return {
        "name": name,
        "full_s": full.seconds,
        "inc_s": inc.seconds if inc else None,
        "restore_s": restore.seconds,
        "stored_mib": round(stored / MIB, 1),  # after the full (first) backup
        "peak_rss_mib": max(m.peak_rss_mib for m in (full, inc, restore) if m),
        "inc_read_mib": round(read_inc / MIB, 1) if read_inc is not None else None,
        "background": max(m.background_cpu_share for m in (full, inc, restore) if m),
    }


_MEDIAN_KEYS = ("full_s", "inc_s", "restore_s", "stored_mib", "peak_rss_mib", "inc_read_mib")
_FLOOR_KEYS = ("own_cpu_s", "qemu_cpu_s")


def median_rows(rounds: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per tool: the median of each measured column over the rounds."""
    merged = []
    for position, first in enumerate(rounds[0]):
        runs = [round_rows[position] for round_rows in rounds]
        row = dict(first)
        for key in _MEDIAN_KEYS + _FLOOR_KEYS:
            if key not in first:
                continue
            values = [r[key] for r in runs if r[key] is not None]
            row[key] = round(statistics.median(values), 2) if values else None
        row["background"] = max(r["background"] for r in runs)
        merged.append(row)
    return merged


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def report(rows: list[dict[str, Any]], console: Console, rounds: int = 1) -> dict[str, str]:
    table = Table(
        title="VM backup benchmark (s = wall time incl. sync; stored = after the full"
        + (f"; median of {rounds} rounds)" if rounds > 1 else ")")
    )
    for column in (
        "tool",
        "full s",
        "inc s",
        "restore s",
        "stored MiB",
        "peak RSS MiB",
        "inc read MiB",
    ):
        table.add_column(column, justify="left" if column == "tool" else "right")
    for row in rows:
        table.add_row(
            row["name"],
            *(
                str(row[k]) if row[k] is not None else "-"
                for k in (
                    "full_s",
                    "inc_s",
                    "restore_s",
                    "stored_mib",
                    "peak_rss_mib",
                    "inc_read_mib",
                )
            ),
        )
    floors = [r for r in rows if r["name"].startswith("floor")]
    if floors:
        table.caption = (
            "floor rows: the reading of vdb's backup export alone (bench/export_floor.py; no "
            "job start or end, no sync), CPU s own / QEMU: "
            + ", ".join(f"{r['name'][7:]} {r['own_cpu_s']} / {r['qemu_cpu_s']}" for r in floors)
        )
    console.print(table)
    by = {r["name"]: r for r in rows}
    vk, vnb, restic = by.get("vmkeep", {}), by.get("virtnbdbackup", {}), by.get("restic", {})
    floor = by.get("floor: read + zstd-3", {})
    ratios = {
        "full vs virtnbdbackup (target <= 0.6x)": _ratio(vk.get("full_s"), vnb.get("full_s")),
        "incremental vs virtnbdbackup (target <= 0.5x)": _ratio(vk.get("inc_s"), vnb.get("inc_s")),
        "restore vs restic (target <= 0.5x)": _ratio(vk.get("restore_s"), restic.get("restore_s")),
        "stored vs restic (target <= 1x)": _ratio(vk.get("stored_mib"), restic.get("stored_mib")),
        "floor (export read + zstd-3) vs virtnbdbackup full": _ratio(
            floor.get("full_s"), vnb.get("full_s")
        ),
        "vmkeep full vs floor": _ratio(vk.get("full_s"), floor.get("full_s")),
    }
    ratio_table = Table("ratio", "value", title="vmkeep / peer")
    for key, value in ratios.items():
        ratio_table.add_row(key, value)
    console.print(ratio_table)
    return ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 GiB disk with 500 MiB of files")
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds (the tools take turns in each round)"
    )
    parser.add_argument(
        "--quiet-share",
        type=float,
        default=0.25,
        help="wait until the machine's CPU use is below this share before each command",
    )
    parser.add_argument(
        "--disk-cache",
        choices=("none", "writeback", "default"),
        default="default",
        help="QEMU's cache mode for the VM's data disk (default: libvirt's, i.e. writeback; "
        "none: as Proxmox VE and OpenStack set it)",
    )
    args = parser.parse_args(argv)
    console = Console()
    ensure_tools(["restic", "borg"])
    if shutil.which("virtnbdbackup") is None:
        run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", "virtnbdbackup"],
            env=os.environ | {"DEBIAN_FRONTEND": "noninteractive"},
        )
    disk = build_disk("2G", "500M") if args.quick else build_disk()
    work = Path(tempfile.mkdtemp(prefix="vmkeep-vm-bench-", dir="/var/tmp"))
    work.chmod(0o755)
    env = _env(work)
    prep = Preparation(drop_caches=True, quiet_share=args.quiet_share, settle_timeout=60)
    started = time.monotonic()
    rounds: list[list[dict[str, Any]]] = []
    try:
        for number in range(args.repeat):
            here = work / f"round-{number}"
            here.mkdir()
            prepare_vm(Path(disk.path), env, args.disk_cache)
            rows = [bench_vmkeep(here, env, prep, disk.virtual_size)]
            prepare_vm(Path(disk.path), env, args.disk_cache)  # the same start for the peer
            floors = bench_floor(prep)
            rows.append(bench_virtnbdbackup(here, env, prep, disk.virtual_size))
            for tool in ("restic", "borg"):
                rows.append(bench_file_tool(tool, here, env, prep, Path(disk.path)))
            rounds.append(rows + floors)
            # vmkeep's repository is kept until the end: deleting its thousands of chunk files
            # between rounds would slow the next round's file creation (ext4 skips inodes freed
            # in the last minute, reading inode tables to find them), which is vmkeep's full
            # backup, the first command of the round.
            (here / "vmkeep-repo").rename(work / f"vmkeep-repo-{number}")
            shutil.rmtree(here, ignore_errors=True)
    finally:
        subprocess.run([str(VMKEEP), "lab", "destroy", VM], env=env, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    rows = median_rows(rounds)
    ratios = report(rows, console, len(rounds))
    results = BENCH_DIR / "results"
    results.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (results / f"{stamp}-{'quick' if args.quick else 'full'}-vm.json").write_text(
        json.dumps(
            {
                "disk": disk.__dict__,
                "disk_cache": args.disk_cache,
                "rows": rows,
                "rounds": rounds,
                "ratios": ratios,
                "elapsed_seconds": round(time.monotonic() - started, 1),
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
