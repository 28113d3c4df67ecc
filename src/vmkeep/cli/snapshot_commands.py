"""``vmkeep snapshot``: take, list, revert and delete external snapshots of VMs."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from vmkeep.cli import snapshot_upkeep_commands
from vmkeep.cli.output import escape, new_table, print_json, stdout, warn
from vmkeep.cli.repo_options import QuiesceOption
from vmkeep.cli.state import services_for
from vmkeep.cli.vm_commands import JsonFlag
from vmkeep.domain.snapshots import (
    RevertState,
    Snapshot,
    SnapshotKind,
    TreeEntry,
    format_duration,
    parse_duration,
)
from vmkeep.domain.units import format_size
from vmkeep.engine.snapshot_history import (
    DeleteResult,
    RevertResult,
    group_of,
    revert_group,
)
from vmkeep.engine.snapshot_history import delete_snapshot as delete_use_case
from vmkeep.engine.snapshot_history import revert_snapshot as revert_use_case
from vmkeep.engine.snapshots import (
    SnapshotCreation,
    SnapshotOptions,
    VmSnapshots,
    create_snapshots,
    list_snapshots,
)

if TYPE_CHECKING:
    from rich.table import Table

app = typer.Typer(
    help="External snapshots of VMs: take one in a blink, revert in seconds, merge it away.",
    no_args_is_help=True,
)


def _iso(epoch: int | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@app.command("create")
def create(
    ctx: typer.Context,
    vms: Annotated[list[str], typer.Argument(help="VM names; several make one consistency group.")],
    name: Annotated[
        str | None, typer.Option(help="Snapshot name (default vmkeep-<UTC time>).")
    ] = None,
    memory: Annotated[
        bool, typer.Option(help="Save RAM and device state too (live), not only the disks.")
    ] = False,
    quiesce: QuiesceOption = None,
    expire: Annotated[
        str | None, typer.Option(help="Mark the snapshot expired after this long, e.g. 72h, 3d.")
    ] = None,
    directory: Annotated[
        Path | None,
        typer.Option(
            "--dir",
            help="Put overlays and memory state here, not next to the disks (default: the "
            "config's [snapshots] dir, else next to each disk).",
        ),
    ] = None,
    freeze_timeout: Annotated[
        int, typer.Option(help="Seconds to wait for the guest agent to freeze or thaw.")
    ] = 10,
    as_json: JsonFlag = False,
) -> None:
    """Take an external snapshot of one or more VMs (atomic across each VM's disks)."""
    with services_for(ctx) as services:
        directory = directory or services.settings.snapshot_dir
        options = SnapshotOptions(
            name=name,
            memory=memory,
            quiesce=quiesce,
            expire=parse_duration(expire) if expire else None,
            directory=directory.absolute() if directory is not None else None,
            freeze_timeout=freeze_timeout,
        )
        result = create_snapshots(
            services.hypervisor(), services.host_locks(), vms, options, now=datetime.now(UTC)
        )
    if as_json:
        print_json(_creation_json(result))
        return
    for created in result.snapshots:
        snap = created.snapshot
        consistency = (
            "with memory"
            if snap.kind is SnapshotKind.MEMORY
            else ("quiesced" if created.quiesced else "crash-consistent")
        )
        expires = snap.facts.expires if snap.facts else None
        stdout.print(
            f"[bold]{escape(snap.vm)}[/]: snapshot {escape(snap.name)!r} taken, "
            f"{consistency}, {len(snap.disks)} disk(s) in {created.seconds:.2f} s"
            + (f", expires {_iso(expires)}" if expires else "")
        )
        warn(*created.warnings)
    if result.group:
        stdout.print(f"consistency group {result.group}")


def _creation_json(result: SnapshotCreation) -> dict[str, Any]:
    now = int(time.time())
    return {
        "group": result.group,
        "frozen_seconds": result.frozen_seconds,
        "snapshots": [
            {
                **_snapshot_json(created.snapshot, now),
                "warnings": list(created.warnings),
                "seconds": created.seconds,
            }
            for created in result.snapshots
        ],
    }


def _snapshot_json(snap: Snapshot, now: int, children: tuple[str, ...] = ()) -> dict[str, Any]:
    facts = snap.facts
    return {
        "vm": snap.vm,
        "name": snap.name,
        "parent": snap.parent,
        "children": list(children),
        "created": _iso(snap.created),
        "kind": snap.kind.value,
        "state": snap.state,
        "current": snap.current,
        "vmkeep": facts is not None,
        "quiesced": facts.quiesced if facts else None,
        "expires": _iso(facts.expires) if facts else None,
        "expired": snap.expired(now),
        "group": facts.group if facts else None,
        "deleting": facts.deleting if facts else False,
        "members": list(facts.members) if facts else [],
        "memory_file": snap.memory_file,
        "overlay_bytes": snap.overlay_bytes,
        "disks": [
            {
                "target": d.target,
                "frozen": d.frozen,
                "overlay": d.overlay,
                "overlay_bytes": d.overlay_bytes,
            }
            for d in snap.disks
        ],
    }


@app.command("list")
def list_command(
    ctx: typer.Context,
    vm: Annotated[
        str | None, typer.Argument(help="Only this VM (default: every VM with snapshots).")
    ] = None,
    tree: Annotated[bool, typer.Option(help="Show parents and children as a tree.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """List snapshots: creation time, kind, quiescing, overlay bytes, expiry."""
    with services_for(ctx) as services:
        found = list_snapshots(services.hypervisor(), vm)
    now = int(time.time())
    if as_json:
        print_json([_vm_json(v, now) for v in found])
        return
    if not found:
        stdout.print("no snapshots")
        return
    for item in found:
        if item.entries:
            stdout.print(_table(item, now, tree))
        else:
            stdout.print(f"{escape(item.vm)}: no snapshots")


def _vm_json(item: VmSnapshots, now: int) -> dict[str, Any]:
    return {
        "vm": item.vm,
        "state": item.state.value,
        "snapshots": [_snapshot_json(e.snapshot, now, e.children) for e in item.entries],
        "disks": [{"target": c.target, "chain": list(c.images)} for c in item.chains],
    }


def _table(item: VmSnapshots, now: int, tree: bool) -> Table:
    chains = ", ".join(f"{c.target}: {len(c.images)} image(s)" for c in item.chains)
    title = f"{escape(item.vm)} ({item.state.value}; {chains})"
    table = new_table(title=title, title_justify="left")
    for column in ("Snapshot", "Created", "Kind", "Quiesced", "Overlays", "Expires", "Group"):
        table.add_column(column, justify="right" if column == "Overlays" else "left")
    entries = item.entries if tree else sorted(item.entries, key=_created_key)
    for entry in entries:
        table.add_row(*_row(entry, now, tree))
    return table


def _created_key(entry: TreeEntry) -> tuple[int, str]:
    return (entry.snapshot.created or 0, entry.snapshot.name)


def _row(entry: TreeEntry, now: int, tree: bool) -> list[str]:
    snap = entry.snapshot
    facts = snap.facts
    label = escape(snap.name) + (" [bold](current)[/]" if snap.current else "")
    if facts is not None and facts.deleting:
        label += " [red](being deleted: run snapshot repair)[/]"
    if tree and entry.depth:
        label = "  " * (entry.depth - 1) + "└─ " + label
    if snap.kind is SnapshotKind.MEMORY:
        quiesced = "n/a"  # RAM and disks are consistent with each other
    else:
        quiesced = "-" if facts is None else ("yes" if facts.quiesced else "[yellow]no[/]")
    return [
        label,
        _iso(snap.created) or "-",
        snap.kind.value,
        quiesced,
        format_size(snap.overlay_bytes),
        _expiry(snap, now),
        facts.group if facts and facts.group else "-",
    ]


def _expiry(snap: Snapshot, now: int) -> str:
    expires = snap.facts.expires if snap.facts else None
    if expires is None:
        return "-"
    if expires <= now:
        return f"[red]expired {format_duration(now - expires)} ago[/]"
    return f"in {format_duration(expires - now)}"


@app.command("revert")
def revert(
    ctx: typer.Context,
    vm: Annotated[str, typer.Argument(help="The VM.")],
    name: Annotated[str, typer.Argument(help="The snapshot to go back to.")],
    running: Annotated[bool, typer.Option("--running", help="Leave the VM running.")] = False,
    paused: Annotated[bool, typer.Option("--paused", help="Leave the VM paused.")] = False,
    member_only: Annotated[
        bool,
        typer.Option(
            "--member-only", help="For a group snapshot: revert only this VM, not the group."
        ),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Bring the VM back to a snapshot: its disks, and for a memory snapshot its RAM and
    running processes. Later snapshots stay. A snapshot taken as a consistency group reverts
    every member. Default: a memory snapshot resumes as it was taken; a disk-only one boots
    if the VM was running."""
    if running and paused:
        raise typer.BadParameter("give --running or --paused, not both", param_hint="--running")
    wanted = RevertState.RUNNING if running else RevertState.PAUSED if paused else None
    with services_for(ctx) as services:
        hv, locks = services.hypervisor(), services.host_locks()
        if not member_only and group_of(hv, vm, name) is not None:
            grouped = revert_group(hv, locks, vm, name, wanted)
            results, group = list(grouped.results), grouped.group
        else:
            results, group = [revert_use_case(hv, locks, vm, name, wanted)], None
    if as_json:
        mine = next(r for r in results if r.vm == vm)
        print_json(
            {**_revert_json(mine), "group": group, "members": [_revert_json(r) for r in results]}
        )
        return
    for result in results:
        stdout.print(
            f"[bold]{escape(result.vm)}[/]: reverted to {escape(result.snapshot)!r} "
            f"({result.kind.value}) in {result.seconds:.2f} s (down {result.downtime:.2f} s); "
            f"now {result.state.value}"
        )
    if group:
        stdout.print(f"consistency group {group}: {len(results)} VMs reverted")


def _revert_json(result: RevertResult) -> dict[str, Any]:
    return {
        "vm": result.vm,
        "snapshot": result.snapshot,
        "kind": result.kind.value,
        "state": result.state.value,
        "seconds": result.seconds,
        "downtime": result.downtime,
    }


@app.command("delete")
def delete(
    ctx: typer.Context,
    vm: Annotated[str, typer.Argument(help="The VM.")],
    name: Annotated[str, typer.Argument(help="The snapshot to delete.")],
    as_json: JsonFlag = False,
) -> None:
    """Delete a snapshot, merging its data into the chain (the VM may keep running)."""
    with services_for(ctx) as services:
        result = delete_use_case(services.hypervisor(), services.host_locks(), vm, name)
    if as_json:
        print_json(_delete_json(result))
        return
    merged = len(result.deletion.merged)
    removed = len(result.deletion.removed)
    stdout.print(
        f"[bold]{escape(result.vm)}[/]: deleted snapshot {escape(result.snapshot)!r} in "
        f"{result.seconds:.2f} s ({merged} image(s) merged, {removed} file(s) removed)"
    )


def _delete_json(result: DeleteResult) -> dict[str, Any]:
    return {
        "vm": result.vm,
        "snapshot": result.snapshot,
        "merged": [{"top": top, "base": base} for top, base in result.deletion.merged],
        "removed": list(result.deletion.removed),
        "seconds": result.seconds,
    }


app.command("prune")(snapshot_upkeep_commands.prune)
app.command("usage")(snapshot_upkeep_commands.usage)
app.command("repair")(snapshot_upkeep_commands.repair)
