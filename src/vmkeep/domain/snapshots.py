"""Snapshots as vmkeep sees them: values, the facts vmkeep records with each snapshot, names
of the files it creates, expiry, the free-space estimate and the tree view.

An external snapshot of a disk has two images: the *frozen* image, which held the disk at the
snapshot moment and is never written again while the snapshot exists, and the *overlay* put
on top of it, where the guest's writes went afterwards. Reverting puts a new overlay on the
frozen image; deleting merges images whose content no snapshot needs any more (see
``snapshot_chain``).
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePath

from vmkeep.domain.errors import UsageError
from vmkeep.domain.inventory import DiskDevice, DiskInfo, SourceType

DESCRIPTION_PREFIX = "vmkeep snapshot "
"""Descriptions starting with this carry vmkeep's facts as JSON after it."""

FACTS_VERSION = 1
MAX_NAME_BYTES = 200


class SnapshotKind(enum.StrEnum):
    """What a snapshot can bring back: the disks only, or the disks and the running guest."""

    DISK = "disk"
    MEMORY = "memory"
    INTERNAL = "internal"
    """Inside the qcow2 images (made by other tools); vmkeep lists but does not manage them."""


class RevertState(enum.StrEnum):
    """How a VM is left after a revert."""

    RUNNING = "running"
    PAUSED = "paused"
    SHUTOFF = "shut off"


@dataclass(frozen=True, slots=True)
class SnapshotFacts:
    """What vmkeep records in a snapshot's description: libvirt keeps it with the snapshot,
    so nothing else has to be stored and ``virsh snapshot-dumpxml`` shows it too.

    ``expires`` is in seconds since the epoch; ``group`` ties the snapshots that were taken at
    one consistency point of several VMs (``members``). ``deleting`` is set when a delete
    starts merging the snapshot's images and stays until its metadata is gone: an interrupted
    delete leaves it, so the snapshot is never reverted to, and ``snapshot repair`` finishes
    the delete.
    """

    quiesced: bool = False
    expires: int | None = None
    group: str | None = None
    members: tuple[str, ...] = ()
    deleting: bool = False


def encode_facts(facts: SnapshotFacts) -> str:
    """The description text holding ``facts``; ``decode_facts`` reads it back."""
    payload: dict[str, object] = {
        "v": FACTS_VERSION,
        "quiesced": facts.quiesced,
        "expires": facts.expires,
        "group": facts.group,
        "members": list(facts.members),
    }
    if facts.deleting:
        payload["deleting"] = True
    return DESCRIPTION_PREFIX + json.dumps(payload, sort_keys=True, ensure_ascii=False)


def decode_facts(description: str | None) -> SnapshotFacts | None:
    """vmkeep's facts from a snapshot description, or None for a snapshot vmkeep did not make
    (or whose description someone replaced). Never raises."""
    if not description or not description.startswith(DESCRIPTION_PREFIX):
        return None
    try:
        payload = json.loads(description[len(DESCRIPTION_PREFIX) :])
    except ValueError:
        return None
    if not isinstance(payload, dict):
        return None
    expires = payload.get("expires")
    group = payload.get("group")
    members = payload.get("members")
    if not isinstance(expires, int | None) or isinstance(expires, bool):
        return None
    if not isinstance(group, str | None) or not isinstance(members, list):
        return None
    return SnapshotFacts(
        quiesced=payload.get("quiesced") is True,
        expires=expires,
        group=group,
        members=tuple(str(m) for m in members),
        deleting=payload.get("deleting") is True,
    )


