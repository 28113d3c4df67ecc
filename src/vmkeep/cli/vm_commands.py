"""``vmkeep vm``: the inventory of every domain libvirt knows."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer

from vmkeep.cli.output import escape, new_grid, new_table, print_json, stdout
from vmkeep.cli.state import services_for
from vmkeep.domain.checkpoints import checkpoint_repository
from vmkeep.domain.errors import UsageError
from vmkeep.domain.inventory import AgentStatus, DiskInfo, VmInfo
from vmkeep.domain.units import format_size

if TYPE_CHECKING:
    from rich.table import Table

app = typer.Typer(help="Inspect the VMs libvirt knows, whoever created them.", no_args_is_help=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


@app.command("list")
def list_vms(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List every VM: running or not, persistent or transient."""
    with services_for(ctx) as services:
        vms = services.hypervisor().list_vms()
    if as_json:
        print_json(vms)
        return
    table = new_table(title=None, show_edge=False)
    for column in (
        "Name",
        "State",
        "vCPUs",
        "Memory",
        "Disks",
        "Size",
        "Agent",
        "Snapshots",
        "Checkpoints",
    ):
        table.add_column(
            column, justify="right" if column in ("vCPUs", "Memory", "Size") else "left"
        )
    for vm in vms:
        disks = [d for d in vm.disks if d.device.value in ("disk", "lun")]
        total = sum(d.virtual_size or 0 for d in disks)
        table.add_row(
            escape(vm.name),
            vm.state.value,
            str(vm.vcpus),
            format_size(vm.memory),
            str(len(disks)),
            format_size(total) if disks else "-",
            _agent_text(vm.agent),
            str(len(vm.snapshots)),
            str(len(vm.checkpoints)),
        )
    if not vms:
        stdout.print("no VMs defined")
        return
    stdout.print(table)


@app.command("show")
def show_vm(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The VM's name, exactly as libvirt knows it.")],
    as_json: JsonFlag = False,
) -> None:
    """Show one VM: state, CPUs, memory, disks, backing chains, agent, checkpoints, snapshots."""
    with services_for(ctx) as services:
        vm = services.hypervisor().get_vm(name)
    if as_json:
        print_json(vm)
        return
    render_vm(vm)


@app.command("drop-checkpoints")
def drop_checkpoints_command(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The VM's name, exactly as libvirt knows it.")],
    repo_id: Annotated[
        str | None,
        typer.Option(
            help="The repository whose checkpoints go: its id, or the 8 hex digits after "
            "'vmkeep-' in the checkpoint names."
        ),
    ] = None,
    all_repositories: Annotated[
        bool, typer.Option("--all", help="Every checkpoint vmkeep made, for any repository.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only show what would be deleted.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Delete the checkpoints vmkeep made on a VM for a repository that is gone (or, with
    --all, for every repository). Checkpoints vmkeep did not make are never touched; the next
    backup into that repository is a full one."""
    from vmkeep.engine.checkpoint_cleanup import drop_checkpoints

    if (repo_id is None) == (not all_repositories):
        raise UsageError("give either --repo-id ID or --all")
    with services_for(ctx) as services:
        result = drop_checkpoints(
            services.hypervisor(),
            services.host_locks(),
            name,
            repo_id=repo_id,
            dry_run=dry_run,
        )
    if as_json:
        print_json(result)
        return
    verb, keep = ("would delete", "keep") if dry_run else ("deleted", "kept")
    for checkpoint in result.dropped:
        stdout.print(f"{verb} {escape(checkpoint)}")
    stdout.print(
        f"{escape(result.vm)}: {verb} {len(result.dropped)} checkpoint(s), {keep} "
        f"{len(result.kept)}"
    )


def render_vm(vm: VmInfo) -> None:
    """The human view of one VM, shared by ``vm show`` and ``lab create``."""
    summary = new_grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("Name", escape(vm.name))
    summary.add_row("UUID", vm.uuid)
    summary.add_row("State", vm.state.value)
    summary.add_row("Persistent", "yes" if vm.persistent else "no (transient)")
    summary.add_row("vCPUs", str(vm.vcpus))
    summary.add_row("Memory", f"{format_size(vm.memory)} (max {format_size(vm.max_memory)})")
    summary.add_row("Guest agent", _agent_text(vm.agent))
    if vm.lab_dir:
        summary.add_row("Lab directory", escape(vm.lab_dir))
    stdout.print(summary)
    stdout.print(_disk_table(vm.disks))
    if vm.checkpoints:
        checkpoints = new_table(
            "Checkpoint", "Created", "Parent", "Disks", "vmkeep repository", title="Checkpoints"
        )
        for cp in vm.checkpoints:
            checkpoints.add_row(
                escape(cp.name),
                _time(cp.created),
                escape(cp.parent or "-"),
                ", ".join(cp.disks),
                checkpoint_repository(cp.name) or "- (not vmkeep's)",
            )
        stdout.print(checkpoints)
    else:
        stdout.print("Checkpoints: none")
    if vm.snapshots:
        snapshots = new_table(
            "Snapshot", "Created", "Parent", "State", "Kind", "Current", title="Snapshots"
        )
        for snap in vm.snapshots:
            kind = ("external" if snap.external else "internal") + (
                " + memory" if snap.memory else ""
            )
            snapshots.add_row(
                escape(snap.name),
                _time(snap.created),
                escape(snap.parent or "-"),
                snap.state or "-",
                kind,
                "yes" if snap.current else "",
            )
        stdout.print(snapshots)
    else:
        stdout.print("Snapshots: none")


def _disk_table(disks: tuple[DiskInfo, ...]) -> Table:
    table = new_table(title="Disks")
    for column in ("Target", "Device", "Type"):
        table.add_column(column, no_wrap=True)
    table.add_column("Source", overflow="fold")
    table.add_column("Format", no_wrap=True)
    table.add_column("Virtual", justify="right", no_wrap=True)
    table.add_column("Allocated", justify="right", no_wrap=True)
    table.add_column("Backing chain", overflow="fold")
    for disk in disks:
        chain = " → ".join(
            f"{b.source} ({b.format})" if b.format else b.source for b in disk.backing_chain
        )
        table.add_row(
            disk.target,
            disk.device.value + (" (ro)" if disk.readonly else ""),
            disk.source_type.value,
            escape(disk.source or "(empty)"),
            disk.format or "-",
            format_size(disk.virtual_size),
            format_size(disk.allocated_size),
            escape(chain or "-"),
        )
    return table


def _agent_text(status: AgentStatus) -> str:
    return {
        AgentStatus.RESPONDING: "[green]responding[/green]",
        AgentStatus.NOT_RESPONDING: "[yellow]not responding[/yellow]",
    }.get(status, status.value)


def _time(epoch: int | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
