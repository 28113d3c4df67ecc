"""Snapshot sprawl: the prune policy (pure), prune over the in-memory hypervisor, and the
usage report (growth, forecast, warnings) over a hand-built VM."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from tests.fakes import FakeHypervisor, MemoryLocks
from vmkeep.domain.errors import HypervisorError, UsageError, VmNotFoundError
from vmkeep.domain.inventory import (
    BackingImage,
    DiskDevice,
    DiskInfo,
    SourceType,
    VmInfo,
    VmState,
)
from vmkeep.domain.snapshot_policy import PrunePolicy, select_for_pruning
from vmkeep.domain.snapshots import (
    FreeSpace,
    Snapshot,
    SnapshotDisk,
    SnapshotFacts,
    SnapshotKind,
    SnapshotRequest,
    encode_facts,
)
from vmkeep.domain.vmspec import DiskSpec, VmSpec
from vmkeep.engine.snapshot_upkeep import UsagePolicy, prune_snapshots, snapshot_usage

HOUR = 3600
NOW = 1_800_000_000
GiB = 1 << 30


def snap(name: str, hours_ago: float, *, ours: bool = True, expires_in: float | None = None):  # type: ignore[no-untyped-def]
    expires = None if expires_in is None else int(NOW + expires_in * HOUR)
    return Snapshot(
        vm="web",
        name=name,
        kind=SnapshotKind.DISK,
        created=int(NOW - hours_ago * HOUR),
        facts=SnapshotFacts(expires=expires) if ours else None,
    )


def selected(snapshots: Sequence[Snapshot], **policy: object) -> list[str]:
    return [d.snapshot.name for d in select_for_pruning(snapshots, PrunePolicy(**policy), NOW)]  # type: ignore[arg-type]


def test_policy_selects_by_age_expiry_and_count_and_protects_the_newest() -> None:
    snaps = [
        snap("d", 1),
        snap("a", 100),
        snap("b", 80, expires_in=-2),
        snap("c", 10, expires_in=-1),
        snap("e", 200, ours=False),  # never vmkeep's business
    ]
    assert selected(snaps, older_than=72 * HOUR) == ["a", "b"]  # oldest first
    assert selected(snaps, expired=True) == ["b", "c"]
    assert selected(snaps, older_than=72 * HOUR, expired=True) == ["a", "b", "c"]
    assert selected(snaps, keep_last=2) == ["a", "b"]  # alone, it selects the rest
    assert selected(snaps, expired=True, keep_last=2) == ["b"]  # with others, it protects
    assert selected(snaps, keep_last=0) == ["a", "b", "c", "d"]
    (decision,) = select_for_pruning(snaps, PrunePolicy(expired=True, keep_last=2), NOW)
    assert decision.reasons == ("expired 2h ago",)


@pytest.mark.parametrize("policy", [PrunePolicy(), PrunePolicy(keep_last=-1)])
def test_an_empty_or_negative_policy_is_refused(policy: PrunePolicy) -> None:
    with pytest.raises(UsageError):
        select_for_pruning([], policy, NOW)


class FailingDeletes(FakeHypervisor):
    def __init__(self) -> None:
        super().__init__()
        self.failing: set[tuple[str, str]] = set()

    def delete_snapshot(self, name, snapshot):  # type: ignore[no-untyped-def]
        if (name, snapshot) in self.failing:
            raise HypervisorError("a block job is already running")
        return super().delete_snapshot(name, snapshot)


def _take(hv: FakeHypervisor, vm: str, name: str) -> None:
    overlays = tuple((d.target, f"{d.source}.{name}") for d in hv.get_vm(vm).disks)
    hv.create_snapshot(vm, SnapshotRequest(name, encode_facts(SnapshotFacts()), overlays))


def test_prune_deletes_per_vm_goes_on_after_a_failure_and_dry_run_deletes_nothing() -> None:
    hv = FailingDeletes()
    locks = MemoryLocks()
    for vm in ("db", "web"):
        hv.define_vm(VmSpec(vm, 256 << 20, 1, "/k", "/i", "", (DiskSpec("vda", f"/{vm}.qcow2"),)))
        for name in ("s0", "s1", "s2"):
            _take(hv, vm, name)  # the fake's creation times are 0, 1, 2
    policy = PrunePolicy(keep_last=1)
    planned = prune_snapshots(hv, locks, policy, now=NOW, dry_run=True)
    assert [(o.vm, o.decision.snapshot.name, o.deleted) for o in planned] == [
        ("db", "s0", False),
        ("db", "s1", False),
        ("web", "s0", False),
        ("web", "s1", False),
    ]
    assert len(hv.list_snapshots("db")) == 3
    hv.failing.add(("db", "s0"))
    done = prune_snapshots(hv, locks, policy, now=NOW)
    assert [(o.vm, o.decision.snapshot.name, o.deleted) for o in done] == [
        ("db", "s0", False),
        ("db", "s1", True),
        ("web", "s0", True),
        ("web", "s1", True),
    ]
    assert isinstance(done[0].error, HypervisorError)
    assert [s.name for s in hv.list_snapshots("db")] == ["s0", "s2"]
    assert [s.name for s in hv.list_snapshots("web")] == ["s2"]
    only_web = prune_snapshots(hv, locks, PrunePolicy(keep_last=0), vms=["web"], now=NOW)
    assert [o.vm for o in only_web] == ["web"]
    with pytest.raises(VmNotFoundError):
        prune_snapshots(hv, locks, policy, vms=["nope"], now=NOW)


class UsageHypervisor:
    """Just what snapshot_usage reads: one VM whose vda sits on two snapshots."""

    def __init__(self, free: int, active_bytes: int, chain: int = 2) -> None:
        self.free = free
        images = [f"/vms/vda.s{n}.qcow2" for n in range(chain, 0, -1)] + ["/vms/vda.qcow2"]
        self.disk = DiskInfo(
            target="vda",
            device=DiskDevice.DISK,
            source_type=SourceType.FILE,
            source=images[0],
            format="qcow2",
            allocated_size=active_bytes,
            backing_chain=tuple(BackingImage(p, "qcow2") for p in images[1:]),
        )
        self.snapshots = [
            Snapshot(
                vm="web",
                name=f"s{n}",
                kind=SnapshotKind.DISK,
                created=NOW - (chain - n + 1) * 10 * HOUR,
                current=n == chain,
                disks=(
                    SnapshotDisk("vda", images[chain - n + 1], "qcow2", images[chain - n], 1 << 20),
                ),
            )
            for n in range(1, chain + 1)
        ]

    def list_vms(self) -> list[VmInfo]:
        vm = VmInfo("web", "u", VmState.RUNNING, True, 1, GiB, GiB, (self.disk,))
        return [vm, VmInfo("quiet", "v", VmState.SHUTOFF, True, 1, GiB, GiB)]

    def list_snapshots(self, name: str) -> list[Snapshot]:
        return self.snapshots if name == "web" else []

    def free_space(self, directory: str) -> FreeSpace:
        assert directory == "/vms"
        return FreeSpace("/vms", self.free)


def test_usage_reports_growth_and_forecast_and_warns_by_policy() -> None:
    # The VM sits on s2, taken 10 h ago; its active overlay holds 10 GiB: 1 GiB/h.
    hv = UsageHypervisor(free=20 * GiB, active_bytes=10 * GiB)
    usage = snapshot_usage(hv, UsagePolicy(), now=NOW)  # type: ignore[arg-type]
    (vm,) = usage.vms
    assert vm.vm == "web" and vm.snapshots == 2 and vm.longest_chain == 2
    assert vm.active_bytes == 10 * GiB
    assert vm.growth == pytest.approx(GiB / HOUR)
    assert vm.overlay_bytes == 10 * GiB + (1 << 20)  # the active one, and s1's frozen overlay
    (fs,) = usage.filesystems
    assert fs.fills_in == pytest.approx(20 * HOUR)
    assert fs.vms == ("web",)
    assert len(usage.warnings) == 1 and "/vms fills in about 20h" in usage.warnings[0]
    # Stricter policy: old snapshots and a long chain are named too.
    strict = snapshot_usage(
        hv, UsagePolicy(max_age=15 * HOUR, max_chain=1, fill_warning=HOUR), now=NOW
    )  # type: ignore[arg-type]
    assert strict.warnings == (
        "web: snapshot 's1' is 20h old (policy: 15h)",
        "web: a disk has 2 images below its active one (policy: 1); delete or prune "
        "snapshots to shorten the chain",
    )


def test_usage_of_an_idle_vm_forecasts_nothing() -> None:
    hv = UsageHypervisor(free=GiB, active_bytes=0, chain=1)
    usage = snapshot_usage(hv, UsagePolicy(), now=NOW)  # type: ignore[arg-type]
    assert usage.filesystems[0].fills_in is None
    assert usage.warnings == ()
