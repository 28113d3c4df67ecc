"""``vmkeep backup-image``, ``restore-image`` and ``list``: the repository without a VM."""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from vmkeep.cli.output import escape, new_table, print_json, stdout
from vmkeep.cli.progress import TerminalProgress
from vmkeep.cli.repo_options import (
    JsonOption,
    LimitUploadOption,
    PasswordFileOption,
    RepoOption,
    S3EndpointOption,
    TagOption,
    parse_rate,
)
from vmkeep.cli.state import open_repository_for, settings_for
from vmkeep.domain.backup import BackupManifest
from vmkeep.domain.errors import VmkeepError
from vmkeep.domain.units import format_size
from vmkeep.engine.image_backup import (
    ImageBackupRequest,
    ImageRestoreRequest,
    backup_image,
    restore_image,
)
from vmkeep.services.repository import RepoAccess, repo_session, restore_workers

WorkersOption = Annotated[
    int | None,
    typer.Option(help="Parallel chunk workers (default: twice the usable CPUs, at least 4)."),
]
RestoreWorkersOption = Annotated[
    int | None,
    typer.Option(help="Parallel chunk workers (default: four times the usable CPUs, at least 8)."),
]


def backup_image_command(
    ctx: typer.Context,
    image: Annotated[Path, typer.Argument(help="A qcow2 or raw image no running VM is using.")],
    repo: RepoOption = None,
    name: Annotated[str | None, typer.Option(help="Name of the disk in the backup.")] = None,
    tag: TagOption = None,
    password_file: PasswordFileOption = None,
    s3_endpoint: S3EndpointOption = None,
    limit_upload: LimitUploadOption = None,
    workers: WorkersOption = None,
    as_json: JsonOption = False,
) -> None:
    """Back up a disk image file: only allocated data is read, only new chunks are stored."""
    settings = settings_for(ctx, repo, s3_endpoint)
    access = RepoAccess(password_file=password_file, limit_upload=parse_rate(limit_upload))
    progress = TerminalProgress(quiet=as_json)
    with repo_session(settings, access, os.environ, progress, workers, with_cache=True) as session:
        manifest = backup_image(
            session,
            ImageBackupRequest(source=image.absolute(), name=name, tags=tuple(tag or ())),
            now=datetime.now(UTC),
            host=socket.gethostname(),
        )
    if as_json:
        print_json(manifest)
        return
    disk = manifest.disks[0]
    rate = disk.read_bytes / disk.seconds / (1 << 20) if disk.seconds else 0.0
    stdout.print(f"backup {manifest.backup_id} of {escape(disk.name)} ({format_size(disk.size)})")
    stdout.print(
        f"read {format_size(disk.read_bytes)} in {disk.seconds:.1f} s ({rate:.0f} MiB/s), "
        f"new {format_size(disk.new_bytes)}, stored {format_size(disk.stored_bytes)}, "
        f"{disk.zero_chunks} zero chunks"
    )


def restore_image_command(
    ctx: typer.Context,
    backup_id: Annotated[str, typer.Argument(help="The backup to restore (see `vmkeep list`).")],
    to: Annotated[Path, typer.Option("--to", help="The image file to create.")],
    repo: RepoOption = None,
    image_format: Annotated[str, typer.Option("--format", help="qcow2 or raw.")] = "qcow2",
    disk: Annotated[str | None, typer.Option(help="Which disk, for multi-disk backups.")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite the target if it exists.")] = False,
    password_file: PasswordFileOption = None,
    s3_endpoint: S3EndpointOption = None,
    workers: RestoreWorkersOption = None,
    as_json: JsonOption = False,
) -> None:
    """Restore one disk of a backup into a new thin image, verified chunk by chunk."""
    settings = settings_for(ctx, repo, s3_endpoint)
    progress = TerminalProgress(quiet=as_json)
    access = RepoAccess(password_file=password_file)
    workers = workers or restore_workers()
    with repo_session(settings, access, os.environ, progress, workers) as session:
        restored = restore_image(
            session,
            ImageRestoreRequest(
                backup_id=backup_id, target=to, image_format=image_format, disk=disk, force=force
            ),
        )
    if as_json:
        print_json(
            {
                "backup_id": backup_id,
                "disk": restored.name,
                "target": str(to),
                "format": image_format,
                "size": restored.size,
            }
        )
        return
    stdout.print(f"restored {escape(restored.name)} of {backup_id} to {escape(str(to))}")


def list_command(
    ctx: typer.Context,
    repo: RepoOption = None,
    password_file: PasswordFileOption = None,
    s3_endpoint: S3EndpointOption = None,
    as_json: JsonOption = False,
) -> None:
    """List the backups in the repository, oldest first."""
    _settings, repository = open_repository_for(ctx, repo, password_file, s3_endpoint)
    manifests: list[BackupManifest] = []
    unreadable: list[str] = []
    for backup_id in repository.list_backup_ids():
        try:
            manifests.append(repository.load_manifest(backup_id))
        except VmkeepError:
            unreadable.append(backup_id)
    if as_json:
        print_json({"backups": manifests, "unreadable": unreadable})
        return
    table = new_table("Backup", "Created", "Kind", "VM", "Disks", "Size", "New data", "Tags")
    for manifest in manifests:
        table.add_row(
            manifest.backup_id,
            manifest.created,
            manifest.kind,
            escape(manifest.vm or "-"),
            escape(", ".join(d.name for d in manifest.disks)),
            format_size(manifest.size),
            format_size(sum(d.new_bytes for d in manifest.disks)),
            escape(", ".join(manifest.tags)),
        )
    stdout.print(table)
    for backup_id in unreadable:
        stdout.print(f"[red]unreadable manifest[/red] {backup_id}: run `vmkeep repo check`")
