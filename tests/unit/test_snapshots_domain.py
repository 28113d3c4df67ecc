"""Pure snapshot rules: recorded facts, names and file names, expiry, free space, the tree."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from vmkeep.domain.errors import UsageError
from vmkeep.domain.inventory import DiskDevice, DiskInfo, SourceType
from vmkeep.domain.snapshot_space import (
    MEMORY_OVERHEAD,
    OVERLAY_RESERVE,
    WRITE_HEADROOM,
    SpaceDemand,
    merge_demands,
    space_shortfalls,
)
from vmkeep.domain.snapshots import (
    DESCRIPTION_PREFIX,
    Snapshot,
    SnapshotDisk,
    SnapshotFacts,
    SnapshotKind,
    decode_facts,
    default_snapshot_name,
    encode_facts,
    format_duration,
    image_stem,
    layout_changes,
    memory_path,
    overlay_path,
    parse_duration,
    safe_component,
    snapshot_disks,
    tree_order,
    validate_snapshot_name,
)

MiB = 1 << 20


def test_facts_round_trip_through_the_description() -> None:
    facts = SnapshotFacts(
        quiesced=True, expires=1_800_000_000, group="ab12cd34", members=("a", "b")
    )
    text = encode_facts(facts)
    assert text.startswith(DESCRIPTION_PREFIX)
    assert decode_facts(text) == facts


@pytest.mark.parametrize(
    "description",
    [
        None,
        "",
        "kernel upgrade",  # someone else's snapshot
        DESCRIPTION_PREFIX + "{not json",
        DESCRIPTION_PREFIX + "[1, 2]",
        DESCRIPTION_PREFIX + '{"expires": "tomorrow", "members": []}',
        DESCRIPTION_PREFIX + '{"expires": true, "members": []}',
        DESCRIPTION_PREFIX + '{"group": 5, "members": []}',
        DESCRIPTION_PREFIX + '{"members": "a"}',
    ],
)
def test_foreign_or_damaged_descriptions_carry_no_facts(description: str | None) -> None:
    assert decode_facts(description) is None


@pytest.mark.parametrize("name", ["pre $(rm -rf x);|&<>`\"q\"` 'ü' *", "a", "vmkeep-1", "x" * 200])
def test_names_with_shell_metacharacters_are_fine(name: str) -> None:
    validate_snapshot_name(name)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "non-empty"),
        (" padded", "leading"),
        ("a/b", "'/'"),
        ("tab\there", "control"),
        ("é" * 101, "200 bytes"),
    ],
)
def test_bad_names_are_refused(name: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        validate_snapshot_name(name)


def test_default_name_is_sortable_utc() -> None:
    now = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    assert default_snapshot_name(now) == "vmkeep-20260304T050607Z"


def test_file_names_are_safe_and_stay_next_to_the_disk() -> None:
    assert safe_component('pre $(x);|& "q" ü') == "pre_x_q"
    assert safe_component("...") == "x"
    assert len(safe_component("y" * 100)) == 40
    assert image_stem("/var/lib/vm/vda.qcow2") == "vda"
    assert image_stem("/var/lib/vm/vda.before.1a2b3c.qcow2") == "vda"
    path = overlay_path("/var/lib/vm/vda.before.1a2b3c.qcow2", "after $(x)", "ffee00")
    assert path == "/var/lib/vm/vda.after_x.ffee00.qcow2"
    elsewhere = overlay_path("/dev/vg/root", "s", "000001", directory="/srv/snaps", prefix="r-")
    assert elsewhere == "/srv/snaps/root.r-s.000001.qcow2"
    assert memory_path("/srv", 'db "1"', "s/x", "abc") == "/srv/db_1.s_x.abc.mem"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("72h", 72 * 3600),
        ("3d", 3 * 86400),
        ("1d12h", 36 * 3600),
        ("90m", 5400),
        ("2W", 14 * 86400),
    ],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "72", "h", "3 days", "-1h", "0h", "1h x"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(UsageError):
        parse_duration(text)


def test_durations_are_shown_short() -> None:
    assert format_duration(3 * 86400 - 3600) == "2d 23h"
    assert format_duration(86400) == "1d"
    assert format_duration(5 * 3600 + 600) == "5h 10m"
    assert format_duration(2700) == "45m"
    assert format_duration(30) == "30s"
    assert format_duration(-5) == "0s"


def test_space_estimate_is_conservative_and_explained() -> None:
    demand = SpaceDemand("/var", free=100 * MiB, overlays=2, memory=256 * MiB, memory_files=1)
    assert demand.needed == 2 * OVERLAY_RESERVE + 256 * MiB + MEMORY_OVERHEAD + WRITE_HEADROOM
    (message,) = space_shortfalls([demand])
    assert message == (
        "/var needs at least 338.0 MiB (memory state 272.0 MiB, 2 overlay(s) 2.0 MiB, "
        "64.0 MiB headroom for new writes) but has 100.0 MiB free"
    )


def test_demands_on_one_filesystem_add_up() -> None:
    demands = [
        SpaceDemand("/var", free=80 * MiB, overlays=1),
        SpaceDemand("/var", free=80 * MiB, overlays=1),
        SpaceDemand("/srv", free=10 << 30, memory=1 << 30, memory_files=1),
    ]
    merged = {d.filesystem: d for d in merge_demands(demands)}
    assert merged["/var"].overlays == 2
    assert space_shortfalls(demands) == []  # 66 MiB needed on /var, 1.1 GiB on /srv
    tight = [*demands, SpaceDemand("/var", free=80 * MiB, overlays=20)]
    (message,) = space_shortfalls(tight)
    assert message.startswith("/var needs at least 86.0 MiB")


def test_only_writable_file_and_block_disks_are_snapshotted() -> None:
    disks = [
        DiskInfo("vda", DiskDevice.DISK, SourceType.FILE, "/a.qcow2", "qcow2"),
        DiskInfo("vdb", DiskDevice.DISK, SourceType.BLOCK, "/dev/vg/b", "raw"),
        DiskInfo("vdc", DiskDevice.DISK, SourceType.FILE, "/c.img", "raw", readonly=True),
        DiskInfo("sda", DiskDevice.CDROM, SourceType.FILE, "/x.iso", "raw"),
        DiskInfo("vdd", DiskDevice.DISK, SourceType.NETWORK, "rbd://h/p", "raw"),
        DiskInfo("hdc", DiskDevice.CDROM, SourceType.FILE, None, None),
    ]
    assert sorted(snapshot_disks(disks)) == ["vda", "vdb"]


def test_layout_changes_name_added_and_removed_disks() -> None:
    assert layout_changes(["vda", "vdb"], ["vdb", "vda"]) == []
    assert layout_changes(["vda", "vdc"], ["vda", "vdb"]) == [
        "vdc was added after the snapshot",
        "vdb was removed after the snapshot",
    ]


def snap(name: str, parent: str | None, created: int) -> Snapshot:
    return Snapshot(vm="vm", name=name, kind=SnapshotKind.DISK, created=created, parent=parent)


def test_tree_order_is_depth_first_oldest_first() -> None:
    snapshots = [
        snap("b2", "a", 30),
        snap("a", None, 10),
        snap("b1", "a", 20),
        snap("c", "b1", 40),
        snap("orphan", "gone", 5),  # its parent was deleted by someone else
    ]
    order = [(e.snapshot.name, e.depth, e.children) for e in tree_order(snapshots)]
    assert order == [
        ("orphan", 0, ()),
        ("a", 0, ("b1", "b2")),
        ("b1", 1, ("c",)),
        ("c", 2, ()),
        ("b2", 1, ()),
    ]


def test_tree_order_survives_a_parent_cycle() -> None:
    order = tree_order([snap("x", "y", 1), snap("y", "x", 2)])
    assert sorted(e.snapshot.name for e in order) == ["x", "y"]


def test_overlay_bytes_and_expiry() -> None:
    disks = (
        SnapshotDisk("vda", "/a", "qcow2", "/b", 100),
        SnapshotDisk("vdb", "/c", "qcow2", "/d", 5),
    )
    facts = SnapshotFacts(expires=1000)
    snapshot = Snapshot("vm", "s", SnapshotKind.DISK, disks=disks, facts=facts)
    assert snapshot.overlay_bytes == 105
    assert snapshot.expired(1000) and not snapshot.expired(999)
    unknown = Snapshot("vm", "s", SnapshotKind.DISK, disks=(SnapshotDisk("vda", "/a", "raw"),))
    assert unknown.overlay_bytes is None
    assert not unknown.expired(10**12)
