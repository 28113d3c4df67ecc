"""Snapshot pause and revert benchmark, on a running lab VM with a heartbeat.

    sudo .venv/bin/python bench/snapshot_bench.py                 # 256 MiB guest, 5 rounds
    sudo .venv/bin/python bench/snapshot_bench.py --memory 1G --rounds 3

The lab VM is made with ``vmkeep lab create --heartbeat``: its guest prints its uptime every
10 ms on its second serial port, a Unix socket on the host. This script reads that socket and
stamps every line with the host's monotonic clock on arrival. The longest gap between two
lines while a command runs is the longest the guest stood still as seen from outside (the
guest's own clock stops while QEMU pauses it, so only the host can see a pause). The same
measurement over an idle stretch gives the baseline: under TCG on two shared CPUs the
heartbeat itself jitters.

Per round: ``snapshot create`` disk-only (quiesced when the agent answers, as by default),
``snapshot create --memory``, ``snapshot revert`` to the memory snapshot, ``snapshot revert``
to the disk-only one (it boots the guest), then both deleted. The revert columns are the
command's wall time and the downtime vmkeep reports (from stopping the VM until it runs
again).

Targets from the issue: longest pause during a disk-only create <= 50 ms; revert of a memory
snapshot <= 3 s. Results: printed and bench/results/<time>-snapshot.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

BENCH_DIR = Path(__file__).resolve().parent
VMKEEP = BENCH_DIR.parent / ".venv" / "bin" / "vmkeep"
VM = "vmkeep-bench-snap"
TARGET_PAUSE = 0.050
TARGET_MEMORY_REVERT = 3.0


class Heartbeat:
    """Reads the guest's heartbeat socket in a thread, stamping each line on arrival.
    Reconnects when QEMU goes away (a revert starts a new QEMU)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stamps: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._lock = threading.Lock()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                    conn.connect(str(self.path))
                    conn.settimeout(0.2)
                    self._read(conn)
            except OSError:
                time.sleep(0.01)

    def _read(self, conn: socket.socket) -> None:
        pending = b""
        while not self._stop.is_set():
            try:
                data = conn.recv(4096)
            except TimeoutError:
                continue
            if not data:
                return
            now = time.monotonic()
            pending += data
            lines = pending.count(b"\n")
            pending = pending.rsplit(b"\n", 1)[-1]
            with self._lock:
                self.stamps.extend([now] * lines)

    def longest_gap(self, start: float, end: float) -> float | None:
        """The longest time without a line that overlaps [start, end]; None if no line came
        before start (not connected yet)."""
        with self._lock:
            stamps = list(self.stamps)
        before = [t for t in stamps if t <= start]
        if not before:
            return None
        inside = [before[-1], *(t for t in stamps if start < t <= end)]
        after = next((t for t in stamps if t > end), None)
        if after is not None:
            inside.append(after)
        if len(inside) < 2:
            return None
        return max(b - a for a, b in itertools.pairwise(inside))

    def wait_for_lines(self, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        seen = len(self.stamps)
        while len(self.stamps) < seen + count:
            if time.monotonic() > deadline:
                raise RuntimeError("no heartbeat from the guest")
            time.sleep(0.05)


def vmkeep(*args: str) -> dict[str, Any]:
    done = subprocess.run(
        [str(VMKEEP), *args, "--json"], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"vmkeep {' '.join(args)} failed: {done.stderr.strip()}")
    return json.loads(done.stdout)  # type: ignore[no-any-return]


@contextmanager
def lab_vm(memory: str) -> Iterator[Path]:
    subprocess.run([str(VMKEEP), "lab", "destroy", VM], capture_output=True, check=False)
    created = vmkeep(
        "lab", "create", VM, "--disks", "2", "--disk-size", "256M", "--memory", memory,
        "--heartbeat",
    )  # fmt: skip
    try:
        yield Path(created["vm"]["lab_dir"]) / "heartbeat.sock"
    finally:
        subprocess.run([str(VMKEEP), "lab", "destroy", VM], capture_output=True, check=False)


def timed(beat: Heartbeat, *args: str) -> tuple[dict[str, Any], float, float | None]:
    """Run vmkeep, return its JSON, its wall time and the longest heartbeat gap meanwhile."""
    beat.wait_for_lines(20)
    start = time.monotonic()
    result = vmkeep(*args)
    end = time.monotonic()
    time.sleep(0.5)  # let the line after the command arrive
    return result, end - start, beat.longest_gap(start, end)


def one_round(beat: Heartbeat, number: int) -> dict[str, Any]:
    disk, disk_wall, disk_gap = timed(beat, "snapshot", "create", VM, "--name", f"disk-{number}")
    mem, mem_wall, mem_gap = timed(
        beat, "snapshot", "create", VM, "--name", f"mem-{number}", "--memory"
    )
    revert_mem, revert_mem_wall, _ = timed(beat, "snapshot", "revert", VM, f"mem-{number}")
    revert_disk, revert_disk_wall, _ = timed(beat, "snapshot", "revert", VM, f"disk-{number}")
    for name in (f"mem-{number}", f"disk-{number}"):
        vmkeep("snapshot", "delete", VM, name)
    return {
        "disk_create_s": disk_wall,
        "disk_create_libvirt_s": disk["snapshots"][0]["seconds"],
        "disk_quiesced": disk["snapshots"][0]["quiesced"],
        "disk_pause_s": disk_gap,
        "memory_create_s": mem_wall,
        "memory_create_libvirt_s": mem["snapshots"][0]["seconds"],
        "memory_pause_s": mem_gap,
        "memory_revert_s": revert_mem_wall,
        "memory_revert_reported_s": revert_mem["seconds"],
        "memory_revert_down_s": revert_mem["downtime"],
        "disk_revert_s": revert_disk_wall,
        "disk_revert_down_s": revert_disk["downtime"],
    }


def baseline(beat: Heartbeat, seconds: float) -> float | None:
    beat.wait_for_lines(20)
    start = time.monotonic()
    time.sleep(seconds)
    return beat.longest_gap(start, time.monotonic())


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def report(rounds: list[dict[str, Any]], idle: list[float | None], memory: str) -> Table:
    table = Table(title=f"snapshot pauses and reverts, {memory} guest, {len(rounds)} rounds")
    for column in ("measure", "median", "max", "target"):
        table.add_column(column, justify="left" if column == "measure" else "right")

    def row(label: str, key: str, unit: str, target: str) -> None:
        values = [r[key] for r in rounds if r[key] is not None]
        if unit == "ms":
            table.add_row(label, _ms(statistics.median(values)), _ms(max(values)), target)
        else:
            table.add_row(label, f"{statistics.median(values):.2f}", f"{max(values):.2f}", target)

    idle_values = [v for v in idle if v is not None]
    table.add_row(
        "idle heartbeat gap, ms (baseline)",
        _ms(statistics.median(idle_values)),
        _ms(max(idle_values)),
        "",
    )
    row(
        "longest pause, disk-only create, ms", "disk_pause_s", "ms", f"<= {TARGET_PAUSE * 1000:.0f}"
    )
    row("longest pause, memory create, ms", "memory_pause_s", "ms", "")
    row("disk-only create, command s", "disk_create_s", "s", "")
    row("memory create, command s", "memory_create_s", "s", "")
    row("memory revert, command s", "memory_revert_s", "s", f"<= {TARGET_MEMORY_REVERT:.0f}")
    row("memory revert, VM down s", "memory_revert_down_s", "s", "")
    row("disk-only revert (boots), command s", "disk_revert_s", "s", "")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory", default="256M", help="guest RAM (default 256M)")
    parser.add_argument("--rounds", type=int, default=5, help="repetitions (default 5)")
    parser.add_argument("--idle", type=float, default=3.0, help="idle seconds per baseline")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("run as root (libvirt's system connection)", file=sys.stderr)
        return 2
    console = Console()
    with lab_vm(args.memory) as path:
        beat = Heartbeat(path)
        beat.start()
        try:
            rounds, idle = [], []
            for number in range(args.rounds):
                idle.append(baseline(beat, args.idle))
                rounds.append(one_round(beat, number))
                console.print(f"round {number + 1}/{args.rounds} done")
        finally:
            beat.stop()
    console.print(report(rounds, idle, args.memory))
    results = BENCH_DIR / "results"
    results.mkdir(exist_ok=True)
    out = results / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-snapshot.json"
    out.write_text(json.dumps({"memory": args.memory, "idle": idle, "rounds": rounds}, indent=2))
    console.print(f"results in {out.relative_to(BENCH_DIR.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
