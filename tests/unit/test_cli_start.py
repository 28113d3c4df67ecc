"""The CLI imports only the module of the command it runs, and still offers every command."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer

from vmkeep.cli import main as cli_main


@pytest.mark.parametrize(
    ("argv", "wanted"),
    [
        (["backup", "vm1"], "backup"),
        (["-c", "qemu:///session", "backup", "vm1"], "backup"),
        (["--connect", "backup", "list"], "list"),  # "backup" is the URI here
        (["--config", "/etc/x.toml", "snapshot", "list"], "snapshot"),
        (["--connect=qemu:///system", "restore", "x"], "restore"),
        (["-vv", "repo", "init"], "repo"),
        (["--help"], None),
        ([], None),
        (["bakup"], None),  # unknown: every command, so the error can suggest one
        (["--", "backup"], None),
    ],
)
def test_the_named_command_is_found_past_the_global_options(
    argv: list[str], wanted: str | None
) -> None:
    assert cli_main._wanted_command(argv) == wanted


def _command_names(app: typer.Typer) -> set[str]:
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    return set(group.commands)


def test_without_a_command_every_command_is_registered() -> None:
    assert _command_names(cli_main.build_app()) == set(cli_main._COMMANDS)


def test_with_a_command_only_that_one_is_registered() -> None:
    assert _command_names(cli_main.build_app("backup")) == {"backup"}
    assert _command_names(cli_main.build_app("repo")) == {"repo"}


def test_a_backup_does_not_import_the_snapshot_or_lab_machinery() -> None:
    # A fresh interpreter: this test process has imported everything already.
    probe = (
        "import sys\n"
        "from vmkeep.cli.main import main\n"
        "assert main(['backup', '--help']) == 0\n"
        "heavy = ['vmkeep.engine.snapshots', 'vmkeep.engine.try_change', 'vmkeep.engine.lab',\n"
        "         'vmkeep.drivers.libvirt_snapshots', 'vmkeep.cli.snapshot_commands',\n"
        "         'secrets', 'hmac']\n"
        "print('LOADED:' + ' '.join(m for m in heavy if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.splitlines()[-1] == "LOADED:"


def test_the_console_entry_point_flushes_everything_before_it_leaves() -> None:
    """run() skips the interpreter's teardown: the output must still arrive, the code stay."""
    result = subprocess.run(
        [sys.executable, "-m", "vmkeep.cli", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0
    assert "Usage: vmkeep" in result.stdout
    assert result.stdout.rstrip().splitlines()[-1].startswith("╰")  # the last panel's end
    unknown = subprocess.run(
        [sys.executable, "-m", "vmkeep.cli", "no-such-command"], capture_output=True, text=True
    )
    assert unknown.returncode == 2
    assert "No such command" in unknown.stderr
