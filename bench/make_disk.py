"""Build (once) and cache the benchmark's test disk: an ext4 filesystem holding real files
copied from /usr, as a thin qcow2 v3 image.

    .venv/bin/python bench/make_disk.py                        # 8 GiB disk, 3 GiB of data
    .venv/bin/python bench/make_disk.py --size 2G --data 500M  # the --quick disk
    .venv/bin/python bench/make_disk.py --rebuild              # build again even if cached

The disk is cached under /var/tmp/vmkeep-bench/ (``--cache-dir``), named after its size and
data amount, with a ``.json`` beside it describing how it was built. It is rebuilt only when
missing or when ``--rebuild`` is given.

How: the files of /usr are ordered by a hash of their path (a deterministic, unbiased mix of
binaries, libraries, text and Python files) and taken in that order until ``--data`` bytes
are reached. They are hard-linked (copied if linking fails) into a staging directory, which
``mkfs.ext4 -d`` turns into a filesystem of ``--size`` in a sparse raw file, which
``qemu-img convert -O qcow2 -o compat=1.1`` turns into a thin qcow2. Staging and raw file are
deleted afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_CACHE_DIR = Path("/var/tmp/vmkeep-bench")  # noqa: S108 - root-owned cache dir
DEFAULT_SOURCE = Path("/usr")
FULL_SIZE, FULL_DATA = "8G", "3G"
QUICK_SIZE, QUICK_DATA = "2G", "500M"
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """``8G``, ``500M``, ``4096`` (binary units) to bytes."""
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = text[-1:] if text[-1:] in _UNITS else ""
    number = text[: len(text) - len(unit)]
    return int(float(number) * _UNITS[unit])


@dataclass(frozen=True)
class TestDisk:
    """A built test disk and how it was made."""

    path: str
    virtual_size: int
    file_size: int
    data_bytes: int
    files: int
    source: str
    built: str
    build_seconds: float


def _pick_files(source: Path, budget: int) -> tuple[list[tuple[Path, int]], list[Path]]:
    """Regular files of ``source`` in path-hash order up to ``budget`` bytes, and symlinks."""
    files: list[tuple[bytes, Path, int]] = []
    links: list[Path] = []
    for root, dirs, names in os.walk(source):
        dirs.sort()
        for name in sorted(names):
            path = Path(root) / name
            try:
                info = path.lstat()
            except OSError:
                continue
            if stat.S_ISLNK(info.st_mode):
                links.append(path)
            elif stat.S_ISREG(info.st_mode) and os.access(path, os.R_OK):
                key = hashlib.blake2b(str(path).encode(), digest_size=8).digest()
                files.append((key, path, info.st_size))
    files.sort()
    picked: list[tuple[Path, int]] = []
    total = 0
    for _key, path, size in files:
        if total >= budget:
            break
        if total + size > budget * 1.02 and size > 1 << 20:
            continue  # a big file would overshoot the budget by more than 2%: skip it
        picked.append((path, size))
        total += size
    return picked, links


def _stage(source: Path, staging: Path, budget: int) -> tuple[int, int]:
    """Fill ``staging`` with a ``budget``-byte subset of ``source``; returns (bytes, files)."""
    picked, links = _pick_files(source, budget)
    total = 0
    for path, size in picked:
        target = staging / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK):
                raise
            shutil.copy2(path, target)
        total += size
    kept = {target.parent for target in (staging / p.relative_to(source) for p, _ in picked)}
    for link in links:  # symlinks cost nothing; keep those whose directory we kept
        target = staging / link.relative_to(source)
        if target.parent in kept and not target.exists():
            with contextlib.suppress(OSError):
                target.symlink_to(link.readlink())
    return total, len(picked)


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr}")


def disk_path(cache_dir: Path, size: str, data: str) -> Path:
    return cache_dir / f"disk-{parse_size(size) >> 20}M-{parse_size(data) >> 20}M.qcow2"


def build_disk(
    size: str = FULL_SIZE,
    data: str = FULL_DATA,
    *,
    cache_dir: Path = DEFAULT_CACHE_DIR,
    source: Path = DEFAULT_SOURCE,
    rebuild: bool = False,
    log: bool = True,
) -> TestDisk:
    """The cached test disk for ``size``/``data``, built first if needed."""
    virtual, budget = parse_size(size), parse_size(data)
    if budget >= virtual * 0.9:
        raise SystemExit(f"--data {data} does not fit in a {size} filesystem")
    path = disk_path(cache_dir, size, data)
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists() and not rebuild:
        return TestDisk(**json.loads(meta_path.read_text()))
    for tool in ("mkfs.ext4", "qemu-img"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    cache_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    staging = cache_dir / f"staging-{os.getpid()}"
    raw = path.with_suffix(f".raw.{os.getpid()}")
    partial = path.with_suffix(f".partial.{os.getpid()}")
    try:
        if log:
            print(f"building {path}: {data} from {source} in a {size} ext4 filesystem", flush=True)
        staging.mkdir()
        data_bytes, files = _stage(source, staging, budget)
        with raw.open("wb") as handle:
            handle.truncate(virtual)
        _run(["mkfs.ext4", "-q", "-F", "-L", "vmkeep-bench", "-d", str(staging), str(raw)])
        _run(["qemu-img", "convert", "-O", "qcow2", "-o", "compat=1.1", str(raw), str(partial)])
        partial.replace(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        raw.unlink(missing_ok=True)
        partial.unlink(missing_ok=True)
    disk = TestDisk(
        path=str(path),
        virtual_size=virtual,
        file_size=path.stat().st_size,
        data_bytes=data_bytes,
        files=files,
        source=str(source),
        built=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        build_seconds=round(time.monotonic() - started, 1),
    )
    meta_path.write_text(json.dumps(asdict(disk), indent=2) + "\n")
    if log:
        print(
            f"built in {disk.build_seconds:.0f} s: {files} files, {data_bytes / 2**20:.0f} MiB "
            f"of data, qcow2 file {disk.file_size / 2**20:.0f} MiB",
            flush=True,
        )
    return disk


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default=FULL_SIZE, help="virtual disk size (default 8G)")
    parser.add_argument("--data", default=FULL_DATA, help="bytes of files to copy (default 3G)")
    parser.add_argument(
        "--quick", action="store_true", help=f"--size {QUICK_SIZE} --data {QUICK_DATA}"
    )
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--rebuild", action="store_true", help="build even if cached")
    args = parser.parse_args(argv)
    size, data = (QUICK_SIZE, QUICK_DATA) if args.quick else (args.size, args.data)
    disk = build_disk(
        size, data, cache_dir=args.cache_dir, source=args.source, rebuild=args.rebuild
    )
    json.dump(asdict(disk), sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
