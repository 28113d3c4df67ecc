"""Disk images through qemu-img and mkfs.ext4: creating lab disks, reading backing chains."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from vmkeep.domain.errors import AlreadyExistsError, ToolError
from vmkeep.domain.inventory import BackingImage
from vmkeep.drivers.process import run_tool

# qcow2 v3 ("compat=1.1") is required for persistent dirty bitmaps, which incremental backups
# depend on; say so explicitly rather than trusting qemu-img's default.
_QCOW2_OPTIONS = "compat=1.1"


def create_qcow2(
    path: Path, size: int | None = None, *, backing: Path | None = None, backing_format: str = ""
) -> None:
    """``qemu-img create`` of a qcow2 v3 image: ``size`` bytes, or an overlay on ``backing``
    (recorded by absolute path). The one place that knows how vmkeep makes qcow2 images."""
    argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-o", _QCOW2_OPTIONS]
    if backing is not None:
        argv += ["-F", backing_format, "-b", str(backing.absolute())]
    argv.append(str(path))
    if size is not None:
        argv.append(str(size))
    run_tool(argv, timeout=120)


class QemuImgTool:
    """DiskImageTool over qemu-img (and mkfs.ext4 for filled disks)."""

    def create_disk(self, path: Path, size: int, fill_from: Path | None = None) -> None:
        """See ports.DiskImageTool.create_disk. Builds under a temporary name, then renames."""
        if path.exists():
            raise AlreadyExistsError(f"{path} already exists")
        if fill_from is not None and not fill_from.is_dir():
            raise ToolError(f"cannot fill a disk from {fill_from}: not a directory")
        partial = path.with_name(path.name + ".partial")
        raw = path.with_name(path.name + ".raw.partial")
        try:
            if fill_from is None:
                create_qcow2(partial, size)
            else:
                with raw.open("wb") as handle:
                    handle.truncate(size)
                # Initialise inode tables and journal now, so the guest kernel does not
                # write them lazily later and dirty blocks behind the tests' backs.
                run_tool(
                    [
                        "mkfs.ext4",
                        "-q",
                        "-F",
                        "-E",
                        "lazy_itable_init=0,lazy_journal_init=0",
                        "-d",
                        str(fill_from),
                        str(raw),
                    ]
                )
                run_tool(
                    [
                        "qemu-img",
                        "convert",
                        "-q",
                        "-f",
                        "raw",
                        "-O",
                        "qcow2",
                        "-o",
                        _QCOW2_OPTIONS,
                        str(raw),
                        str(partial),
                    ]
                )
            partial.rename(path)
        finally:
            for leftover in (partial, raw):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()


def read_backing_chain(path: str) -> tuple[BackingImage, ...]:
    """The images below ``path``, nearest first, as qemu-img sees them.

    Uses ``-U`` (no lock) so it also works on images a running QEMU holds open.
    """
    out = run_tool(["qemu-img", "info", "--output=json", "--backing-chain", "-U", path], timeout=30)
    layers = json.loads(out)
    if isinstance(layers, dict):
        layers = [layers]
    return tuple(
        BackingImage(source=str(layer.get("filename", "")), format=layer.get("format"))
        for layer in layers[1:]
    )
