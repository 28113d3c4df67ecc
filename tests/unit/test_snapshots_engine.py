"""Snapshot use cases over the in-memory hypervisor: quiescing, groups, rollback, space,
refusals, revert states, the list."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.fakes import FakeHypervisor, MemoryLocks
from vmkeep.domain.errors import (
    AlreadyExistsError,
    GuestAgentError,
    HypervisorError,
    LockedError,
    NotFoundError,
    StoreFullError,
    UsageError,
    VmNotFoundError,
)
from vmkeep.domain.snapshots import (
    RevertState,
    SnapshotFacts,
    SnapshotKind,
    SnapshotRequest,
    encode_facts,
)
from vmkeep.domain.vmspec import DiskSpec, VmSpec
from vmkeep.engine.snapshot_history import (
    PartialRevertError,
    delete_snapshot,
    group_of,
    revert_group,
    revert_snapshot,
)
from vmkeep.engine.snapshot_repair import repair_snapshots
from vmkeep.engine.snapshots import SnapshotOptions, create_snapshots, list_snapshots

NOW = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)


class AgentHypervisor(FakeHypervisor):
    """The fake plus a guest agent that records freezes and thaws, and can hang."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, str]] = []
        self.hanging: set[str] = set()
        self.frozen: set[str] = set()
        self.locks = MemoryLocks()

    def freeze_filesystems(self, name: str, timeout: int) -> int:
        self.events.append(("freeze", name))
        if name in self.hanging:
            raise GuestAgentError(f"guest agent of {name!r} does not answer")
        self.frozen.add(name)
        return 1

    def thaw_filesystems(self, name: str, timeout: int) -> int:
        self.events.append(("thaw", name))
        if name in self.hanging:
            raise GuestAgentError(f"guest agent of {name!r} does not answer")
        was_frozen = name in self.frozen
        self.frozen.discard(name)
        return int(was_frozen)

    def create_snapshot(self, name, request):  # type: ignore[no-untyped-def]
        self.events.append(("snapshot", name))
        return super().create_snapshot(name, request)

    def delete_snapshot(self, name, snapshot):  # type: ignore[no-untyped-def]
        self.events.append(("delete", name))
        return super().delete_snapshot(name, snapshot)


def vm(hv: FakeHypervisor, name: str, disks: int = 2, start: bool = True) -> None:
    specs = tuple(DiskSpec(f"vd{c}", f"/vms/{name}/vd{c}.qcow2") for c in "abcd"[:disks])
    hv.define_vm(VmSpec(name, 256 << 20, 1, "/k", "/i", "", specs))
    if start:
        hv.start_vm(name)


@pytest.fixture
def hv() -> AgentHypervisor:
    fake = AgentHypervisor()
    vm(fake, "web")
    vm(fake, "db", disks=1)
    return fake


def create(hv: AgentHypervisor, names: Sequence[str], **options: object):  # type: ignore[no-untyped-def]
    return create_snapshots(hv, hv.locks, names, SnapshotOptions(**options), now=NOW)  # type: ignore[arg-type]


def test_a_snapshot_is_quiesced_when_the_agent_answers(hv: AgentHypervisor) -> None:
    result = create(hv, ["web"], name="before patch; $(x)", expire=3600)
    (created,) = result.snapshots
    assert hv.events == [("freeze", "web"), ("snapshot", "web"), ("thaw", "web")]
    assert created.quiesced and created.warnings == ()
    snap = created.snapshot
    assert snap.name == "before patch; $(x)" and snap.kind is SnapshotKind.DISK
    assert snap.facts is not None
    assert snap.facts.quiesced and snap.facts.expires == int(NOW.timestamp()) + 3600
    assert snap.facts.group is None and result.group is None
    assert [d.overlay for d in snap.disks] == [
        f"/vms/web/vd{c}.before_patch_x.{d.overlay.split('.')[-2]}.qcow2"  # type: ignore[union-attr]
        for c, d in zip("ab", snap.disks, strict=True)
    ]
    assert result.frozen_seconds is not None


