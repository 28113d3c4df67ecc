"""qcow2 overlays on the host through qemu-img: reading backing chains, creating overlays,
committing and rebasing images no QEMU has open, removing files, free space.

Images a running QEMU has open are only ever *read* here (``-U``); everything that writes
works on images outside every running VM's chain, which is what qemu-img's own locking also
enforces.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from vmkeep.domain.errors import AlreadyExistsError, ToolError
from vmkeep.domain.snapshots import FreeSpace
from vmkeep.drivers.process import run_tool
from vmkeep.drivers.qemu_img import create_qcow2

log = logging.getLogger(__name__)

# qcow2 v3 ("compat=1.1"), like every disk vmkeep creates: persistent dirty bitmaps need it.
_INFO_TIMEOUT = 60
_WRITE_TIMEOUT = 6 * 3600  # a commit copies up to a whole overlay


@dataclass(frozen=True, slots=True)
class ImageLayer:
    """One image of a backing chain, as qemu-img reports it."""

    path: str
    format: str
    backing: str | None
    actual_size: int | None


def image_chain(path: str) -> list[ImageLayer]:
    """``path`` and the images below it, top first (``qemu-img info --backing-chain -U``,
    which also works on images a running QEMU holds). Raises ToolError if it cannot be read."""
    out = run_tool(
        ["qemu-img", "info", "--output=json", "--backing-chain", "-U", path],
        timeout=_INFO_TIMEOUT,
    )
    entries = json.loads(out)
    if isinstance(entries, dict):
        entries = [entries]
    layers = []
    for index, entry in enumerate(entries):
        below = entries[index + 1].get("filename") if index + 1 < len(entries) else None
        size = entry.get("actual-size")
        layers.append(
            ImageLayer(
                path=str(entry.get("filename", path)),
                format=str(entry.get("format", "raw")),
                backing=str(below) if below else None,
                actual_size=int(size) if isinstance(size, int) else None,
            )
        )
    return layers


def actual_size(path: str) -> int | None:
    """Bytes ``path`` occupies on the host, or None if it is gone or unreadable."""
    if not Path(path).exists():
        return None
    try:
        out = run_tool(["qemu-img", "info", "--output=json", "-U", path], timeout=_INFO_TIMEOUT)
    except ToolError as exc:
        log.debug("no size for %s: %s", path, exc)
        return None
    size = json.loads(out).get("actual-size")
    return int(size) if isinstance(size, int) else None


def create_overlay(path: str, backing: str, backing_format: str) -> None:
    """A new, empty qcow2 overlay at ``path`` on ``backing`` (recorded by absolute path).
    Never overwrites: AlreadyExistsError if ``path`` exists."""
    if Path(path).exists():
        raise AlreadyExistsError(f"{path} already exists")
    create_qcow2(Path(path), backing=Path(backing), backing_format=backing_format)


def commit_offline(top: str, base: str) -> None:
    """Write the data of the overlay ``top`` into ``base``, the image right below it. Both
    must be closed by every QEMU (qemu-img's locks refuse otherwise). ``top`` is left as it
    was, so an interrupted commit loses nothing: ``top`` on top of ``base`` still reads the
    same."""
    run_tool(["qemu-img", "commit", "-q", "-f", "qcow2", "-b", base, top], timeout=_WRITE_TIMEOUT)


def rebase_unsafe(image: str, new_backing: str, backing_format: str) -> None:
    """Point ``image`` at ``new_backing`` without copying data: only correct when the new
    backing reads exactly like the old one (after a commit into it)."""
    run_tool(
        [
            "qemu-img",
            "rebase",
            "-q",
            "-u",
            "-f",
            "qcow2",
            "-F",
            backing_format,
            "-b",
            str(Path(new_backing).absolute()),
            image,
        ],
        timeout=_INFO_TIMEOUT,
    )


def file_identity(path: str) -> tuple[int, int] | None:
    """``(device, inode)`` of ``path``, so two spellings of one file are recognised."""
    try:
        info = Path(path).stat()
    except OSError:
        return None
    return info.st_dev, info.st_ino


def remove_images(paths: Iterable[str], protected: set[tuple[int, int]]) -> list[str]:
    """Remove the regular files ``paths`` and return those removed. Missing files are
    skipped; so are block devices and any file in ``protected`` (by identity), with a warning:
    a file that is still needed must never go, whatever name it was reached by."""
    removed = []
    for path in paths:
        try:
            info = Path(path).lstat()
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(info.st_mode):
            log.warning("not removing %s: not a regular file", path)
            continue
        if (info.st_dev, info.st_ino) in protected:
            log.warning("not removing %s: it is still in use", path)
            continue
        Path(path).unlink(missing_ok=True)
        removed.append(path)
    return removed


def free_space(directory: str) -> FreeSpace:
    """Free space (for unprivileged users, as root's reserve is not the VMs' to fill) on the
    filesystem of ``directory``, named by its mount point."""
    try:
        stats = os.statvfs(directory)
    except OSError as exc:
        raise ToolError(f"cannot inspect {directory}: {exc.strerror}") from exc
    return FreeSpace(filesystem=_mount_point(directory), free=stats.f_bavail * stats.f_frsize)


def _mount_point(directory: str) -> str:
    path = Path(directory).resolve()
    device = path.stat().st_dev
    while path.parent != path and path.parent.stat().st_dev == device:
        path = path.parent
    return str(path)
