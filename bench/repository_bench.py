"""Repository benchmark: vmkeep against restic and borg on the same realistic disk image.

Run on demand (not part of the test suite), as root so the page cache can be dropped:

    .venv/bin/python bench/repository_bench.py            # 8 GiB disk, 3 GiB of /usr files
    .venv/bin/python bench/repository_bench.py --quick    # 2 GiB disk, 500 MiB: 1-7 minutes
    .venv/bin/python bench/repository_bench.py --help     # chunk sizes, tools, repeats...

What it measures, in one run, on one cached test disk (bench/make_disk.py builds it once):

- vmkeep ``backup-image`` for each chunk size (1M, 2M, 4M by default), each into a fresh
  repository: first backup, second backup of the unchanged image into the same repository,
  ``restore-image`` of the first backup to qcow2, the repository's size on disk, and a third
  backup after 100 scattered 4 KiB writes (through a qcow2 overlay), to see what one chunk
  size costs per small change.
- restic and borg (Debian packages, installed with apt-get if missing) backing up the qcow2
  file itself with their default settings: first backup, second backup (their default, which
  may skip an unchanged file by its metadata), a forced re-read (``restic --force``, ``borg
  --files-cache=disabled``), restore (``restic restore``, ``borg extract``), repository size.
- Wall time of every command plus the ``sync`` after it (tools differ in when they flush; the
  data is only safe once it is on disk), and the peak RSS of the command's process tree
  (vmkeep's includes its qemu-nbd).

Every restore is checked against the source (``qemu-img compare`` or a byte comparison).
The page cache is dropped before every measured command when possible. Repositories live
in a fresh temporary directory that is removed at the end. The results are printed as a table
and written as JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import contextlib
import filecmp
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_disk import (
    DEFAULT_CACHE_DIR,
    FULL_DATA,
    FULL_SIZE,
    QUICK_DATA,
    QUICK_SIZE,
    TestDisk,
    build_disk,
)

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
VMKEEP = PROJECT_DIR / ".venv" / "bin" / "vmkeep"
PASSWORD = "vmkeep-bench-password\n"  # noqa: S105 - throwaway repositories
MIB = 1 << 20
CHANGED_WRITES = 100
DEFAULT_LEVEL = 3  # vmkeep repo init's default zstd level
CHANGED_WRITE_SIZE = 4096
RSS_SAMPLE_SECONDS = 0.1

# Piped output (e.g. `| tee`) gets wide tables rather than rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 150)


# -- measuring one command -----------------------------------------------------------------


@dataclass
class Measurement:
    """One measured command."""

    what: str
    seconds: float  # command wall time + the sync after it: what the tables use
    command_seconds: float
    sync_seconds: float
    peak_rss_mib: float  # max(sampled peak of the whole process tree, largest VmHWM sampled)
    tree_rss_mib: float
    maxrss_mib: float
    user_seconds: float
    system_seconds: float
    # CPU time the rest of the machine used meanwhile, as a share of all CPUs over the wall
    # time: other workloads on the host make wall times noisy, so it is recorded per command
    background_cpu_share: float = 0.0
    steal_share: float = 0.0
    settle_seconds: float = 0.0  # waited for a quiet machine before starting
    settle_share: float = 0.0  # the machine's CPU share busy just before starting
    output: Any = None

    @property
    def cpu_seconds(self) -> float:
        return self.user_seconds + self.system_seconds


def _children_of(root: int) -> list[int]:
    """``root`` and its live descendants, from /proc/*/stat."""
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:  # noqa: PTH123
                text = handle.read()
        except OSError:
            continue
        ppid = int(text[text.rindex(b")") + 2 :].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, []))
    return found


def _tree_memory(root: int) -> tuple[int, int]:
    """(RSS of the whole process tree, largest VmHWM of one of its processes), in bytes.

    VmHWM rather than wait4's ``ru_maxrss``: a child started with vfork (as subprocess does)
    carries the parent's high-water mark into ``ru_maxrss`` across its exec, so every
    command would report at least this benchmark's own memory. VmHWM belongs to the
    process's own address space since its exec.
    """
    total = largest = 0
    for pid in _children_of(root):
        try:
            with open(f"/proc/{pid}/status", "rb") as handle:  # noqa: PTH123
                fields = dict(
                    line.split(b":", 1) for line in handle.read().splitlines() if b":" in line
                )
            total += int(fields[b"VmRSS"].split()[0]) * 1024
            largest = max(largest, int(fields[b"VmHWM"].split()[0]) * 1024)
        except (OSError, ValueError, IndexError, KeyError):
            continue  # gone, or a kernel thread
    return total, largest


def _cpu_ticks() -> tuple[int, int]:
    """(busy, steal) clock ticks of the whole machine so far, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return user + nice + system + irq + softirq, steal


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CPUS = os.cpu_count() or 1
SETTLE_WINDOW = 1.0


class Preparation:
    """Before each measured command: drop the page cache (if this process may), then wait
    until the rest of the machine is quiet, so that runs are comparable."""

    def __init__(self, drop_caches: bool, quiet_share: float, settle_timeout: float) -> None:
        self.quiet_share = quiet_share
        self.settle_timeout = settle_timeout
        self.drops = drop_caches and self._drop()

    @staticmethod
    def _drop() -> bool:
        os.sync()
        try:
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
        except OSError:
            return False
        return True

    def __call__(self) -> tuple[float, float]:
        """Drop and settle; returns (seconds waited, CPU share of the last quiet check)."""
        if self.drops:
            self._drop()
        started = time.monotonic()
        share = 0.0
        while self.settle_timeout > 0:
            busy_before, _ = _cpu_ticks()
            time.sleep(SETTLE_WINDOW)
            busy_after, _ = _cpu_ticks()
            share = (busy_after - busy_before) / CLOCK_TICKS / (SETTLE_WINDOW * CPUS)
            if share <= self.quiet_share or time.monotonic() - started > self.settle_timeout:
                break
        return round(time.monotonic() - started, 1), round(share, 3)


def measure(
    what: str,
    argv: Sequence[str | Path],
    *,
    env: dict[str, str],
    cwd: Path | None = None,
    prep: Preparation,
    parse: Callable[[str], Any] | None = None,
) -> Measurement:
    """Run ``argv`` once, timing it and the sync after it, sampling its tree's RSS."""
    settle_seconds, settle_share = prep()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        busy_before, steal_before = _cpu_ticks()
        started = time.monotonic()
        process = subprocess.Popen([str(a) for a in argv], env=env, cwd=cwd, stdout=out, stderr=err)
        peak = maxrss = 0
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak, maxrss
            while not stop.is_set():
                tree, largest = _tree_memory(process.pid)
                peak, maxrss = max(peak, tree), max(maxrss, largest)
                stop.wait(RSS_SAMPLE_SECONDS)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(process.pid, 0)
        ended = time.monotonic()
        busy_after, steal_after = _cpu_ticks()
        stop.set()
        sampler.join()
        process.returncode = os.waitstatus_to_exitcode(status)
        os.sync()
        synced = time.monotonic()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(
            f"{what}: {' '.join(map(str, argv))} exited {process.returncode}\n{stderr[-3000:]}"
        )
    capacity = (ended - started) * CPUS
    own = usage.ru_utime + usage.ru_stime
    background = (busy_after - busy_before) / CLOCK_TICKS - own
    return Measurement(
        what=what,
        seconds=round(synced - started, 3),
        command_seconds=round(ended - started, 3),
        sync_seconds=round(synced - ended, 3),
        peak_rss_mib=round(max(peak, maxrss) / MIB, 1),
        tree_rss_mib=round(peak / MIB, 1),
        maxrss_mib=round(maxrss / MIB, 1),
        user_seconds=round(usage.ru_utime, 2),
        system_seconds=round(usage.ru_stime, 2),
        background_cpu_share=round(max(0.0, background) / capacity, 3),
        steal_share=round((steal_after - steal_before) / CLOCK_TICKS / capacity, 3),
        settle_seconds=settle_seconds,
        settle_share=settle_share,
        output=parse(stdout) if parse else None,
    )


def run(argv: Sequence[str | Path], env: dict[str, str] | None = None, **kwargs: Any) -> str:
    """Run an unmeasured helper command; raise with its stderr on failure."""
    result = subprocess.run(
        [str(a) for a in argv], env=env, capture_output=True, text=True, check=False, **kwargs
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} failed: {result.stderr[-3000:]}")
    return result.stdout


def du_bytes(path: Path) -> tuple[int, int]:
    """(bytes allocated on disk, as ``du``; apparent bytes) of a directory tree."""
    allocated = apparent = 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            info = (Path(root) / name).lstat()
            allocated += info.st_blocks * 512
            apparent += info.st_size
    return allocated, apparent


def _last_json_line(text: str) -> Any:
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return None


# -- one configuration: one tool (and chunk size), one fresh repository ----------------------


@dataclass
class ToolResult:
    """Everything measured for one tool or vmkeep chunk size, one repetition."""

    name: str
    first: Measurement
    second: Measurement
    restore: Measurement
    stored_bytes: int
    stored_apparent_bytes: int
    reread: Measurement | None = None  # restic/borg: second run forced to read the file
    changed: Measurement | None = None  # vmkeep: third backup after scattered writes
    changed_new_bytes: int | None = None
    changed_stored_bytes: int | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Context:
    disk: TestDisk
    work: Path
    password_file: Path
    prep: Preparation
    overlay: Path | None


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VMKEEP_", "RESTIC_", "BORG_"))}
    env["LC_ALL"] = "C.UTF-8"
    return env


def bench_vmkeep(ctx: Context, name: str, chunk_size: str, level: int, rep: int) -> ToolResult:
    base = ctx.work / f"vmkeep-{chunk_size}-{level}-{rep}"
    base.mkdir()
    repo, cache = base / "repo", base / "cache"
    config = base / "config.toml"
    config.write_text(f'[cache]\ndir = "{cache}"\n')
    env = _base_env() | {
        "VMKEEP_PASSWORD_FILE": str(ctx.password_file),
        "VMKEEP_CONFIG": str(config),
    }
    init = [VMKEEP, "repo", "init", repo, "--chunk-size", chunk_size, "--json"]
    run([*init, "--compression-level", str(level)], env)
    image = ctx.disk.path

    def backup(what: str, source: str | Path) -> Measurement:
        m = measure(
            what,
            [VMKEEP, "backup-image", source, "-r", repo, "--name", "disk", "--json"],
            env=env,
            prep=ctx.prep,
            parse=json.loads,
        )
        disk = m.output["disks"][0]
        m.output = {
            "backup_id": m.output["backup_id"],
            **{k: disk[k] for k in ("read_bytes", "new_bytes", "stored_bytes", "zero_chunks")},
            "transfer_seconds": disk["seconds"],
        }
        return m

    first = backup("first backup", image)
    second = backup("second backup", image)
    target = base / "restored.qcow2"
    restore = measure(
        "restore",
        [VMKEEP, "restore-image", first.output["backup_id"], "-r", repo, "--to", target, "--json"],
        env=env,
        prep=ctx.prep,
    )
    run(["qemu-img", "compare", "-q", "-f", "qcow2", "-F", "qcow2", image, target])
    target.unlink()
    stored, apparent = du_bytes(repo)
    result = ToolResult(name, first, second, restore, stored, apparent)
    if ctx.overlay is not None:
        changed = backup("backup after scattered writes", ctx.overlay)
        result.changed = changed
        result.changed_new_bytes = changed.output["new_bytes"]
        result.changed_stored_bytes = changed.output["stored_bytes"]
    shutil.rmtree(base)
    return result


def bench_restic(ctx: Context, rep: int) -> ToolResult:
    base = ctx.work / f"restic-{rep}"
    base.mkdir()
    repo = base / "repo"
    env = _base_env() | {
        "RESTIC_PASSWORD_FILE": str(ctx.password_file),
        "RESTIC_CACHE_DIR": str(base / "cache"),
        "RESTIC_REPOSITORY": str(repo),
    }
    run(["restic", "init"], env)
    image = ctx.disk.path
    argv = ["restic", "backup", "--json", image]
    first = measure("first backup", argv, env=env, prep=ctx.prep, parse=_last_json_line)
    second = measure("second backup", argv, env=env, prep=ctx.prep, parse=_last_json_line)
    reread = measure(
        "second backup, forced re-read",
        [*argv[:2], "--force", *argv[2:]],
        env=env,
        prep=ctx.prep,
        parse=_last_json_line,
    )
    target = base / "restored"
    restore = measure(
        "restore",
        ["restic", "restore", first.output["snapshot_id"], "--target", target],
        env=env,
        prep=ctx.prep,
    )
    _check_same(image, target / Path(image).relative_to("/"))
    shutil.rmtree(target)
    stored, apparent = du_bytes(repo)
    result = ToolResult("restic", first, second, restore, stored, apparent, reread=reread)
    if second.output and second.output.get("files_unmodified"):
        result.notes.append("restic's second run skipped the unchanged file (parent snapshot)")
    shutil.rmtree(base)
    return result


def bench_borg(ctx: Context, rep: int) -> ToolResult:
    base = ctx.work / f"borg-{rep}"
    base.mkdir()
    repo = base / "repo"
    env = _base_env() | {
        "BORG_PASSPHRASE": PASSWORD.strip(),
        "BORG_BASE_DIR": str(base / "home"),
        "BORG_REPO": str(repo),
    }
    run(["borg", "init", "-e", "repokey"], env)
    image = ctx.disk.path

    def create(what: str, archive: str, *extra: str) -> Measurement:
        return measure(
            what,
            ["borg", "create", "--json", *extra, f"::{archive}", image],
            env=env,
            prep=ctx.prep,
            parse=json.loads,
        )

    first = create("first backup", "first")
    second = create("second backup", "second")
    reread = create("second backup, forced re-read", "third", "--files-cache=disabled")
    target = base / "restored"
    target.mkdir()
    restore = measure("restore", ["borg", "extract", "::first"], env=env, cwd=target, prep=ctx.prep)
    _check_same(image, target / Path(image).relative_to("/"))
    shutil.rmtree(target)
    stored, apparent = du_bytes(repo)
    result = ToolResult("borg", first, second, restore, stored, apparent, reread=reread)
    result.notes.append(
        "borg never trusts its files cache for the file with the newest mtime of a backup "
        "(its FAQ), so a single-file backup is re-read every time"
    )
    shutil.rmtree(base)
    return result


def _check_same(original: str | Path, restored: Path) -> None:
    if not filecmp.cmp(original, restored, shallow=False):
        raise RuntimeError(f"{restored} differs from {original}")


# -- the changed image -----------------------------------------------------------------------


def make_overlay(disk: TestDisk, work: Path) -> Path:
    """A qcow2 overlay on the test disk with CHANGED_WRITES scattered 4 KiB writes inside its
    data (a fixed seed: the same offsets every run)."""
    overlay = work / "changed.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", disk.path, overlay])
    extents = [
        e
        for e in json.loads(run(["qemu-img", "map", "--output=json", disk.path]))
        if e.get("data") and e["length"] >= CHANGED_WRITE_SIZE
    ]
    total = sum(e["length"] for e in extents)
    rng = random.Random(20261123)  # noqa: S311 - a benchmark, not cryptography
    commands = []
    for _ in range(CHANGED_WRITES):
        spot = rng.randrange(total)
        for e in extents:
            if spot < e["length"]:
                offset = e["start"] + min(spot, e["length"] - CHANGED_WRITE_SIZE)
                break
            spot -= e["length"]
        offset -= offset % CHANGED_WRITE_SIZE
        pattern = rng.randrange(1, 256)
        commands += ["-c", f"write -q -P {pattern} {offset} {CHANGED_WRITE_SIZE}"]
    run(["qemu-io", "-f", "qcow2", *commands, overlay])
    return overlay


# -- setup -----------------------------------------------------------------------------------


def ensure_tools(wanted: list[str]) -> list[str]:
    """Install restic/borg with apt-get when missing; returns the tools available."""
    packages = {"restic": "restic", "borg": "borgbackup"}
    missing = [t for t in wanted if shutil.which(t) is None]
    if missing:
        console.print(f"installing {', '.join(packages[t] for t in missing)} with apt-get")
        env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
        argv = ["apt-get", "install", "-y", "-q", *(packages[t] for t in missing)]
        if subprocess.run(argv, env=env, capture_output=True, check=False).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
            subprocess.run(argv, env=env, capture_output=True, check=False)
    available = [t for t in wanted if shutil.which(t) is not None]
    for tool in sorted(set(wanted) - set(available)):
        console.print(f"[yellow]{tool} is not available: skipped[/]")
    return available


def _first_line(argv: list[str]) -> str:
    try:
        return run(argv).strip().splitlines()[0]
    except (RuntimeError, OSError, IndexError):
        return "unknown"


def environment_info() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = 0
    with contextlib.suppress(OSError, ValueError):
        memory = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    dirty = run(["git", "-C", PROJECT_DIR, "status", "--porcelain", "--", "src"]).strip()
    return {
        "host": platform.node(),
        "kernel": platform.release(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gib": round(memory / 2**30, 1),
        "python": platform.python_version(),
        "vmkeep": _first_line([str(VMKEEP), "--version"]),
        "vmkeep_commit": run(["git", "-C", PROJECT_DIR, "rev-parse", "--short", "HEAD"]).strip(),
        "vmkeep_src_modified": bool(dirty),
        "restic": _first_line(["restic", "version"]),
        "borg": _first_line(["borg", "--version"]),
        "qemu": _first_line(["qemu-img", "--version"]),
    }


SETTINGS = {
    "vmkeep": "fixed-size chunks (the sizes swept), zstd level 3 (unless swept), AES-256-GCM, "
    "keyed BLAKE3 ids, reads only allocated data of the virtual disk (plain qcow2 clusters "
    "straight from the file, the rest through qemu-nbd), "
    f"{max(4, CPUS * 2)} worker threads (its default) on {CPUS} CPUs",
    "restic": "repository v2, compression auto (zstd fastest), content-defined chunks "
    "512 KiB-8 MiB (avg 1 MiB), AES-256-CTR + Poly1305, SHA-256 ids; reads the qcow2 file",
    "borg": "1.2 repokey: AES-256-CTR + HMAC-SHA256, compression lz4, buzhash chunks "
    "512 KiB-8 MiB (avg 2 MiB), single-threaded; reads the qcow2 file",
}


# -- summarising -----------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarise(name: str, reps: list[ToolResult], statistic: str) -> dict[str, Any]:
    """What the tables show, over the repetitions: their median, or their minimum (the run
    least disturbed by the rest of the machine)."""
    pick = min if statistic == "min" else _median

    def med(get: Callable[[ToolResult], float | None]) -> float | None:
        values = [v for v in (get(r) for r in reps) if v is not None]
        return round(pick(values), 3) if values else None

    return {
        "name": name,
        "first_s": med(lambda r: r.first.seconds),
        "first_cpu_s": med(lambda r: r.first.cpu_seconds),
        "second_s": med(lambda r: r.second.seconds),
        "reread_s": med(lambda r: r.reread.seconds if r.reread else r.second.seconds),
        "restore_s": med(lambda r: r.restore.seconds),
        "restore_cpu_s": med(lambda r: r.restore.cpu_seconds),
        "total_s_runs": [r.first.seconds + r.second.seconds + r.restore.seconds for r in reps],
        "total_cpu_s_runs": [
            round(r.first.cpu_seconds + r.second.cpu_seconds + r.restore.cpu_seconds, 2)
            for r in reps
        ],
        "stored_mib": med(lambda r: r.stored_bytes / MIB),
        "peak_rss_mib": max(
            m.peak_rss_mib
            for r in reps
            for m in (r.first, r.second, r.restore, r.reread, r.changed)
            if m is not None
        ),
        "background_max": max(
            m.background_cpu_share
            for r in reps
            for m in (r.first, r.second, r.restore, r.reread)
            if m is not None
        ),
        "changed_s": med(lambda r: r.changed.seconds if r.changed else None),
        "changed_new_mib": med(
            lambda r: r.changed_new_bytes / MIB if r.changed_new_bytes is not None else None
        ),
        "changed_stored_mib": med(
            lambda r: r.changed_stored_bytes / MIB if r.changed_stored_bytes is not None else None
        ),
        "notes": sorted({n for r in reps for n in r.notes}),
    }


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def results_table(rows: list[dict[str, Any]], disk: TestDisk, how: str) -> Table:
    virtual, file_size = disk.virtual_size / MIB, disk.file_size / MIB
    table = Table(
        title=f"test disk: {virtual / 1024:.0f} GiB virtual, qcow2 file {file_size:.0f} MiB, "
        f"{disk.data_bytes / MIB:.0f} MiB of files",
        caption=f"s = wall seconds incl. the sync after the command ({how}); "
        "CPU s = user + system of the process tree; MiB/s of the first backup over the virtual "
        "size / over the qcow2 file size; other load = the highest share of the machine's CPU "
        "that other processes used during one of the row's commands (noise)",
    )
    for header in (
        "tool / chunk",
        "1st backup s",
        "1st CPU s",
        "MiB/s virt / file",
        "2nd backup s",
        "2nd re-read s",
        "restore s",
        "stored MiB",
        "peak RSS MiB",
        f"after {CHANGED_WRITES}x4K: new / stored MiB",
        "other load",
    ):
        table.add_column(header, justify="left" if header.startswith("tool") else "right")
    for row in rows:
        first = row["first_s"]
        changed = (
            "-"
            if row["changed_new_mib"] is None
            else f"{row['changed_new_mib']:.0f} / {row['changed_stored_mib']:.0f}"
        )
        table.add_row(
            row["name"],
            _fmt(first),
            _fmt(row["first_cpu_s"]),
            f"{virtual / first:.0f} / {file_size / first:.0f}",
            _fmt(row["second_s"]),
            _fmt(row["reread_s"]),
            _fmt(row["restore_s"]),
            _fmt(row["stored_mib"], 0),
            _fmt(row["peak_rss_mib"], 0),
            changed,
            f"{row['background_max'] * 100:.0f}%",
        )
    return table


def ratios(rows: list[dict[str, Any]]) -> tuple[Table | None, list[dict[str, Any]]]:
    """vmkeep / restic and vmkeep / borg, per vmkeep chunk size."""
    others = {r["name"]: r for r in rows if not r["name"].startswith("vmkeep")}
    if not others:
        return None, []
    columns = [
        ("1st", "first_s"),
        ("1st CPU", "first_cpu_s"),
        ("2nd", "second_s"),
        ("2nd re-read", "reread_s"),
        ("restore", "restore_s"),
        ("stored", "stored_mib"),
        ("peak RSS", "peak_rss_mib"),
    ]
    table = Table(title="ratios: vmkeep / other tool (below 1: vmkeep faster or smaller)")
    table.add_column("vmkeep vs")
    for label, _ in columns:
        table.add_column(label, justify="right")
    found = []
    for row in rows:
        if not row["name"].startswith("vmkeep"):
            continue
        for other_name, other in others.items():
            values = {key: (row[key] / other[key] if other[key] else None) for _, key in columns}
            # vmkeep's "2nd re-read" is its plain second run: it has no files cache to skip
            values["reread_s"] = row["second_s"] / other["reread_s"] if other["reread_s"] else None
            found.append({"vmkeep": row["name"], "other": other_name, **values})
            table.add_row(
                f"{row['name']} / {other_name}",
                *(_fmt(values[key], 2) for _, key in columns),
            )
    return table, found


def _spread(values: list[float]) -> float:
    """(max - min) / median, as a share."""
    return (max(values) - min(values)) / statistics.median(values) if len(values) > 1 else 0.0


def chunk_verdict(rows: list[dict[str, Any]], statistic: str) -> list[str]:
    """Which vmkeep configuration (chunk size) wins: by wall time and CPU time of first +
    second backup + restore, by repository size and by the cost of small changes. Margins
    smaller than the run-to-run spread of the repetitions are called out as noise."""
    sweep = [r for r in rows if r["name"].startswith("vmkeep")]
    if len(sweep) < 2:
        return []
    pick = min if statistic == "min" else statistics.median
    lines = []

    def report(
        label: str, key: Callable[[dict[str, Any]], float], unit: str, runs: str | None = None
    ) -> None:
        ranked = sorted(sweep, key=key)
        best, runner = ranked[0], ranked[1]
        margin = (key(runner) - key(best)) / key(runner) if key(runner) else 0.0

        def short(r: dict[str, Any]) -> str:
            return str(r["name"]).removeprefix("vmkeep ")

        others = ", ".join(f"{short(r)} {key(r):.1f}" for r in ranked[1:])
        line = (
            f"{label}: [bold]{short(best)}[/] ({key(best):.1f} {unit}; {others}); "
            f"{margin:.0%} better than the runner-up"
        )
        if runs is not None:
            spread = max(_spread(r[runs]) for r in sweep)
            if len(best[runs]) > 1:
                line += f" (run-to-run spread up to {spread:.0%}"
                line += ": within noise)" if margin < spread else ")"
        lines.append(line)

    report(
        "wall time, 1st + 2nd backup + restore",
        lambda r: pick(r["total_s_runs"]),
        "s",
        "total_s_runs",
    )
    report(
        "CPU time, 1st + 2nd backup + restore",
        lambda r: pick(r["total_cpu_s_runs"]),
        "s",
        "total_cpu_s_runs",
    )
    report("first backup wall time", lambda r: float(r["first_s"]), "s")
    report("repository size", lambda r: float(r["stored_mib"]), "MiB")
    if all(r["changed_stored_mib"] is not None for r in sweep):
        report(
            f"stored after {CHANGED_WRITES} scattered 4 KiB writes",
            lambda r: float(r["changed_stored_mib"]),
            "MiB",
        )
    return lines


# -- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark vmkeep's repository against restic and borg.",
        epilog="See the module docstring (top of this file) and bench/README.md.",
    )
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SIZE} disk, {QUICK_DATA}")
    parser.add_argument("--size", default=None, help=f"virtual disk size (default {FULL_SIZE})")
    parser.add_argument("--data", default=None, help=f"data on the disk (default {FULL_DATA})")
    parser.add_argument("--chunk-sizes", default="1M,2M,4M", help="vmkeep chunk sizes to sweep")
    parser.add_argument(
        "--compression-levels",
        default=str(DEFAULT_LEVEL),
        help=f"vmkeep zstd levels to sweep too, e.g. 1,3 (default {DEFAULT_LEVEL})",
    )
    parser.add_argument("--tools", default="restic,borg", help="others to compare ('' for none)")
    parser.add_argument("--repeat", type=int, default=1, help="repetitions of everything")
    parser.add_argument(
        "--statistic",
        choices=("median", "min"),
        default="median",
        help="over the repetitions: median, or min (the least disturbed run on a busy host)",
    )
    parser.add_argument("--no-drop-caches", action="store_true", help="keep the page cache")
    parser.add_argument(
        "--quiet-below",
        type=float,
        default=0.10,
        help="before each command, wait until the machine's CPU use is below this share",
    )
    parser.add_argument(
        "--settle-timeout", type=float, default=60, help="longest wait for that, s (0: never)"
    )
    parser.add_argument("--work-dir", type=Path, default=Path("/var/tmp"), help="for repos")  # noqa: S108
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="test disks")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)

    size = args.size or (QUICK_SIZE if args.quick else FULL_SIZE)
    data = args.data or (QUICK_DATA if args.quick else FULL_DATA)
    chunk_sizes = [c.strip() for c in args.chunk_sizes.split(",") if c.strip()]
    levels = [int(v) for v in args.compression_levels.split(",") if v.strip()]
    tools = ensure_tools([t.strip() for t in args.tools.split(",") if t.strip()])
    if not VMKEEP.exists():
        console.print(f"[red]{VMKEEP} is missing: run `bash scripts/setup.sh` first[/]")
        return 2
    disk = build_disk(size, data, cache_dir=args.cache_dir)
    prep = Preparation(not args.no_drop_caches, args.quiet_below, args.settle_timeout)
    env_info = environment_info()
    console.print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {env_info['cpus']} CPUs ({env_info['cpu']}), "
        f"{env_info['memory_gib']} GiB RAM, kernel {env_info['kernel']}"
    )
    console.print(
        f"{env_info['vmkeep']} (commit {env_info['vmkeep_commit']}"
        f"{', src/ modified' if env_info['vmkeep_src_modified'] else ''}), "
        f"{env_info['restic']}, {env_info['borg']}"
    )
    console.print(
        "page cache: dropped before every measured command"
        if prep.drops
        else "page cache: [yellow]NOT dropped[/] (not root, or --no-drop-caches): reads may "
        "come from memory"
    )
    if args.settle_timeout > 0:
        console.print(
            f"before each command: wait (up to {args.settle_timeout:.0f} s) until other "
            f"processes use less than {args.quiet_below:.0%} of the CPUs"
        )

    work = Path(tempfile.mkdtemp(prefix="vmkeep-bench-", dir=args.work_dir))
    password_file = work / "password"
    password_file.write_text(PASSWORD)
    password_file.chmod(0o600)
    started = time.monotonic()
    results: dict[str, list[ToolResult]] = {}
    try:
        ctx = Context(disk, work, password_file, prep, make_overlay(disk, work))
        for rep in range(args.repeat):
            for chunk_size in chunk_sizes:
                for level in levels:
                    name = f"vmkeep {chunk_size}"
                    if levels != [DEFAULT_LEVEL]:
                        name += f" zstd-{level}"
                    _progress(name, rep, args.repeat)
                    results.setdefault(name, []).append(
                        bench_vmkeep(ctx, name, chunk_size, level, rep)
                    )
            for tool in tools:
                _progress(tool, rep, args.repeat)
                bench = bench_restic if tool == "restic" else bench_borg
                results.setdefault(tool, []).append(bench(ctx, rep))
    finally:
        if args.keep:
            console.print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    rows = [summarise(name, reps, args.statistic) for name, reps in results.items()]
    how = (
        "one run"
        if args.repeat == 1
        else f"{'fastest' if args.statistic == 'min' else 'median'} of {args.repeat} runs"
    )
    console.print()
    console.print(results_table(rows, disk, how))
    ratio_table, ratio_rows = ratios(rows)
    if ratio_table is not None:
        console.print(ratio_table)
    verdict = chunk_verdict(rows, args.statistic)
    if verdict:
        console.print("[bold]vmkeep configurations[/] (chunk size):")
        for line in verdict:
            console.print(f"  {line}")
    console.print("[bold]settings[/] (each tool's defaults):")
    for tool in ["vmkeep", *tools]:
        console.print(f"  {tool}: {SETTINGS[tool]}")
    for row in rows:
        for note in row["notes"]:
            console.print(f"  note: {note}")
    _vmkeep_phases(results)
    elapsed = time.monotonic() - started

    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS_DIR / f"{stamp}-{'quick' if args.quick else 'full'}.json"
    out.write_text(
        json.dumps(
            {
                "date": stamp,
                "elapsed_seconds": round(elapsed, 1),
                "environment": env_info,
                "page_cache_dropped": prep.drops,
                "quiet_below": args.quiet_below,
                "settle_timeout": args.settle_timeout,
                "disk": asdict(disk),
                "settings": {t: SETTINGS[t] for t in ["vmkeep", *tools]},
                "statistic": args.statistic,
                "summary": rows,
                "summary_median": [
                    summarise(name, reps, "median") for name, reps in results.items()
                ],
                "ratios": ratio_rows,
                "chunk_verdict": verdict,
                "runs": {name: [asdict(r) for r in reps] for name, reps in results.items()},
            },
            indent=2,
        )
        + "\n"
    )
    console.print(f"benchmark took {elapsed:.0f} s; results in {out.relative_to(PROJECT_DIR)}")
    return 0


def _progress(name: str, rep: int, repeat: int) -> None:
    suffix = f" (repetition {rep + 1}/{repeat})" if repeat > 1 else ""
    console.print(f"[dim]benchmarking {name}{suffix}...[/]")


def _vmkeep_phases(results: dict[str, list[ToolResult]]) -> None:
    """Where vmkeep's backup time goes: the chunk transfer it reports vs the rest (startup,
    unlock, cache, qemu-nbd, index and manifest), in the repetition with the fastest first
    backup."""
    lines = []
    for name, reps in results.items():
        if not name.startswith("vmkeep"):
            continue
        r = min(reps, key=lambda rep: rep.first.seconds)
        parts = []
        for m in (r.first, r.second):
            transfer = m.output["transfer_seconds"]
            parts.append(
                f"{m.what} {m.seconds:.1f} s = transfer {transfer:.1f} s + other "
                f"{m.seconds - transfer:.1f} s (cpu {m.user_seconds + m.system_seconds:.1f} s)"
            )
        lines.append(f"  {name}: " + "; ".join(parts))
    if lines:
        console.print("[bold]vmkeep phases[/]:")
        for line in lines:
            console.print(line)


if __name__ == "__main__":
    sys.exit(main())