def test_default_name_and_no_agent_means_crash_consistent_with_a_warning(
    hv: AgentHypervisor,
) -> None:
    hv.agent_ready = False
    hv.start_vm("web")  # restart the agent state
    hv._vm("web").agent_up = False
    (created,) = create(hv, ["web"]).snapshots
    assert created.snapshot.name == "vmkeep-20260501T120000Z"
    assert not created.quiesced
    assert created.warnings == ("no guest agent: crash-consistent snapshot",)
    assert ("freeze", "web") not in hv.events
    assert created.snapshot.facts is not None and not created.snapshot.facts.quiesced


def test_a_hanging_agent_still_gives_a_crash_consistent_snapshot(hv: AgentHypervisor) -> None:
    hv.hanging.add("web")
    (created,) = create(hv, ["web"], quiesce=True).snapshots
    assert hv.events == [("freeze", "web"), ("thaw", "web"), ("snapshot", "web")]
    assert not created.quiesced
    assert "could not quiesce" in created.warnings[0]
    assert created.snapshot.facts is not None and not created.snapshot.facts.quiesced


def test_no_quiesce_skips_the_agent(hv: AgentHypervisor) -> None:
    (created,) = create(hv, ["web"], quiesce=False).snapshots
    assert hv.events == [("snapshot", "web")] and created.warnings == ()


def test_a_group_freezes_all_then_snapshots_all_then_thaws_all(hv: AgentHypervisor) -> None:
    result = create(hv, ["web", "db"], name="g")
    assert hv.events == [
        ("freeze", "web"),
        ("freeze", "db"),
        ("snapshot", "web"),
        ("snapshot", "db"),
        ("thaw", "web"),
        ("thaw", "db"),
    ]
    assert result.group is not None
    for created in result.snapshots:
        facts = created.snapshot.facts
        assert facts is not None
        assert (facts.group, facts.members) == (result.group, ("web", "db"))


def test_a_failing_member_rolls_the_group_back_after_thawing(hv: AgentHypervisor) -> None:
    hv.snapshot_failures = {"db"}
    with pytest.raises(HypervisorError, match="injected"):
        create(hv, ["web", "db"], name="g")
    assert hv.events[-3:] == [("thaw", "web"), ("thaw", "db"), ("delete", "web")]
    assert hv.list_snapshots("web") == [] and hv.list_snapshots("db") == []


def test_memory_snapshots_are_not_frozen(hv: AgentHypervisor) -> None:
    (created,) = create(hv, ["web"], memory=True, name="m").snapshots
    assert hv.events == [("snapshot", "web")]
    snap = created.snapshot
    assert snap.kind is SnapshotKind.MEMORY
    assert snap.memory_file is not None and snap.memory_file.startswith("/vms/web/web.m.")
    with pytest.raises(UsageError, match="--quiesce does not apply"):
        create(hv, ["web"], memory=True, quiesce=True)
    vm(hv, "off", start=False)
    with pytest.raises(UsageError, match="not running"):
        create(hv, ["off"], memory=True)


def test_overlays_go_to_the_given_directory_named_after_the_vm(hv: AgentHypervisor) -> None:
    (created,) = create(hv, ["web"], name="s", directory=Path("/srv/snaps")).snapshots
    overlays = [d.overlay or "" for d in created.snapshot.disks]
    assert all(o.startswith("/srv/snaps/web-vda.s.") for o in overlays[:1])
    (again,) = create(hv, ["web"], name="t", directory=Path("/srv/snaps")).snapshots
    assert (again.snapshot.disks[0].overlay or "").startswith("/srv/snaps/web-vda.t.")


def test_not_enough_space_is_refused_before_anything_happens(hv: AgentHypervisor) -> None:
    hv.free_bytes = 100 << 20
    with pytest.raises(StoreFullError, match=r"/fake needs at least 338\.0 MiB \(memory state"):
        create(hv, ["web"], memory=True)
    assert hv.events == [] and hv.list_snapshots("web") == []
    hv.free_bytes = 60 << 20
    with pytest.raises(StoreFullError, match=r"64\.0 MiB headroom"):
        create(hv, ["web"])


