"""Running external tools: always an argv list, never a shell, failures become ToolError."""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Sequence

from vmkeep.domain.errors import ToolError

log = logging.getLogger(__name__)


def run_tool(argv: Sequence[str], *, timeout: float | None = None) -> str:
    """Run ``argv`` and return its stdout as text.

    Raises ToolError naming the tool when it is missing, times out or exits non-zero; the
    message carries the last line of its stderr, which is what users need to see.
    """
    if shutil.which(argv[0]) is None:
        raise ToolError(f"{argv[0]} is not installed (run `make setup`)")
    log.debug("running %s", list(argv))
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ToolError(f"{argv[0]} did not finish within {timeout} s") from exc
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        detail = lines[-1] if lines else f"exit code {done.returncode}"
        raise ToolError(f"{argv[0]} failed: {detail}")
    return done.stdout
