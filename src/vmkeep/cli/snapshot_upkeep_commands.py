"""``vmkeep snapshot prune`` and ``vmkeep snapshot usage``: keeping snapshot sprawl in check.
Registered on the ``snapshot`` group by snapshot_commands.py."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from vmkeep.cli.output import escape, new_table, print_json, stdout, warn
from vmkeep.cli.state import services_for
from vmkeep.cli.vm_commands import JsonFlag
from vmkeep.domain.snapshot_policy import (
    DEFAULT_FILL_WARNING,
    DEFAULT_MAX_AGE,
    DEFAULT_MAX_CHAIN,
    PrunePolicy,
)
from vmkeep.domain.snapshots import format_duration, parse_duration
from vmkeep.domain.units import format_size
from vmkeep.engine.snapshot_repair import repair_snapshots
from vmkeep.engine.snapshot_upkeep import (
    PruneOutcome,
    SnapshotUsage,
    UsagePolicy,
    prune_snapshots,
    snapshot_usage,
)


def prune(
    ctx: typer.Context,
    vms: Annotated[
        list[str] | None, typer.Argument(help="Only these VMs (default: every VM).")
    ] = None,
    older_than: Annotated[
        str | None, typer.Option(help="Delete snapshots older than this, e.g. 72h, 3d.")
    ] = None,
    keep_last: Annotated[
        int | None,
        typer.Option(help="Keep the newest N snapshots of each VM; alone, delete all the others."),
    ] = None,
    expired: Annotated[
        bool, typer.Option("--expired", help="Delete snapshots whose --expire time passed.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only show what would be deleted.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Delete (merge away) vmkeep's snapshots by policy. Others' snapshots are never touched.
    Exits non-zero if a deletion failed; the others are still done."""
    policy = PrunePolicy(
        older_than=parse_duration(older_than) if older_than else None,
        keep_last=keep_last,
        expired=expired,
    )
    with services_for(ctx) as services:
        outcomes = prune_snapshots(
            services.hypervisor(),
            services.host_locks(),
            policy,
            vms=vms or (),
            now=int(time.time()),
            dry_run=dry_run,
        )
    failed = [o for o in outcomes if o.error is not None]
    if as_json:
        print_json({"dry_run": dry_run, "snapshots": [_outcome_json(o) for o in outcomes]})
    else:
        _print_outcomes(outcomes, dry_run)
    if failed:
        raise typer.Exit(failed[0].error.exit_code if failed[0].error else 1)


def _outcome_json(outcome: PruneOutcome) -> dict[str, Any]:
    return {
        "vm": outcome.vm,
        "snapshot": outcome.decision.snapshot.name,
        "reasons": list(outcome.decision.reasons),
        "deleted": outcome.deleted,
        "error": str(outcome.error) if outcome.error else None,
    }


def _print_outcomes(outcomes: list[PruneOutcome], dry_run: bool) -> None:
    if not outcomes:
        stdout.print("nothing to prune")
        return
    for outcome in outcomes:
        what = f"{escape(outcome.vm)}: {escape(outcome.decision.snapshot.name)!r}"
        why = ", ".join(outcome.decision.reasons)
        if dry_run:
            stdout.print(f"would delete {what} ({why})")
        elif outcome.error is None:
            stdout.print(f"deleted {what} ({why})")
        else:
            stdout.print(f"[red]failed[/] to delete {what}: {escape(str(outcome.error))}")
    deleted = sum(1 for o in outcomes if o.deleted)
    if not dry_run:
        stdout.print(f"{deleted} of {len(outcomes)} snapshot(s) deleted")