@dataclass(frozen=True, slots=True)
class SnapshotDisk:
    """One disk of an external snapshot.

    ``frozen`` holds the disk as it was at the snapshot moment; ``overlay`` is the image on top
    of it (None when unknown), ``overlay_bytes`` the bytes it occupies on the host (None when
    unknown or the file is gone).
    """

    target: str
    frozen: str
    frozen_format: str
    overlay: str | None = None
    overlay_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A snapshot of one VM. ``created`` is in seconds since the epoch; ``state`` is the VM
    state libvirt recorded (``running``, ``paused``, ``shutoff``, ``disk-snapshot``);
    ``facts`` is None for snapshots vmkeep did not make."""

    vm: str
    name: str
    kind: SnapshotKind
    created: int | None = None
    parent: str | None = None
    state: str | None = None
    current: bool = False
    memory_file: str | None = None
    disks: tuple[SnapshotDisk, ...] = ()
    facts: SnapshotFacts | None = None
    description: str | None = None

    @property
    def external(self) -> bool:
        """Whether vmkeep can revert and delete it (its disks live in overlay files)."""
        return self.kind is not SnapshotKind.INTERNAL

    @property
    def overlay_bytes(self) -> int | None:
        """Bytes in this snapshot's overlays, None when any is unknown."""
        sizes = [d.overlay_bytes for d in self.disks]
        if not sizes or any(s is None for s in sizes):
            return None
        return sum(s for s in sizes if s is not None)

    def expired(self, now: int) -> bool:
        """Whether the snapshot's expiry (if any) is at or before ``now``."""
        return bool(self.facts and self.facts.expires is not None and self.facts.expires <= now)


@dataclass(frozen=True, slots=True)
class SnapshotRequest:
    """One VM's part of ``vmkeep snapshot create``: every disk in ``overlays`` (target to the
    path of the new overlay) is snapshotted; the other disks are left out. With
    ``memory_file`` the guest's RAM and device state are saved there, live."""

    name: str
    description: str
    overlays: tuple[tuple[str, str], ...]
    memory_file: str | None = None


@dataclass(frozen=True, slots=True)
class SnapshotDeletion:
    """What deleting a snapshot did: the images merged into the one below them
    (``(top, base)``), and the files removed (overlays no one needs, the memory state)."""

    merged: tuple[tuple[str, str], ...] = ()
    removed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FreeSpace:
    """Free space for unprivileged writes on the filesystem holding a directory."""

    filesystem: str
    free: int


# -- names --------------------------------------------------------------------------------------


def validate_snapshot_name(name: str) -> None:
    """Refuse names libvirt refuses or that cannot be shown on one line; shell
    metacharacters, quotes and unicode are fine (vmkeep never passes names to a shell)."""
    if not name or name.strip() != name:
        raise UsageError("a snapshot name must be non-empty, without leading or trailing spaces")
    if "/" in name:
        raise UsageError(f"invalid snapshot name {name!r}: libvirt refuses '/' in names")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise UsageError(f"invalid snapshot name {name!r}: no control characters")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise UsageError(f"a snapshot name must be at most {MAX_NAME_BYTES} bytes long")


def default_snapshot_name(now: datetime) -> str:
    """``vmkeep-20260101T120000Z``: sortable, and the same for every member of a group."""
    return "vmkeep-" + now.strftime("%Y%m%dT%H%M%SZ")


_UNSAFE = re.compile(r"[^A-Za-z0-9_+-]+")


def safe_component(text: str, limit: int = 40) -> str:
    """``text`` reduced to characters that are harmless in a file name (no dots, slashes,
    spaces or shell metacharacters), at most ``limit`` characters; never empty."""
    cleaned = _UNSAFE.sub("_", text).strip("_")[:limit]
    return cleaned or "x"


def image_stem(path: str) -> str:
    """The part of a disk image's file name before the first dot: ``vda`` for
    ``vda.qcow2`` and for the overlays vmkeep puts on it (``vda.before.1a2b3c.qcow2``)."""
    name = PurePath(path).name
    stem = name.split(".", 1)[0]
    return stem or safe_component(name)


def overlay_path(
    disk_path: str, snapshot: str, token: str, directory: str | None = None, prefix: str = ""
) -> str:
    """Where the overlay of snapshot ``snapshot`` goes for the disk whose top image is
    ``disk_path``: next to it, or in ``directory``. ``token`` (random) keeps names unique when
    snapshot names repeat or reduce to the same safe text; ``prefix`` marks overlays made by a
    revert."""
    parent = directory if directory is not None else str(PurePath(disk_path).parent)
    name = f"{image_stem(disk_path)}.{prefix}{safe_component(snapshot)}.{token}.qcow2"
    return str(PurePath(parent) / name)


