"""The incremental-or-full decision, with every reason a full backup can have."""

from __future__ import annotations

from vmkeep.domain.backup import BackupManifest, DiskBackup
from vmkeep.domain.chain import DiskFacts, plan_backup

GiB = 1 << 30
DISKS = [DiskFacts("vda", 8 * GiB, "qcow2"), DiskFacts("vdb", GiB, "raw")]


def manifest(
    backup_id: str, checkpoint: str | None, sizes: dict[str, int] | None = None
) -> BackupManifest:
    sizes = sizes or {"vda": 8 * GiB, "vdb": GiB}
    disks = tuple(
        DiskBackup(name=n, size=s, chunk_size=1 << 20, index_id="i") for n, s in sizes.items()
    )
    return BackupManifest(
        backup_id=backup_id,
        kind="full",
        created="",
        host="h",
        vm="vm",
        disks=(*disks, DiskBackup("nvram", 128, 1 << 20, "i", mode="file")),
        checkpoint=checkpoint,
    )


def plan(**overrides: object):  # type: ignore[no-untyped-def]
    facts: dict[str, object] = {
        "want_full": False,
        "disks": DISKS,
        "checkpoints": {"cp2"},
        "history": [
            manifest("20261101T000000Z-00000001", "cp1"),
            manifest("20261102T000000Z-00000002", "cp2"),
        ],
        "parent_intact": lambda _m: True,
    }
    facts.update(overrides)
    return plan_backup(**facts)  # type: ignore[arg-type]


def test_incremental_from_the_newest_backup_with_a_live_checkpoint() -> None:
    result = plan()
    assert result.incremental
    assert result.parent is not None and result.parent.checkpoint == "cp2"
    older = plan(checkpoints={"cp1"})
    assert older.parent is not None and older.parent.checkpoint == "cp1"


def test_reasons_for_a_full_backup() -> None:
    assert plan(want_full=True).reason == "full backup requested"
    assert plan(history=[]).reason == "first backup of this VM"
    assert "checkpoint of the last backup is gone" in (plan(checkpoints=set()).reason or "")
    assert "raw disks" in (plan(disks=[DiskFacts("vda", GiB, "raw")]).reason or "")
    assert "chunks missing" in (plan(parent_intact=lambda _m: False).reason or "")


def test_layout_changes_force_a_full_backup() -> None:
    resized = plan(disks=[DiskFacts("vda", 10 * GiB, "qcow2"), DiskFacts("vdb", GiB, "raw")])
    assert resized.reason is not None and "vda resized from 8.0 GiB to 10.0 GiB" in resized.reason
    added = plan(disks=[*DISKS, DiskFacts("vdc", GiB, "qcow2")])
    assert added.reason is not None and "added vdc" in added.reason
    removed = plan(disks=DISKS[:1])
    assert removed.reason is not None and "removed vdb" in removed.reason