def usage(
    ctx: typer.Context,
    max_age: Annotated[
        str | None,
        typer.Option(help="Warn about snapshots older than this (default: config, else 72h)."),
    ] = None,
    max_chain: Annotated[
        int | None,
        typer.Option(
            help="Warn when a disk has more images than this below it (default: config, else 3)."
        ),
    ] = None,
    fill_warning: Annotated[
        str | None,
        typer.Option(
            help="Warn when a filesystem is forecast to fill within this (default: config, "
            "else 24h)."
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Bytes in snapshot overlays per VM and filesystem, growth rate, free space, and when
    each filesystem fills at that rate; warnings for what breaks policy."""
    with services_for(ctx) as services:
        configured = services.settings.snapshot_policy
        max_age = max_age or configured.max_age
        fill_warning = fill_warning or configured.fill_warning
        chain = max_chain if max_chain is not None else configured.max_chain
        policy = UsagePolicy(
            max_age=parse_duration(max_age) if max_age else DEFAULT_MAX_AGE,
            max_chain=chain if chain is not None else DEFAULT_MAX_CHAIN,
            fill_warning=parse_duration(fill_warning) if fill_warning else DEFAULT_FILL_WARNING,
        )
        report = snapshot_usage(services.hypervisor(), policy, now=int(time.time()))
    if as_json:
        print_json(_usage_json(report))
        return
    _print_usage(report)


def _usage_json(report: SnapshotUsage) -> dict[str, Any]:
    return {
        "vms": [
            {
                "vm": v.vm,
                "snapshots": v.snapshots,
                "overlay_bytes": v.overlay_bytes,
                "active_bytes": v.active_bytes,
                "growth_bytes_per_hour": None if v.growth is None else round(v.growth * 3600),
                "longest_chain": v.longest_chain,
                "filesystems": list(v.filesystems),
            }
            for v in report.vms
        ],
        "filesystems": [
            {
                "filesystem": f.filesystem,
                "free_bytes": f.free,
                "overlay_bytes": f.overlay_bytes,
                "growth_bytes_per_hour": round(f.growth * 3600),
                "fills_in_hours": None if f.fills_in is None else round(f.fills_in / 3600, 1),
                "vms": list(f.vms),
            }
            for f in report.filesystems
        ],
        "warnings": list(report.warnings),
    }


def _per_hour(growth: float | None) -> str:
    return "-" if growth is None else f"{format_size(int(growth * 3600))}/h"


def _print_usage(report: SnapshotUsage) -> None:
    if not report.vms:
        stdout.print("no snapshots")
        return
    vms = new_table(title="Snapshots per VM", title_justify="left")
    for column in ("VM", "Snapshots", "Overlays", "Active", "Growth", "Longest chain"):
        vms.add_column(column, justify="left" if column == "VM" else "right")
    for v in report.vms:
        vms.add_row(
            escape(v.vm),
            str(v.snapshots),
            format_size(v.overlay_bytes),
            format_size(v.active_bytes),
            _per_hour(v.growth),
            str(v.longest_chain),
        )
    stdout.print(vms)
    filesystems = new_table(title="Per filesystem", title_justify="left")
    for column in ("Filesystem", "Free", "Overlays", "Growth", "Fills in", "VMs"):
        filesystems.add_column(
            column, justify="left" if column in ("Filesystem", "VMs") else "right"
        )
    for f in report.filesystems:
        filesystems.add_row(
            escape(f.filesystem),
            format_size(f.free),
            format_size(f.overlay_bytes),
            _per_hour(f.growth),
            "-" if f.fills_in is None else format_duration(int(f.fills_in)),
            escape(", ".join(f.vms)),
        )
    stdout.print(filesystems)
    warn(*report.warnings)


def repair(
    ctx: typer.Context,
    vm: Annotated[str, typer.Argument(help="The VM.")],
    as_json: JsonFlag = False,
) -> None:
    """Finish what an interrupted vmkeep (killed mid-create, -revert or -delete) left: thaw a
    frozen guest, complete block commits, finish interrupted deletes, remove overlay and
    memory files nothing uses. Safe to run at any time; does nothing when all is well."""
    with services_for(ctx) as services:
        result = repair_snapshots(services.hypervisor(), services.host_locks(), vm)
    if as_json:
        print_json(
            {"vm": result.vm, "actions": list(result.actions), "warnings": list(result.warnings)}
        )
        return
    if not result.actions:
        stdout.print(f"[bold]{escape(result.vm)}[/]: nothing to repair")
    for action in result.actions:
        stdout.print(f"[bold]{escape(result.vm)}[/]: {escape(action)}")
    warn(*result.warnings)
