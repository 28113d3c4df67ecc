"""``vmkeep repo``: create, inspect, check and manage repositories and their keys."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from vmkeep.cli.output import escape, jsonable, new_grid, new_table, print_json, stderr, stdout
from vmkeep.cli.progress import TerminalProgress
from vmkeep.cli.repo_options import JsonOption, PasswordFileOption, S3EndpointOption
from vmkeep.cli.state import open_repository_for, settings_for
from vmkeep.domain.errors import IntegrityError
from vmkeep.domain.units import format_size, parse_size
from vmkeep.repository.cache import ChunkCache
from vmkeep.repository.check import check_repository
from vmkeep.repository.config import ENCRYPTION_AES, ENCRYPTION_NONE
from vmkeep.repository.locks import locked, remove_locks
from vmkeep.repository.repo import DEFAULT_CHUNK_SIZE, Identity, InitOptions
from vmkeep.repository.stats import repository_stats
from vmkeep.services.passwords import read_new_password
from vmkeep.services.repository import (
    RepoAccess,
    add_random_key,
    create_repository,
    lock_environment,
    now_text,
)

app = typer.Typer(help="Create, check and manage backup repositories.", no_args_is_help=True)
key_app = typer.Typer(
    help="Manage the passwords (key files) of a repository.", no_args_is_help=True
)
app.add_typer(key_app, name="key")

KeyFileOption = Annotated[
    Path | None,
    typer.Option(
        help="Instead of a password, make a random 256-bit key and write it to this new file "
        "(mode 0600), for unattended hosts: give the file as --password-file or "
        "VMKEEP_PASSWORD_FILE. Opening the repository then skips scrypt (~0.2 s per command).",
    ),
]
RepoArgument = Annotated[
    str | None,
    typer.Argument(
        help="A directory or s3://bucket/prefix (default: VMKEEP_REPO, the config file, or "
        "/var/lib/vmkeep/repository).",
        show_default=False,
    ),
]


@app.command("init")
def init(
    ctx: typer.Context,
    repo: RepoArgument = None,
    encryption: Annotated[
        str, typer.Option(help=f"{ENCRYPTION_AES} (default) or {ENCRYPTION_NONE}.")
    ] = ENCRYPTION_AES,
    chunk_size: Annotated[
        str, typer.Option(help="Fixed chunk size, a power of two from 64K to 16M.")
    ] = f"{DEFAULT_CHUNK_SIZE >> 20}M",
    compression_level: Annotated[int, typer.Option(help="zstd level, 1 (fast) to 19.")] = 3,
    key_file: KeyFileOption = None,
    password_file: PasswordFileOption = None,
    s3_endpoint: S3EndpointOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a new repository (encrypted unless --encryption none)."""
    size = parse_size(chunk_size)
    if size < 64 << 10 or size > 16 << 20 or size & (size - 1):
        raise typer.BadParameter(
            "must be a power of two from 64K to 16M", param_hint="--chunk-size"
        )
    if not 1 <= compression_level <= 19:
        raise typer.BadParameter("must be from 1 to 19", param_hint="--compression-level")
    if encryption == ENCRYPTION_NONE:
        stderr.print(
            "[bold yellow]warning:[/] --encryption none: anyone who can read the repository "
            "can read every backup, and tampering is not detected"
        )
    settings = settings_for(ctx, repo, s3_endpoint)
    created = create_repository(
        settings,
        RepoAccess(password_file=password_file),
        InitOptions(encryption=encryption, chunk_size=size, compression_level=compression_level),
        os.environ,
        key_file=key_file,
    )
    facts = {
        "repository": created.store.location,
        "id": created.repo_id,
        "encryption": created.config.encryption,
        "chunk_size": created.chunk_size,
        "compression_level": created.config.compression_level,
        "key_id": created.key_id,
        "key_file": str(key_file) if key_file else None,
    }
    if as_json:
        print_json(facts)
        return
    stdout.print(f"Created repository {escape(created.store.location)} (id {created.repo_id})")
    stdout.print(
        f"encryption {created.config.encryption}, chunks of {format_size(created.chunk_size)}, "
        f"zstd level {created.config.compression_level}"
    )
    if key_file is not None:
        stdout.print(
            f"New random key in {escape(str(key_file))}: give it as --password-file or "
            "VMKEEP_PASSWORD_FILE, and keep a copy safe elsewhere: without it the backups "
            "cannot be read."
        )
    elif created.config.encrypted:
        stdout.print("Keep the password safe: without it the backups cannot be read.")


