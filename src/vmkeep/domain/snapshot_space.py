"""How much room a snapshot needs: a conservative estimate per filesystem, so that
``vmkeep snapshot create`` refuses before it starts rather than fill a disk half-way."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from vmkeep.domain.units import format_size

OVERLAY_RESERVE = 1 << 20
"""A new qcow2 overlay: header, L1 and refcount tables (a few hundred KiB for large disks)."""
WRITE_HEADROOM = 64 << 20
"""Per filesystem: room for the guest's first writes, so a snapshot does not fill the disk
the moment it is taken."""
MEMORY_OVERHEAD = 16 << 20
"""Device state, the save-image header and its domain XML, beyond the RAM itself."""


@dataclass(frozen=True, slots=True)
class SpaceDemand:
    """What one snapshot operation will write on one filesystem."""

    filesystem: str
    free: int
    overlays: int = 0
    memory: int = 0
    """Bytes of guest RAM whose state is saved there (a saved state never exceeds it by more
    than MEMORY_OVERHEAD per VM)."""
    memory_files: int = 0

    @property
    def needed(self) -> int:
        """A conservative estimate of the bytes needed."""
        return (
            self.overlays * OVERLAY_RESERVE
            + self.memory
            + self.memory_files * MEMORY_OVERHEAD
            + WRITE_HEADROOM
        )

    def explain(self) -> str:
        """``needs at least 340.0 MiB (memory state 272.0 MiB, 2 overlays 2.0 MiB, ...)``."""
        parts = []
        if self.memory_files:
            memory = self.memory + self.memory_files * MEMORY_OVERHEAD
            parts.append(f"memory state {format_size(memory)}")
        if self.overlays:
            parts.append(
                f"{self.overlays} overlay(s) {format_size(self.overlays * OVERLAY_RESERVE)}"
            )
        parts.append(f"{format_size(WRITE_HEADROOM)} headroom for new writes")
        return (
            f"{self.filesystem} needs at least {format_size(self.needed)} "
            f"({', '.join(parts)}) but has {format_size(self.free)} free"
        )


def merge_demands(demands: Iterable[SpaceDemand]) -> list[SpaceDemand]:
    """One demand per filesystem, adding up what several disks and VMs write there."""
    merged: dict[str, SpaceDemand] = {}
    for demand in demands:
        seen = merged.get(demand.filesystem)
        if seen is None:
            merged[demand.filesystem] = demand
            continue
        merged[demand.filesystem] = SpaceDemand(
            filesystem=demand.filesystem,
            free=min(seen.free, demand.free),
            overlays=seen.overlays + demand.overlays,
            memory=seen.memory + demand.memory,
            memory_files=seen.memory_files + demand.memory_files,
        )
    return list(merged.values())


def space_shortfalls(demands: Iterable[SpaceDemand]) -> list[str]:
    """One message per filesystem that clearly has too little room; empty when all fit."""
    return [d.explain() for d in merge_demands(demands) if d.free < d.needed]
