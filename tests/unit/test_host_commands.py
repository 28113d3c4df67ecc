"""SubprocessRunner with real (tiny) processes: output, exit codes, timeouts that kill the
whole process group, and background children that must not hold the wait up."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from vmkeep.domain.errors import ToolError
from vmkeep.drivers.host_commands import SubprocessRunner


def test_output_exit_code_and_environment() -> None:
    result = SubprocessRunner().run(
        ["sh", "-c", 'echo "$VMKEEP_VM"; echo oops >&2; exit 3'], {"VMKEEP_VM": "web"}, 10
    )
    assert (result.exit_code, result.stdout, result.stderr) == (3, b"web\n", b"oops\n")


def test_a_missing_command_is_a_tool_error() -> None:
    with pytest.raises(ToolError, match="cannot run"):
        SubprocessRunner().run(["/nonexistent/vmkeep-test"], {}, 10)


def test_a_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    marker = tmp_path / "grandchild.pid"
    started = time.monotonic()
    with pytest.raises(ToolError, match="did not finish within 1 s"):
        SubprocessRunner().run(["sh", "-c", f"sleep 60 & echo $! > {marker}; wait"], {}, 1)
    assert time.monotonic() - started < 10
    pid = int(marker.read_text())
    time.sleep(0.2)
    assert _dead(pid)


def _dead(pid: int) -> bool:
    """Gone, or a zombie waiting for whoever adopted it to reap it."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "State:\tZ" in status


def test_a_background_child_does_not_hold_the_wait_up() -> None:
    started = time.monotonic()
    result = SubprocessRunner().run(["sh", "-c", "sleep 30 >/dev/null 2>&1 & echo done"], {}, 20)
    assert result.exit_code == 0 and result.stdout == b"done\n"
    assert time.monotonic() - started < 10
