"""CommandRunner over subprocess: the administrator's argv as given, never a shell."""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Mapping, Sequence

from vmkeep.domain.errors import ToolError
from vmkeep.domain.vmspec import ExecResult

log = logging.getLogger(__name__)


class SubprocessRunner:
    """Runs commands on this host with stdin closed and output captured."""

    def run(self, argv: Sequence[str], env: Mapping[str, str], timeout: float) -> ExecResult:
        if not argv:
            raise ToolError("empty command")
        log.info("running %s", argv[0])
        try:
            done = subprocess.run(
                list(argv),
                env={**os.environ, **env},
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            # subprocess.run kills the child on timeout before raising.
            raise ToolError(f"{argv[0]} did not finish within {timeout:g} s") from exc
        except OSError as exc:
            raise ToolError(f"cannot run {argv[0]}: {exc.strerror or exc}") from exc
        return ExecResult(done.returncode, done.stdout, done.stderr)
