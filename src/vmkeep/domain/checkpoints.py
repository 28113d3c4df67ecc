"""The names vmkeep gives the libvirt checkpoints it makes, and telling them from others'."""

from __future__ import annotations

import re

CHECKPOINT_PREFIX = "vmkeep-"

# ``vmkeep-<repo id[:8]>-<backup id>``, the backup id as repository/manifests.py makes it.
_OWN_CHECKPOINT_RE = re.compile(r"^vmkeep-([0-9a-f]{8})-\d{8}T\d{6}(\d{3})?Z-[0-9a-f]{8}$")


def checkpoint_prefix(repo_id: str) -> str:
    """Checkpoints are named ``vmkeep-<repo id[:8]>-<backup id>``: a VM backed up into two
    repositories keeps one chain per repository, and each run only ever retires its own
    repository's checkpoints (never anyone else's)."""
    return f"{CHECKPOINT_PREFIX}{repo_id[:8]}-"


def checkpoint_repository(name: str) -> str | None:
    """The repository id prefix (8 hex digits) in the name of a checkpoint vmkeep made; None
    for any other checkpoint, which vmkeep never deletes."""
    found = _OWN_CHECKPOINT_RE.match(name)
    return found.group(1) if found else None


def is_own_checkpoint(name: str, repo_id: str) -> bool:
    """Whether vmkeep made the checkpoint ``name`` for the repository ``repo_id``."""
    return checkpoint_repository(name) == repo_id[:8]