@pytest.mark.parametrize(
    ("names", "options", "error"),
    [
        ([], {}, UsageError),
        (["web", "web"], {}, UsageError),
        (["web"], {"name": "a/b"}, UsageError),
        (["nope"], {}, VmNotFoundError),
    ],
)
def test_bad_requests_are_refused(
    hv: AgentHypervisor, names: list[str], options: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        create(hv, names, **options)
    assert hv.events == []


def test_an_existing_name_is_refused(hv: AgentHypervisor) -> None:
    create(hv, ["web"], name="s")
    with pytest.raises(AlreadyExistsError):
        create(hv, ["web"], name="s")


def test_revert_states_follow_the_snapshot_and_the_vm(hv: AgentHypervisor) -> None:
    create(hv, ["web"], name="disk")
    create(hv, ["web"], name="mem", memory=True)
    assert revert_snapshot(hv, hv.locks, "web", "mem").state is RevertState.RUNNING
    assert (
        revert_snapshot(hv, hv.locks, "web", "disk").state is RevertState.RUNNING
    )  # it was running
    hv.stop_vm("web")
    assert revert_snapshot(hv, hv.locks, "web", "disk").state is RevertState.SHUTOFF
    assert (
        revert_snapshot(hv, hv.locks, "web", "disk", RevertState.PAUSED).state is RevertState.PAUSED
    )
    with pytest.raises(UsageError, match="running or paused"):
        revert_snapshot(hv, hv.locks, "web", "mem", RevertState.SHUTOFF)


def test_revert_refuses_a_missing_snapshot_and_a_changed_layout(hv: AgentHypervisor) -> None:
    create(hv, ["db"], name="one")
    with pytest.raises(NotFoundError, match=r"no snapshot named 'two' \(it has: 'one'\)"):
        revert_snapshot(hv, hv.locks, "db", "two")
    fake_vm = hv._vm("db")
    fake_vm.spec = VmSpec(
        "db", 256 << 20, 1, "/k", "/i", "", (*fake_vm.spec.disks, DiskSpec("vdb", "/new.qcow2"))
    )
    with pytest.raises(UsageError, match="vdb was added after the snapshot"):
        revert_snapshot(hv, hv.locks, "db", "one")


def test_delete_and_list_keep_the_tree(hv: AgentHypervisor) -> None:
    create(hv, ["web"], name="a")
    create(hv, ["web"], name="b")
    create(hv, ["web"], name="c", memory=True)
    (listing,) = list_snapshots(hv, "web")
    assert [(e.snapshot.name, e.depth) for e in listing.entries] == [("a", 0), ("b", 1), ("c", 2)]
    assert [c.target for c in listing.chains] == ["vda", "vdb"]
    result = delete_snapshot(hv, hv.locks, "web", "b")
    assert result.snapshot == "b"
    (listing,) = list_snapshots(hv, "web")
    assert [(e.snapshot.name, e.depth) for e in listing.entries] == [("a", 0), ("c", 1)]
    assert delete_snapshot(hv, hv.locks, "web", "c").deletion.removed[0].endswith(".mem")
    with pytest.raises(NotFoundError):
        delete_snapshot(hv, hv.locks, "web", "c")
    assert [v.vm for v in list_snapshots(hv)] == ["web"]  # only VMs that have snapshots


def test_snapshot_operations_hold_the_vms_host_lock(hv: AgentHypervisor) -> None:
    """Backups and snapshot operations of a VM share its lock: nothing starts while one runs,
    and nothing is changed by the refused operation."""
    create(hv, ["web"], name="a")
    web = hv.get_vm("web").uuid
    with hv.locks.hold(web, "a backup of 'web'"):
        with pytest.raises(LockedError, match="a backup of 'web' is running"):
            create(hv, ["db", "web"], name="b")
        with pytest.raises(LockedError):
            revert_snapshot(hv, hv.locks, "web", "a")
        with pytest.raises(LockedError):
            delete_snapshot(hv, hv.locks, "web", "a")
        assert [s.name for s in hv.list_snapshots("web")] == ["a"]
        assert hv.list_snapshots("db") == []  # the group did not start at all
    assert hv.locks.held == {}
    delete_snapshot(hv, hv.locks, "web", "a")
    assert "a snapshot deletion of 'web'" in hv.locks.history


def test_a_group_reverts_together_after_checking_every_member(hv: AgentHypervisor) -> None:
    result = create(hv, ["web", "db"], name="g")
    assert group_of(hv, "db", "g") == (result.group, ("web", "db"))
    create(hv, ["web"], name="alone")
    assert group_of(hv, "web", "alone") is None
    with pytest.raises(UsageError, match="not taken as part of a group"):
        revert_group(hv, hv.locks, "web", "alone")
    reverted = revert_group(hv, hv.locks, "db", "g")
    assert [r.vm for r in reverted.results] == ["web", "db"]  # the group's order
    assert all(s.current == (s.name == "g") for s in hv.list_snapshots("web"))
    # A member whose disks changed stops the whole group before anything happens.
    fake_db = hv._vm("db")
    fake_db.spec = replace(fake_db.spec, disks=(*fake_db.spec.disks, DiskSpec("vdz", "/z")))
    create(hv, ["web"], name="later")
    with pytest.raises(UsageError, match="vdz was added"):
        revert_group(hv, hv.locks, "web", "g")
    assert next(s for s in hv.list_snapshots("web") if s.current).name == "later"


def test_a_group_revert_failing_part_way_says_who_was_reverted(hv: AgentHypervisor) -> None:
    create(hv, ["web", "db"], name="g")

    def broken(name: str, snapshot: str, state: RevertState) -> float:
        raise HypervisorError("restoring the memory failed")

    original = hv.revert_snapshot
    hv.revert_snapshot = lambda name, snapshot, state: (  # type: ignore[method-assign]
        broken(name, snapshot, state) if name == "db" else original(name, snapshot, state)
    )
    with pytest.raises(PartialRevertError) as failed:
        revert_group(hv, hv.locks, "web", "g")
    assert "reverted: 'web'; not reverted: none" in str(failed.value)
    assert failed.value.exit_code == HypervisorError.exit_code
    assert hv.locks.held == {}


def test_repair_thaws_finishes_deletes_and_reports_incomplete_groups(hv: AgentHypervisor) -> None:
    assert repair_snapshots(hv, hv.locks, "web").actions == ()  # nothing to do
    create(hv, ["web", "db"], name="pair")
    hv.delete_snapshot("db", "pair")  # as if the group create died before db's part
    overlays = (("vda", "/vms/web/vda.x.qcow2"), ("vdb", "/vms/web/vdb.x.qcow2"))
    interrupted = encode_facts(SnapshotFacts(deleting=True))
    hv.create_snapshot("web", SnapshotRequest("half-deleted", interrupted, overlays))
    with pytest.raises(UsageError, match="is being deleted"):
        revert_snapshot(hv, hv.locks, "web", "half-deleted")
    with pytest.raises(UsageError, match="snapshot repair"):
        create(hv, ["web"], name="next")
    hv.freeze_filesystems("web", 5)  # as a create killed between freeze and thaw leaves it
    result = repair_snapshots(hv, hv.locks, "web")
    assert result.actions == (
        "thawed 1 filesystem(s) left frozen",
        "finished deleting snapshot 'half-deleted' (0 image(s) merged, 0 file(s) removed)",
    )
    assert [s.name for s in hv.list_snapshots("web")] == ["pair"]
    assert result.warnings == (
        "group snapshot 'pair' is incomplete: 'db' has no part of it (an interrupted group "
        "create, or deleted since); it cannot be reverted as a group",
    )
    create(hv, ["web"], name="next")  # allowed again
