"""CommandRunner over subprocess: the administrator's argv as given, never a shell."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from typing import IO

from vmkeep.domain.errors import ToolError
from vmkeep.domain.vmspec import ExecResult

log = logging.getLogger(__name__)

OUTPUT_LIMIT = 64 << 10
"""Bytes of each stream kept (the end: where errors are)."""


class SubprocessRunner:
    """Runs commands on this host with stdin closed and output captured.

    The command gets its own session (process group), so a timeout kills everything it
    started, not only the direct child. Output goes to temporary files rather than pipes:
    with pipes, a background process the command leaves behind (a daemon, ``ssh -f``) keeps
    them open and the wait would last until the timeout.
    """

    def run(self, argv: Sequence[str], env: Mapping[str, str], timeout: float) -> ExecResult:
        if not argv:
            raise ToolError("empty command")
        log.info("running %s", argv[0])
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                process = subprocess.Popen(
                    list(argv),
                    env={**os.environ, **env},
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                )
            except OSError as exc:
                raise ToolError(f"cannot run {argv[0]}: {exc.strerror or exc}") from exc
            try:
                code = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired as exc:
                _kill_group(process)
                raise ToolError(f"{argv[0]} did not finish within {timeout:g} s") from exc
            except BaseException:
                _kill_group(process)
                raise
            return ExecResult(code, _tail(out), _tail(err))


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _tail(stream: IO[bytes]) -> bytes:
    size = stream.seek(0, os.SEEK_END)
    stream.seek(max(0, size - OUTPUT_LIMIT))
    return stream.read()
