"""The floor under any full backup of a running VM's disk on this machine: reading the
backup job's NBD export, and reading it while compressing with zstd level 3.

A pull-mode backup job (no checkpoint) exports one disk; four libnbd connections read every
allocated 1 MiB chunk once, in order, four in flight (vmkeep's reading). ``compress=True``
also compresses each chunk with vmkeep's zstd parameters, and does nothing else: no hashing,
no encryption, nothing written. A tool that compresses to zstd-3's ratio cannot do a full
backup faster than the second figure on the same machine, whatever else it does; the first
is what QEMU's export alone costs (virtnbdbackup's time is mostly this plus its writes).

Used by vm_bench.py; on its own: ``sudo .venv/bin/python bench/export_floor.py VM [DISK]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path

import libvirt
import nbd
import zstandard

from vmkeep.repository.codec import compression_parameters

CHUNK = 1 << 20
CONNECTIONS = 4
_STATE_HOLE = 1  # base:allocation: bit 0 = hole (reads as zeros either way)
_STATE_ZERO = 2


@dataclass(frozen=True)
class Floor:
    """One pass over the export: wall seconds of the reading, CPU seconds of this process
    and of the VM's QEMU during it, and the data read."""

    compress: bool
    seconds: float
    own_cpu_s: float
    qemu_cpu_s: float
    read_mib: float


def measure_floor(vm: str, disk: str, *, compress: bool) -> Floor:
    """Begin a pull-mode backup of ``disk`` of the running ``vm`` (no checkpoint), read every
    allocated chunk (and compress it if asked), abort the job. The caller drops the page
    cache first if it wants a cold read."""
    conn = libvirt.open("qemu:///system")
    domain = conn.lookupByName(vm)
    workdir = Path(tempfile.mkdtemp(prefix="vmkeep-floor-", dir="/var/tmp"))
    _hand_to_qemu(workdir)
    socket = workdir / "nbd.sock"
    others = [t for t in _disk_targets(domain) if t != disk]
    xml = (
        f"<domainbackup mode='pull'><server transport='unix' socket='{socket}'/><disks>"
        + "".join(f"<disk name='{t}' backup='no'/>" for t in others)
        + f"<disk name='{disk}' backup='yes' type='file'>"
        f"<scratch file='{workdir / 'scratch.qcow2'}'/></disk></disks></domainbackup>"
    )
    domain.backupBegin(xml, None, 0)
    try:
        handles = [_connect(socket, disk) for _ in range(CONNECTIONS)]
        try:
            chunks = _allocated_chunks(handles[0])
            size = handles[0].get_size()
            qemu_before, own_before = _qemu_cpu(vm), os.times()
            started = time.monotonic()
            _read_all(handles, chunks, size, compress)
            seconds = time.monotonic() - started
            qemu_after, own_after = _qemu_cpu(vm), os.times()
        finally:
            for handle in handles:
                handle.shutdown()
    finally:
        domain.abortJob()
        shutil.rmtree(workdir, ignore_errors=True)
        conn.close()
    own = (own_after.user - own_before.user) + (own_after.system - own_before.system)
    read = sum(min(CHUNK, size - n * CHUNK) for n in chunks)
    return Floor(
        compress,
        round(seconds, 2),
        round(own, 2),
        round(qemu_after - qemu_before, 2),
        round(read / CHUNK, 1),
    )


def _hand_to_qemu(workdir: Path) -> None:
    """QEMU (as libvirt-qemu, where that user exists) must create the socket and scratch."""
    with contextlib.suppress(LookupError, PermissionError):
        shutil.chown(workdir, "libvirt-qemu", "libvirt-qemu")
    workdir.chmod(0o700)


def _disk_targets(domain: libvirt.virDomain) -> list[str]:
    root = ET.fromstring(domain.XMLDesc(0))  # noqa: S314 - the local libvirtd's own XML
    return [
        target.get("dev", "")
        for disk in root.iter("disk")
        if disk.get("device", "disk") == "disk" and (target := disk.find("target")) is not None
    ]


def _connect(socket: Path, export: str) -> nbd.NBD:
    handle = nbd.NBD()
    handle.set_pread_initialize(False)
    handle.add_meta_context("base:allocation")
    handle.set_export_name(export)
    handle.connect_unix(str(socket))
    return handle


def _allocated_chunks(handle: nbd.NBD) -> list[int]:
    """Numbers of the chunks that hold any range the server does not report as zeros."""
    size, offset = handle.get_size(), 0
    found: set[int] = set()

    def collect(_meta: str, start: int, entries: list[int], _err: object) -> int:
        nonlocal offset
        position = start
        for i in range(0, len(entries), 2):
            length, flags = entries[i], entries[i + 1]
            if not flags & _STATE_ZERO and length:
                found.update(range(position // CHUNK, (position + length - 1) // CHUNK + 1))
            position += length
        offset = position
        return 0

    while offset < size:
        handle.block_status(min(1 << 30, size - offset), offset, collect)
    return sorted(found)


def _read_all(handles: list[nbd.NBD], chunks: list[int], size: int, compress: bool) -> None:
    pending = iter(chunks)
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker(handle: nbd.NBD) -> None:
        compressor = zstandard.ZstdCompressor(compression_params=compression_parameters(3))
        try:
            while True:
                with lock:
                    number = next(pending, None)
                if number is None:
                    return
                data = handle.pread(min(CHUNK, size - number * CHUNK), number * CHUNK)
                if compress:
                    compressor.compress(data)
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(h,)) for h in handles]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def _qemu_cpu(vm: str) -> float:
    """User + system CPU seconds of the VM's QEMU process so far."""
    pid = int(Path(f"/run/libvirt/qemu/{vm}.pid").read_text())
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("vm")
    parser.add_argument("disk", nargs="?", default="vdb")
    args = parser.parse_args()
    for compress in (False, True):
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        print(json.dumps(asdict(measure_floor(args.vm, args.disk, compress=compress))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
