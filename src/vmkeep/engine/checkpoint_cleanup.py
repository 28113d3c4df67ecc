"""``vmkeep vm drop-checkpoints``: remove the checkpoints vmkeep made on a VM for a repository
that no backup will use again (one deleted, or moved off this host), or for every repository.

A backup only ever retires its own repository's checkpoints, so those of a repository that
is gone would stay on the VM forever, each a dirty bitmap that QEMU updates on every guest
write. vmkeep cannot tell a deleted repository from an unreachable one, so this is asked for
explicitly. Checkpoints vmkeep did not make (see ``checkpoint_repository``) are never touched.
The next backup into a repository whose checkpoints were dropped is a full one, and says why.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from vmkeep.domain.checkpoints import checkpoint_repository
from vmkeep.domain.errors import UsageError
from vmkeep.ports import HostLocks, Hypervisor

log = logging.getLogger(__name__)

_REPO_ID_RE = re.compile(r"^[0-9a-f]{8,32}$")


@dataclass(frozen=True, slots=True)
class DroppedCheckpoints:
    """What ``drop_checkpoints`` did (or, with ``dry_run``, would do)."""

    vm: str
    dropped: tuple[str, ...]
    kept: tuple[str, ...]
    dry_run: bool


def drop_checkpoints(
    hypervisor: Hypervisor,
    locks: HostLocks,
    vm_name: str,
    *,
    repo_id: str | None,
    dry_run: bool = False,
) -> DroppedCheckpoints:
    """Delete the checkpoints vmkeep made on ``vm_name`` for the repository whose id starts
    with ``repo_id`` (at least the 8 hex digits the names carry), or for every repository
    when ``repo_id`` is None. Newest first, so each deletion merges no bitmap into one that is
    about to go too. Held under the VM's host lock: never while vmkeep backs it up or
    snapshots it. ``kept`` lists every other checkpoint of the VM."""
    wanted = None if repo_id is None else _repo_prefix(repo_id)
    vm = hypervisor.get_vm(vm_name)
    with locks.hold(vm.uuid, f"dropping checkpoints of {vm.name!r}"):
        checkpoints = hypervisor.get_vm(vm_name).checkpoints  # again: now nothing changes them
        chosen, kept = [], []
        for checkpoint in checkpoints:
            owner = checkpoint_repository(checkpoint.name)
            if owner is not None and (wanted is None or owner == wanted):
                chosen.append(checkpoint)
            else:
                kept.append(checkpoint.name)
        chosen.sort(key=lambda c: (c.created or 0, c.name), reverse=True)
        if not dry_run:
            for checkpoint in chosen:
                log.info("deleting checkpoint %s of %s", checkpoint.name, vm.name)
                hypervisor.delete_checkpoint(vm.name, checkpoint.name)
    return DroppedCheckpoints(vm.name, tuple(c.name for c in chosen), tuple(kept), dry_run)


def _repo_prefix(repo_id: str) -> str:
    text = repo_id.strip().lower()
    if not _REPO_ID_RE.match(text):
        raise UsageError(
            f"{repo_id!r} is not a repository id: give at least the 8 hex digits that follow "
            "'vmkeep-' in the checkpoint names (`vmkeep vm show VM` lists them), or the whole "
            "id `vmkeep repo init` printed"
        )
    return text[:8]
