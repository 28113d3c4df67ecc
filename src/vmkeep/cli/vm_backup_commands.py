"""``vmkeep backup``: back up running or shut-off VMs."""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from vmkeep.cli.backup_commands import RestoreWorkersOption, WorkersOption
from vmkeep.cli.output import escape, new_table, print_json, stderr, stdout, warn
from vmkeep.cli.progress import TerminalProgress
from vmkeep.cli.repo_options import (
    JsonOption,
    LimitUploadOption,
    PasswordFileOption,
    QuiesceOption,
    RepoOption,
    S3EndpointOption,
    TagOption,
    parse_rate,
)
from vmkeep.cli.state import settings_for
from vmkeep.domain.units import format_size
from vmkeep.engine.vm_backup import VmBackupOptions, VmBackupResult, backup_vms
from vmkeep.engine.vm_restore import VmRestoreRequest, restore_vm
from vmkeep.services.context import open_services
from vmkeep.services.repository import (
    RepoAccess,
    repo_session,
    restore_workers,
    vm_backup_deps,
)


def backup_command(
    ctx: typer.Context,
    vms: Annotated[list[str], typer.Argument(help="VM names, as libvirt knows them.")],
    repo: RepoOption = None,
    full: Annotated[
        bool, typer.Option(help="Take a full backup even if an incremental is possible.")
    ] = False,
    quiesce: QuiesceOption = None,
    group: Annotated[bool, typer.Option(help="One consistency point for all the VMs.")] = False,
    tag: TagOption = None,
    password_file: PasswordFileOption = None,
    s3_endpoint: S3EndpointOption = None,
    limit_upload: LimitUploadOption = None,
    workers: WorkersOption = None,
    as_json: JsonOption = False,
) -> None:
    """Back up VMs while they run: full, then incremental (only changed blocks)."""
    settings = settings_for(ctx, repo, s3_endpoint)
    access = RepoAccess(password_file=password_file, limit_upload=parse_rate(limit_upload))
    progress = TerminalProgress(quiet=as_json)
    options = VmBackupOptions(full=full, quiesce=quiesce, group=group, tags=tuple(tag or ()))
    with (
        open_services(settings) as services,
        repo_session(settings, access, os.environ, progress, workers, with_cache=True) as session,
    ):
        deps = vm_backup_deps(settings, session, services.hypervisor())
        results = backup_vms(deps, vms, options, now=datetime.now(UTC), host=socket.gethostname())
    if as_json:
        print_json([_result_json(r) for r in results])
    else:
        for result in results:
            _render(result)
    failed = [r for r in results if r.manifest is None]
    if failed:
        raise typer.Exit(failed[0].exit_code or 1)


def _result_json(result: VmBackupResult) -> dict[str, object]:
    manifest = result.manifest
    if manifest is None:
        return {"vm": result.vm, "error": result.error, "exit_code": result.exit_code}
    return {
        "vm": result.vm,
        "backup_id": manifest.backup_id,
        "kind": manifest.kind,
        "reason": manifest.reason,
        "parent": manifest.parent,
        "quiesced": manifest.quiesced,
        "checkpoint": manifest.checkpoint,
        "group": manifest.group,
        "warnings": list(manifest.warnings),
        "disks": [
            {
                "name": d.name,
                "mode": d.mode,
                "size": d.size,
                "read_bytes": d.read_bytes,
                "new_bytes": d.new_bytes,
                "stored_bytes": d.stored_bytes,
                "seconds": d.seconds,
            }
            for d in manifest.disks
        ],
    }


def _render(result: VmBackupResult) -> None:
    manifest = result.manifest
    if manifest is None:
        stderr.print(f"[bold red]failed:[/] {escape(result.vm)}: {escape(result.error or '')}")
        return
    kind = manifest.kind + (f" ({manifest.reason})" if manifest.reason else "")
    quiesced = "quiesced" if manifest.quiesced else "crash-consistent"
    stdout.print(
        f"[bold]{escape(result.vm)}[/]: backup {manifest.backup_id}, {escape(kind)}, {quiesced}"
    )
    table = new_table("Disk", "Mode", "Size", "Read", "New", "Stored", "Time", show_edge=False)
    for disk in manifest.disks:
        table.add_row(
            disk.name,
            disk.mode,
            format_size(disk.size),
            format_size(disk.read_bytes),
            format_size(disk.new_bytes),
            format_size(disk.stored_bytes),
            f"{disk.seconds:.1f} s",
        )
    stdout.print(table)
    warn(*manifest.warnings)


def restore_command(
    ctx: typer.Context,
    backup_id: Annotated[str, typer.Argument(help="The backup to restore (see `vmkeep list`).")],
    to: Annotated[
        Path | None, typer.Option("--to", help="Directory for the restored disks and domain.xml.")
    ] = None,
    as_vm: Annotated[
        str | None, typer.Option("--as", help="Define a new VM of this name from the backup.")
    ] = None,
    disk: Annotated[
        list[str] | None, typer.Option(help="Restore only this disk (vda, ...); repeatable.")
    ] = None,
    image_format: Annotated[
        str, typer.Option("--format", help="qcow2, raw, vmdk or vhdx.")
    ] = "qcow2",
    start: Annotated[bool, typer.Option(help="Start the new VM (with --as).")] = False,
    force: Annotated[
        bool, typer.Option(help="Overwrite existing files, or a shut-off VM of that name.")
    ] = False,
    repo: RepoOption = None,
    password_file: PasswordFileOption = None,
    s3_endpoint: S3EndpointOption = None,
    workers: RestoreWorkersOption = None,
    as_json: JsonOption = False,
) -> None:
    """Restore a backup: its disks to a directory (--to), or as a new VM (--as)."""
    if to is None and as_vm is None:
        raise typer.BadParameter("give --to DIR, --as NEWVM, or both", param_hint="--to/--as")
    settings = settings_for(ctx, repo, s3_endpoint)
    target = to if to is not None else settings.data_dir / "restored" / str(as_vm)
    request = VmRestoreRequest(
        backup_id=backup_id,
        target_dir=target.absolute(),
        new_name=as_vm,
        disks=tuple(disk or ()),
        image_format=image_format,
        start=start,
        force=force,
    )
    progress = TerminalProgress(quiet=as_json)
    with (
        open_services(settings) as services,
        repo_session(
            settings,
            RepoAccess(password_file=password_file),
            os.environ,
            progress,
            workers or restore_workers(),
        ) as session,
    ):
        result = restore_vm(session, services.hypervisor(), request)
    if as_json:
        print_json(result)
        return
    for restored in result.disks:
        stdout.print(f"restored {restored.name} to {escape(restored.path)}")
    if result.vm:
        state = "started" if result.started else "defined (not started)"
        stdout.print(f"VM {escape(result.vm)} {state}")
