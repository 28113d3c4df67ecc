"""The ``vmkeep`` entry point: global options, subcommands, and error-to-exit-code mapping."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from vmkeep import __version__
from vmkeep.cli import (
    backup_commands,
    lab_commands,
    repo_commands,
    snapshot_commands,
    try_commands,
    vm_backup_commands,
    vm_commands,
)
from vmkeep.cli.output import error, setup_logging
from vmkeep.cli.state import GlobalOptions
from vmkeep.domain.errors import VmkeepError

app = typer.Typer(
    name="vmkeep",
    help="Snapshots and incremental-forever backups for running libvirt/KVM VMs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(vm_commands.app, name="vm")
app.add_typer(lab_commands.app, name="lab")
app.add_typer(repo_commands.app, name="repo")
app.add_typer(snapshot_commands.app, name="snapshot")
app.command("backup")(vm_backup_commands.backup_command)
app.command("restore")(vm_backup_commands.restore_command)
app.command("backup-image")(backup_commands.backup_image_command)
app.command("restore-image")(backup_commands.restore_image_command)
app.command("list")(backup_commands.list_command)
app.command("try")(try_commands.try_command)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vmkeep {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    connect: Annotated[
        str | None,
        typer.Option(
            "--connect",
            "-c",
            help="libvirt URI (env VMKEEP_CONNECT; else the config file; else qemu:///system)",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="Config file (env VMKEEP_CONFIG; default /etc/vmkeep/config.toml)"),
    ] = None,
    verbose: Annotated[
        int,
        typer.Option("--verbose", "-v", count=True, help="More logging on stderr (-vv for debug)."),
    ] = 0,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Global options, valid before any subcommand."""
    setup_logging(verbose)
    ctx.obj = GlobalOptions(connect=connect, config=config, verbose=verbose)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return the process exit code; VmkeepError maps to its exit_code."""
    try:
        result = app(
            args=list(argv) if argv is not None else None, prog_name="vmkeep", standalone_mode=False
        )
    except VmkeepError as exc:
        error(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        error("interrupted; nothing half-done is visible (run `vmkeep repo check` to confirm)")
        return 130
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        error("aborted")
        return 130
    except typer.TyperException as exc:  # bad options or arguments
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            error(exc.format_message())
        return int(exc.exit_code)
    return result if isinstance(result, int) else 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
