"""``vmkeep try``: snapshot, change, health check; keep the change or go back."""

from __future__ import annotations

import dataclasses
import shlex
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from vmkeep.cli.output import escape, print_json, stdout, warn
from vmkeep.cli.repo_options import QuiesceOption
from vmkeep.cli.state import services_for
from vmkeep.cli.vm_commands import JsonFlag
from vmkeep.domain.errors import UsageError
from vmkeep.domain.snapshots import parse_duration
from vmkeep.engine.try_change import Step, StepOutcome, TryRequest, TryResult, try_change

EXIT_REVERTED = 1
"""The change or its check failed and the VM was reverted (vmkeep itself did its job)."""


def try_command(
    ctx: typer.Context,
    vm: Annotated[str, typer.Argument(help="The VM to change.")],
    command: Annotated[
        list[str], typer.Argument(help="The change: a command and its arguments, after --.")
    ],
    check: Annotated[
        str,
        typer.Option(
            help="Health check, split like a shell would but never run by one; "
            "success is exit code 0."
        ),
    ],
    in_guest: Annotated[
        bool, typer.Option("--in-guest", help="Run the change in the guest (guest agent).")
    ] = False,
    check_in_guest: Annotated[
        bool,
        typer.Option("--check-in-guest", help="Run the check in the guest, with /bin/sh -c."),
    ] = False,
    memory: Annotated[
        bool, typer.Option(help="Snapshot RAM too: a revert brings back running processes.")
    ] = False,
    quiesce: QuiesceOption = None,
    timeout: Annotated[str, typer.Option(help="Longest the change may run.")] = "1h",
    check_timeout: Annotated[str, typer.Option(help="Longest one check may run.")] = "5m",
    check_wait: Annotated[
        str | None,
        typer.Option(help="Retry a failing check until this long has passed, e.g. 2m."),
    ] = None,
    check_interval: Annotated[str, typer.Option(help="Pause between check attempts.")] = "5s",
    as_json: JsonFlag = False,
) -> None:
    """Transactional maintenance: snapshot VM, run the change, run the check; keep the change
    and merge the snapshot away if both succeed, else revert to the snapshot. Exits 0 when
    the change was kept, 1 when it was reverted, 18 when the revert failed too."""
    if not command:
        raise UsageError("give the change command after --")
    check_argv = ("/bin/sh", "-c", check) if check_in_guest else tuple(shlex.split(check))
    if not check_argv or not check.strip():
        raise UsageError("--check must not be empty")
    request = TryRequest(
        vm=vm,
        change=Step(tuple(command), in_guest, parse_duration(timeout)),
        check=Step(check_argv, check_in_guest, parse_duration(check_timeout)),
        memory=memory,
        quiesce=quiesce,
        check_wait=parse_duration(check_wait) if check_wait else 0,
        check_interval=parse_duration(check_interval),
    )
    with services_for(ctx) as services:
        directory = services.settings.snapshot_dir
        if directory is not None:
            request = dataclasses.replace(request, directory=directory.absolute())
        result = try_change(services.try_deps(), request, now=datetime.now(UTC))
    if as_json:
        print_json(_result_json(result))
    else:
        _print_result(result)
    if result.outcome != "kept":
        raise typer.Exit(EXIT_REVERTED)


def _step_json(step: StepOutcome | None) -> dict[str, Any] | None:
    if step is None:
        return None
    return {
        "ok": step.ok,
        "exit_code": step.exit_code,
        "seconds": step.seconds,
        "attempts": step.attempts,
        "error": step.error,
        "output": step.output,
    }


def _result_json(result: TryResult) -> dict[str, Any]:
    return {
        "vm": result.vm,
        "snapshot": result.snapshot,
        "outcome": result.outcome,
        "change": _step_json(result.change),
        "check": _step_json(result.check),
        "snapshot_seconds": result.snapshot_seconds,
        "revert_seconds": result.revert_seconds,
        "cleanup_error": result.cleanup_error,
        "warnings": list(result.warnings),
    }


def _describe(label: str, step: StepOutcome | None) -> str:
    if step is None:
        return f"{label}: not run"
    if step.error:
        return f"{label}: failed ({escape(step.error)})"
    verdict = "passed" if step.ok else f"failed (exit {step.exit_code})"
    tries = f", {step.attempts} attempts" if step.attempts > 1 else ""
    return f"{label}: {verdict} in {step.seconds:.1f} s{tries}"


def _print_result(result: TryResult) -> None:
    vm = escape(result.vm)
    stdout.print(
        f"[bold]{vm}[/]: snapshot {escape(result.snapshot)!r} taken in "
        f"{result.snapshot_seconds:.2f} s"
    )
    warn(*result.warnings)
    stdout.print(_describe("change", result.change))
    stdout.print(_describe("check", result.check))
    failed = result.check if result.change.ok and result.check else result.change
    if result.outcome == "kept":
        stdout.print(f"[green]kept[/]: the change stays on {vm}")
    else:
        if failed.output.strip():
            stdout.print(escape(failed.output.rstrip()[-600:]))
        stdout.print(
            f"[red]reverted[/]: {vm} is back at its state before the change "
            f"({result.revert_seconds or 0:.1f} s)"
        )
    if result.cleanup_error:
        warn(result.cleanup_error)
