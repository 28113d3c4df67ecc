"""Snapshot sprawl policy: which snapshots ``vmkeep snapshot prune`` deletes, and the limits
``vmkeep snapshot usage`` warns about.

Only snapshots vmkeep made are ever selected: another tool's snapshots (or a hand-made one)
may be part of someone else's plan, and internal snapshots cannot be merged by vmkeep.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vmkeep.domain.errors import UsageError
from vmkeep.domain.snapshots import Snapshot, format_duration

DEFAULT_MAX_AGE = 72 * 3600
"""A snapshot older than this is probably forgotten (and its overlay keeps growing)."""
DEFAULT_MAX_CHAIN = 3
"""More images than this under a disk slow every read that misses the top overlays."""
DEFAULT_FILL_WARNING = 24 * 3600
"""Warn when a filesystem holding overlays is forecast to fill sooner than this."""


@dataclass(frozen=True, slots=True)
class PrunePolicy:
    """``vmkeep snapshot prune`` options. ``older_than`` (seconds) and ``expired`` select
    snapshots; ``keep_last`` protects the newest N of each VM from both, and on its own
    selects every older one."""

    older_than: int | None = None
    keep_last: int | None = None
    expired: bool = False

    def validate(self) -> None:
        """Refuse a policy that selects nothing, or a negative count."""
        if self.older_than is None and self.keep_last is None and not self.expired:
            raise UsageError("give at least one of --older-than, --keep-last and --expired")
        if self.keep_last is not None and self.keep_last < 0:
            raise UsageError("--keep-last must be 0 or more")


@dataclass(frozen=True, slots=True)
class PruneDecision:
    """A snapshot the policy selects, and why (short human reasons)."""

    snapshot: Snapshot
    reasons: tuple[str, ...]


def select_for_pruning(
    snapshots: Sequence[Snapshot], policy: PrunePolicy, now: int
) -> list[PruneDecision]:
    """The snapshots of one VM that ``policy`` deletes, oldest first. Snapshots without a
    creation time count as the oldest."""
    policy.validate()
    ours = sorted(
        (s for s in snapshots if s.facts is not None and s.external),
        key=lambda s: (s.created or 0, s.name),
    )
    protected: set[str] = set()
    if policy.keep_last:
        protected = {s.name for s in ours[-policy.keep_last :]}
    selectors_given = policy.older_than is not None or policy.expired
    decisions = []
    for snap in ours:
        if snap.name in protected:
            continue
        reasons = []
        age = now - (snap.created or 0)
        if policy.older_than is not None and age > policy.older_than:
            reasons.append(f"older than {format_duration(policy.older_than)}")
        if policy.expired and snap.expired(now):
            expires = snap.facts.expires if snap.facts else None
            reasons.append(f"expired {format_duration(now - (expires or now))} ago")
        if not selectors_given and policy.keep_last is not None:
            reasons.append(f"not among the last {policy.keep_last}")
        if reasons:
            decisions.append(PruneDecision(snap, tuple(reasons)))
    return decisions