def memory_path(directory: str, vm: str, snapshot: str, token: str) -> str:
    """Where the RAM and device state of a memory snapshot is saved."""
    name = f"{safe_component(vm)}.{safe_component(snapshot)}.{token}.mem"
    return str(PurePath(directory) / name)


# -- expiry -------------------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+)\s*([smhdw])", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> int:
    """``"72h"``, ``"3d"``, ``"1d12h"``, ``"90m"``, ``"2w"`` in seconds. Raises UsageError for
    anything else, for a bare number (hours? days?) and for zero."""
    compact = text.strip().replace(" ", "")
    parts = _DURATION_PART.findall(compact)
    if not compact or "".join(n + u for n, u in parts).lower() != compact.lower():
        raise UsageError(f"invalid duration {text!r}: use e.g. 72h, 3d, 1d12h, 90m or 2w")
    seconds = sum(int(number) * _UNIT_SECONDS[unit.lower()] for number, unit in parts)
    if seconds <= 0:
        raise UsageError(f"invalid duration {text!r}: must be longer than zero")
    return seconds


def format_duration(seconds: int) -> str:
    """A short human duration: ``2d 23h``, ``5h 10m``, ``45m``, ``30s``."""
    seconds = max(0, seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m"
    return f"{secs}s"


# -- layout and tree ----------------------------------------------------------------------------


def snapshot_disks(disks: Sequence[DiskInfo]) -> dict[str, DiskInfo]:
    """The disks an external snapshot covers, by target: writable file and block disks with
    a source. cdroms, floppies and read-only disks are media, not the VM's state."""
    return {
        d.target: d
        for d in disks
        if d.device in (DiskDevice.DISK, DiskDevice.LUN)
        and d.source_type in (SourceType.FILE, SourceType.BLOCK)
        and d.source is not None
        and not d.readonly
    }


def layout_changes(current: Iterable[str], snapshot: Iterable[str]) -> list[str]:
    """How the disks a VM has now differ from those its snapshot captured (by target), as
    sentences; empty when they match. A revert with a different layout is refused: a disk
    added since would keep data from after the snapshot, one removed would come back."""
    now, then = set(current), set(snapshot)
    changes = [f"{t} was added after the snapshot" for t in sorted(now - then)]
    changes += [f"{t} was removed after the snapshot" for t in sorted(then - now)]
    return changes


@dataclass(frozen=True, slots=True)
class TreeEntry:
    """A snapshot in tree order: ``depth`` 0 for roots, ``children`` by name."""

    snapshot: Snapshot
    depth: int
    children: tuple[str, ...]


def tree_order(snapshots: Sequence[Snapshot]) -> list[TreeEntry]:
    """Depth-first, parents before children, siblings oldest first. A snapshot whose parent
    is unknown is a root, so every snapshot appears exactly once."""
    names = {s.name for s in snapshots}

    def sort_key(snap: Snapshot) -> tuple[int, str]:
        return (snap.created or 0, snap.name)

    children: dict[str | None, list[Snapshot]] = {}
    for snap in snapshots:
        parent = snap.parent if snap.parent in names else None
        children.setdefault(parent, []).append(snap)
    ordered: list[TreeEntry] = []
    seen: set[str] = set()
    roots = sorted(children.get(None, []), key=sort_key)
    # Parent links come from libvirt; should they ever form a cycle, its members become roots.
    roots += sorted((s for s in snapshots if not _reaches_root(s, snapshots)), key=sort_key)
    stack = [(snap, 0) for snap in reversed(roots)]
    while stack:
        snap, depth = stack.pop()
        if snap.name in seen:
            continue
        seen.add(snap.name)
        kids = sorted(children.get(snap.name, []), key=sort_key)
        ordered.append(TreeEntry(snap, depth, tuple(k.name for k in kids)))
        stack.extend((kid, depth + 1) for kid in reversed(kids))
    return ordered


def _reaches_root(snap: Snapshot, snapshots: Sequence[Snapshot]) -> bool:
    parents = {s.name: s.parent for s in snapshots}
    seen = {snap.name}
    parent = snap.parent
    while parent is not None and parent in parents:
        if parent in seen:
            return False
        seen.add(parent)
        parent = parents[parent]
    return True