@app.command("check")
def check(
    ctx: typer.Context,
    repo: RepoArgument = None,
    read_data: Annotated[bool, typer.Option(help="Also decrypt and hash every chunk.")] = False,
    read_data_subset: Annotated[
        str | None, typer.Option(help="Decrypt and hash this share of the chunks, e.g. 10%.")
    ] = None,
    password_file: PasswordFileOption = None,
    s3_endpoint: S3EndpointOption = None,
    as_json: JsonOption = False,
) -> None:
    """Verify the repository. Exits non-zero naming every bad object and affected backup."""
    fraction = 1.0 if read_data else _parse_fraction(read_data_subset)
    settings, repository = open_repository_for(ctx, repo, password_file, s3_endpoint)
    progress = TerminalProgress(quiet=as_json)
    with locked(repository.store, lock_environment(), exclusive=False, purpose="check"):
        report = check_repository(repository, progress, read_fraction=fraction)
    if report.bad_chunk_ids:
        # Never trust the dedup cache for chunks found bad: the next backup uploads them again.
        cache = ChunkCache.load(repository, settings.cache_dir / "chunks")
        for chunk_id in report.bad_chunk_ids:
            cache.forget(chunk_id)
        cache.save()
    if as_json:
        print_json(
            {
                "ok": report.ok,
                "backups": report.backups,
                "indexes": report.indexes,
                "chunks_referenced": report.chunks_referenced,
                "chunks_stored": report.chunks_stored,
                "chunks_read": report.chunks_read,
                "unreferenced_chunks": report.unreferenced_chunks,
                "problems": report.problems,
                "damaged_backups": report.damaged_backups,
            }
        )
    else:
        stdout.print(
            f"{report.backups} backups, {report.indexes} indexes, "
            f"{report.chunks_referenced} chunks referenced, {report.chunks_read} read and verified"
        )
        for problem in report.problems:
            stdout.print(
                f"[red]BAD[/red] {escape(problem.object_name)}: {escape(problem.message)} "
                f"(affects {', '.join(problem.backups) or 'no backup'})"
            )
        if report.ok:
            stdout.print("[green]no problems found[/green]")
    if not report.ok:
        damaged = ", ".join(report.damaged_backups)
        raise IntegrityError(f"{len(report.problems)} bad objects; damaged backups: {damaged}")


def _parse_fraction(text: str | None) -> float:
    if text is None:
        return 0.0
    try:
        value = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
    except ValueError:
        raise typer.BadParameter(
            "use a percentage like 10%", param_hint="--read-data-subset"
        ) from None
    if not 0 < value <= 1:
        raise typer.BadParameter(
            "must be above 0% and at most 100%", param_hint="--read-data-subset"
        )
    return value


@app.command("stats")
def stats(
    ctx: typer.Context,
    repo: RepoArgument = None,
    password_file: PasswordFileOption = None,
    s3_endpoint: S3EndpointOption = None,
    as_json: JsonOption = False,
) -> None:
    """Objects, logical and stored size, dedup and compression ratios."""
    _settings, repository = open_repository_for(ctx, repo, password_file, s3_endpoint)
    result = repository_stats(repository)
    if as_json:
        print_json(result)
        return
    table = new_grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("Backups", str(result.backups))
    table.add_row("Chunks", str(result.chunks))
    table.add_row("Logical size (all disks of all backups)", format_size(result.logical_bytes))
    table.add_row("Data (non-zero)", format_size(result.data_bytes))
    table.add_row("Unique data", format_size(result.unique_bytes))
    table.add_row("Stored (all objects)", format_size(result.stored_bytes))
    table.add_row("Dedup ratio", f"{result.dedup_ratio:.2f}x")
    table.add_row("Compression ratio", f"{result.compression_ratio:.2f}x")
    stdout.print(table)


@app.command("unlock")
def unlock(
    ctx: typer.Context,
    repo: RepoArgument = None,
    remove_all: Annotated[
        bool, typer.Option("--all", help="Remove every lock, not only stale ones.")
    ] = False,
    password_file: PasswordFileOption = None,
    s3_endpoint: S3EndpointOption = None,
    as_json: JsonOption = False,
) -> None:
    """Remove stale locks (dead process on this host, or not refreshed for 30 minutes)."""
    _settings, repository = open_repository_for(ctx, repo, password_file, s3_endpoint)
    removed = remove_locks(repository.store, lock_environment(), all_locks=remove_all)
    if as_json:
        print_json({"removed": removed})
        return
    for record in removed:
        stdout.print(
            f"removed lock of pid {record.pid} on {escape(record.host)} ({record.purpose})"
        )
    stdout.print(f"{len(removed)} lock(s) removed")


