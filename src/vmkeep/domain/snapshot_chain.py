"""Which disk images to delete and which to merge after a snapshot goes away (or a revert
leaves a branch behind): a pure plan over one disk's tree of qcow2 images.

The images of a disk form a tree: each overlay points at the image below it (its backing
file); the VM writes to the *active* image at the top of one path through it. An image's
content must be kept exactly when it is the active image or the frozen image of a snapshot
that remains; every image below those is still needed as their backing. From that:

* images that nothing needs (the abandoned branch after a revert, the overlays of a deleted
  snapshot's future that no snapshot froze) are removed;
* an image whose own content is no longer needed and that has exactly one needed image on top
  of it is merged with that image: the upper image is committed into it, and it takes the
  upper image's place. The chain gets one image shorter, and every remaining snapshot still
  reads exactly the bytes it read before.

Only images vmkeep can tell belong to the VM's snapshots are ever touched: those a snapshot or
the VM names, and those lying between them. A base image below all of them (a template
shared by linked clones) is never written or removed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class DiskLayers:
    """One disk's images as they are on the host now.

    ``backing`` maps every known image to the image it is an overlay of (None at the bottom);
    ``formats`` maps images to their format (``qcow2``, ``raw``).
    """

    target: str
    active: str
    backing: Mapping[str, str | None]
    formats: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Commit:
    """Commit ``top`` into ``base`` (the image right below it); ``base`` then stands where
    ``top`` stood and ``top`` is removed.

    ``children`` are the images on top of ``top``, to be pointed at ``base`` afterwards;
    ``chain_child`` is the one of them in the VM's active chain (QEMU repoints it itself when
    the commit runs in a live VM). ``in_active_chain`` tells whether a running VM has ``top``
    open (then the commit must run inside QEMU); ``top_is_active`` whether it is the image
    the VM writes to (then QEMU must pivot to ``base`` at the end).
    """

    target: str
    top: str
    base: str
    base_format: str
    top_is_active: bool
    in_active_chain: bool
    children: tuple[str, ...] = ()
    chain_child: str | None = None


@dataclass(frozen=True, slots=True)
class DiskPlan:
    """What to do to one disk, in order: remove ``remove`` (images nobody needs; none is open
    in QEMU), then run ``commits``. ``moved`` maps every image a commit removes to the image
    holding its content afterwards, for rewriting the snapshots that name it; ``active`` is
    the disk's active image afterwards."""

    target: str
    remove: tuple[str, ...]
    commits: tuple[Commit, ...]
    moved: Mapping[str, str]
    active: str


def plan_disk(layers: DiskLayers, anchors: Iterable[str], keep: Iterable[str]) -> DiskPlan:
    """Plan the clean-up of one disk.

    ``anchors`` are every image that any snapshot names (frozen images and overlays, including
    those of a snapshot being deleted); ``keep`` are the frozen images of the snapshots that
    remain, whose content must not change. Idempotent: planning again after the plan ran
    (or after it was interrupted part-way) plans only what is left to do.
    """
    backing = dict(layers.backing)
    active = layers.active
    ours = _ours(backing, {a for a in anchors if a in backing} | {active})
    wanted = {k for k in keep if k in backing} | {active}
    needed = _with_ancestors(wanted, backing)
    remove = tuple(sorted(image for image in ours if image not in needed))
    for image in remove:
        del backing[image]
    commits: list[Commit] = []
    moved: dict[str, str] = {}
    while (pair := _next_merge(backing, ours, wanted, active)) is not None:
        base, top = pair
        children = tuple(sorted(c for c, b in backing.items() if b == top))
        chain = _chain(active, backing)
        commits.append(
            Commit(
                target=layers.target,
                top=top,
                base=base,
                base_format=layers.formats.get(base, "qcow2"),
                top_is_active=top == active,
                in_active_chain=top in chain,
                children=children,
                chain_child=next((c for c in children if c in chain), None),
            )
        )
        for child in children:
            backing[child] = base
        del backing[top]
        if top == active:
            active = base
        if top in wanted:
            wanted.discard(top)
            wanted.add(base)
        moved = {old: (base if new == top else new) for old, new in moved.items()}
        moved[top] = base
    return DiskPlan(layers.target, remove, tuple(commits), moved, active)


def _chain(image: str | None, backing: Mapping[str, str | None]) -> list[str]:
    """``image`` and every image below it, top first."""
    chain: list[str] = []
    while image is not None and image not in chain:
        chain.append(image)
        image = backing.get(image)
    return chain


def _with_ancestors(images: Iterable[str], backing: Mapping[str, str | None]) -> set[str]:
    found: set[str] = set()
    for image in images:
        found.update(_chain(image, backing))
    return found


def _ours(backing: Mapping[str, str | None], anchors: set[str]) -> set[str]:
    """The anchors, the images lying between two of them on some chain, and the images that
    two of those branch from (a frozen image a revert put a second overlay on, still shared
    after its snapshot was deleted). Any other image below them belongs to someone else (a
    template shared by linked clones) and is never touched: vmkeep's reverts only ever put
    overlays on frozen images, so only its own images can be branch points."""
    ours = set(anchors)
    while True:
        grown = set(ours)
        for anchor in ours:
            chain = _chain(anchor, backing)
            deepest = max((i for i, image in enumerate(chain) if image in ours), default=0)
            grown.update(chain[:deepest])
        below: dict[str, int] = {}
        for image in grown:
            parent = backing.get(image)
            if parent is not None:
                below[parent] = below.get(parent, 0) + 1
        grown.update(parent for parent, count in below.items() if count >= 2)
        if grown == ours:
            return ours
        ours = grown


def _next_merge(
    backing: Mapping[str, str | None], ours: set[str], wanted: set[str], active: str
) -> tuple[str, str] | None:
    """A ``(base, top)`` pair to merge, or None: ``base`` is ours, its content is wanted by
    no one, and ``top`` (also ours) is the only image on top of it. Commits that need no
    pivot come first; ties are broken by name so plans are reproducible."""
    children: dict[str, list[str]] = {}
    for image, below in backing.items():
        if below is not None:
            children.setdefault(below, []).append(image)
    pairs = [
        (base, kids[0])
        for base, kids in children.items()
        if len(kids) == 1 and base in ours and kids[0] in ours and base not in wanted
    ]
    if not pairs:
        return None
    return min(pairs, key=lambda pair: (pair[1] == active, pair[1], pair[0]))
