"""Hooks over subprocess: argv lists from the config, never a shell, with the VM and phase in
the environment (``VMKEEP_VM``, ``VMKEEP_PHASE``, ``VMKEEP_BACKUP_ID``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from vmkeep.domain.errors import HookError, ToolError
from vmkeep.drivers.host_commands import SubprocessRunner

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
        env = {"VMKEEP_VM": vm, "VMKEEP_PHASE": phase, "VMKEEP_BACKUP_ID": backup_id}
        log.info("running the %s hook for %s: %s", phase, vm, argv[0])
        # The same runner as `vmkeep try`: own session, killed as a group on timeout, output
        # in files, so a daemon a hook starts cannot hold the backup up.
        try:
            done = SubprocessRunner().run(argv, env, self._timeout)
        except ToolError as exc:
            raise HookError(f"the {phase} hook for {vm!r} could not run: {exc}") from exc
        if done.exit_code != 0:
            lines = done.stderr.decode(errors="replace").strip().splitlines()
            last = lines[-1] if lines else ""
            raise HookError(f"the {phase} hook for {vm!r} exited {done.exit_code}: {last}")