@key_app.command("list")
def key_list(
    ctx: typer.Context,
    repo: RepoArgument = None,
    password_file: PasswordFileOption = None,
    s3_endpoint: S3EndpointOption = None,
    as_json: JsonOption = False,
) -> None:
    """List the key files (one per password)."""
    _settings, repository = open_repository_for(ctx, repo, password_file, s3_endpoint)
    keys = repository.list_keys()
    if as_json:
        print_json([{**jsonable(k), "current": k.key_id == repository.key_id} for k in keys])
        return
    table = new_table("Key", "Kind", "Created", "Host", "User", "")
    for key in keys:
        table.add_row(
            key.key_id,
            key.kind,
            key.created,
            key.host,
            key.user,
            "in use" if key.key_id == repository.key_id else "",
        )
    stdout.print(table)


@key_app.command("add")
def key_add(
    ctx: typer.Context,
    repo: RepoArgument = None,
    new_password_file: Annotated[
        Path | None, typer.Option(help="File with the new password (mode 0600); else a prompt.")
    ] = None,
    key_file: KeyFileOption = None,
    password_file: PasswordFileOption = None,
    s3_endpoint: S3EndpointOption = None,
    as_json: JsonOption = False,
) -> None:
    """Add a password, or with --key-file a random key, that opens the repository."""
    if key_file is not None and new_password_file is not None:
        raise typer.BadParameter("give --key-file or --new-password-file, not both")
    _settings, repository = open_repository_for(ctx, repo, password_file, s3_endpoint)
    if key_file is None:
        new_password = read_new_password(new_password_file)
        with locked(repository.store, lock_environment(), exclusive=True, purpose="key add"):
            key_id = repository.add_key(new_password, Identity.current(), now_text())
        _report_key(as_json, {"added": key_id}, f"added key {key_id}")
        return
    key_id = add_random_key(repository, key_file)
    _report_key(
        as_json,
        {"added": key_id, "key_file": str(key_file)},
        f"added random key {key_id}, written to {escape(str(key_file))}",
    )


@key_app.command("remove")
def key_remove(
    ctx: typer.Context,
    key_id: Annotated[str, typer.Argument(help="The key to remove (see `repo key list`).")],
    repo: RepoArgument = None,
    password_file: PasswordFileOption = None,
    s3_endpoint: S3EndpointOption = None,
    as_json: JsonOption = False,
) -> None:
    """Remove a password. Refuses the one in use and the last one."""
    _settings, repository = open_repository_for(ctx, repo, password_file, s3_endpoint)
    with locked(repository.store, lock_environment(), exclusive=True, purpose="key remove"):
        repository.remove_key(key_id)
    _report_key(as_json, {"removed": key_id}, f"removed key {key_id}")


@key_app.command("change-password")
def key_change_password(
    ctx: typer.Context,
    repo: RepoArgument = None,
    new_password_file: Annotated[
        Path | None, typer.Option(help="File with the new password (mode 0600); else a prompt.")
    ] = None,
    password_file: PasswordFileOption = None,
    s3_endpoint: S3EndpointOption = None,
    as_json: JsonOption = False,
) -> None:
    """Replace the password in use. Other passwords keep working."""
    _settings, repository = open_repository_for(ctx, repo, password_file, s3_endpoint)
    new_password = read_new_password(new_password_file)
    with locked(repository.store, lock_environment(), exclusive=True, purpose="change-password"):
        key_id = repository.change_password(new_password, Identity.current(), now_text())
    _report_key(as_json, {"key_id": key_id}, f"password changed (new key {key_id})")


@key_app.command("export")
def key_export(
    ctx: typer.Context,
    repo: RepoArgument = None,
    output: Annotated[
        Path | None, typer.Option(help="Write here (mode 0600) instead of stdout.")
    ] = None,
    password_file: PasswordFileOption = None,
    s3_endpoint: S3EndpointOption = None,
) -> None:
    """Print the key in use for a safe. It still needs its password to open the repository,
    but keep it private: it is what stands between a thief and a password guess."""
    _settings, repository = open_repository_for(ctx, repo, password_file, s3_endpoint)
    text = (
        f"vmkeep repository key\nrepository: {repository.store.location}\n"
        f"repository id: {repository.repo_id}\nkey id: {repository.key_id}\n"
        f"exported: {now_text()}\n\n{repository.export_key().decode()}\n"
    )
    if output is None:
        stdout.print(text, markup=False, highlight=False)
        return
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    stderr.print(f"key written to {escape(str(output))}")


def _report_key(as_json: bool, document: dict[str, object], message: str) -> None:
    if as_json:
        print_json(document)
    else:
        stdout.print(message)
