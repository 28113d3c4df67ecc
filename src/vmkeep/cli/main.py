"""The ``vmkeep`` entry point: global options, subcommands, and error-to-exit-code mapping."""

from __future__ import annotations

import atexit
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from vmkeep import __version__
from vmkeep.cli.output import error, setup_logging
from vmkeep.cli.state import GlobalOptions
from vmkeep.domain.errors import VmkeepError

# Every subcommand: name -> (module, attribute). An attribute named "app" is a sub-Typer
# (a command group); anything else is the function of a single command. Only the module of
# the command being run is imported (``_wanted_command``): importing and building all of
# them took about a tenth of a second of every command's start, a tenth of an incremental
# backup.
_COMMANDS: dict[str, tuple[str, str]] = {
    "vm": ("vmkeep.cli.vm_commands", "app"),
    "lab": ("vmkeep.cli.lab_commands", "app"),
    "repo": ("vmkeep.cli.repo_commands", "app"),
    "snapshot": ("vmkeep.cli.snapshot_commands", "app"),
    "backup": ("vmkeep.cli.vm_backup_commands", "backup_command"),
    "restore": ("vmkeep.cli.vm_backup_commands", "restore_command"),
    "backup-image": ("vmkeep.cli.backup_commands", "backup_image_command"),
    "restore-image": ("vmkeep.cli.backup_commands", "restore_image_command"),
    "list": ("vmkeep.cli.backup_commands", "list_command"),
    "try": ("vmkeep.cli.try_commands", "try_command"),
}
# The global options that take a value, so that the value is not taken for a command name.
_VALUE_OPTIONS = frozenset({"--connect", "-c", "--config"})


def _wanted_command(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names, if it is one of ours; None for none (``--help``) or
    an unknown name, which then gets every command (for the listing or the suggestions)."""
    args = iter(argv)
    for arg in args:
        if arg == "--":
            return None
        if arg in _VALUE_OPTIONS:
            next(args, None)
        elif not arg.startswith("-"):
            return arg if arg in _COMMANDS else None
    return None


def build_app(command: str | None = None) -> typer.Typer:
    """The CLI with every subcommand, or with only ``command`` (same options, same help)."""
    app = typer.Typer(
        name="vmkeep",
        help="Snapshots and incremental-forever backups for running libvirt/KVM VMs.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    app.callback()(main_options)
    for name, (module_name, attribute) in _COMMANDS.items():
        if command is not None and name != command:
            continue
        target = getattr(importlib.import_module(module_name), attribute)
        if attribute == "app":
            app.add_typer(target, name=name)
        else:
            app.command(name)(target)
    return app


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vmkeep {__version__}")
        raise typer.Exit()


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
    args = list(argv) if argv is not None else sys.argv[1:]
    try:
        app = build_app(_wanted_command(args))
        result = app(args=args, prog_name="vmkeep", standalone_mode=False)
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
    """Console-script entry point: run, flush, and leave without tearing the interpreter down.

    Python's exit destroys every module and object one by one: 30-65 ms after a backup, for
    nothing, since every file, connection and lock a command uses is closed by its own
    ``with`` block before ``main`` returns. What exit would still do that matters is done
    here: the atexit handlers (logging's flush among them) and flushing stdout and stderr.
    """
    code = main()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`vmkeep list | head -1`), a closed file
            code = code or 1
    os._exit(code)
