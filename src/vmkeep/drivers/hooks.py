"""Hooks over subprocess: argv lists from the config, never a shell, with the VM and phase in
the environment (``VMKEEP_VM``, ``VMKEEP_PHASE``, ``VMKEEP_BACKUP_ID``)."""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Mapping, Sequence

from vmkeep.domain.errors import HookError

log = logging.getLogger(__name__)


class CommandHooks:
    """Runs ``commands[phase]`` if configured; a phase with no command does nothing."""

    def __init__(self, commands: Mapping[str, Sequence[str]], timeout: float = 300) -> None:
        self._commands = {phase: list(argv) for phase, argv in commands.items() if argv}
        self._timeout = timeout

    def run(self, phase: str, vm: str, backup_id: str) -> None:
        argv = self._commands.get(phase)
        if not argv:
            return
        env = {**os.environ, "VMKEEP_VM": vm, "VMKEEP_PHASE": phase, "VMKEEP_BACKUP_ID": backup_id}
        log.info("running the %s hook for %s: %s", phase, vm, argv[0])
        try:
            done = subprocess.run(
                argv, env=env, capture_output=True, text=True, timeout=self._timeout, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise HookError(f"the {phase} hook for {vm!r} could not run: {exc}") from exc
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or [""])[-1]
            raise HookError(f"the {phase} hook for {vm!r} exited {done.returncode}: {last}")
