"""``vmkeep try``: transactional maintenance of a VM.

Snapshot, run the change, run the health check (retrying for a while if asked: services take
time to come back); if both succeed keep the change and merge the snapshot away, else revert
to the snapshot and merge it away too. Either way no snapshot is left behind, unless
something goes wrong with the snapshot itself, and then it is kept and the user is told
exactly how to finish by hand.

The snapshot carries an expiry (a day), so a ``try`` that is killed outright leaves a
snapshot that ``snapshot usage`` flags and ``snapshot prune --expired`` removes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from vmkeep.domain.errors import VmkeepError
from vmkeep.domain.vmspec import ExecResult
from vmkeep.engine.snapshot_history import delete_snapshot, revert_snapshot
from vmkeep.engine.snapshots import SnapshotOptions, create_snapshots
from vmkeep.ports import Clock, CommandRunner, HostLocks, Hypervisor

log = logging.getLogger(__name__)

TRY_SNAPSHOT_EXPIRY = 24 * 3600
OUTPUT_TAIL = 2000
"""Characters of a step's output kept for the report (its end: where errors are)."""


@dataclass(frozen=True, slots=True)
class Step:
    """A command of a try: ``argv`` on the host, or in the guest through its agent."""

    argv: tuple[str, ...]
    in_guest: bool = False
    timeout: float = 3600


@dataclass(frozen=True, slots=True)
class TryRequest:
    """What ``vmkeep try`` does. The check is retried every ``check_interval`` seconds until
    it passes or ``check_wait`` seconds have passed since its first attempt."""

    vm: str
    change: Step
    check: Step
    memory: bool = False
    quiesce: bool | None = None
    check_wait: float = 0
    check_interval: float = 5
    directory: Path | None = None
    """Where the snapshot's overlays go (None: next to the disks)."""


@dataclass(frozen=True, slots=True)
class StepOutcome:
    """How a step went: ``exit_code`` None when it could not run or timed out (``error``)."""

    ok: bool
    exit_code: int | None
    output: str
    seconds: float
    attempts: int = 1
    error: str | None = None


@dataclass(frozen=True, slots=True)
class TryResult:
    """``outcome`` is ``kept`` (change and check passed) or ``reverted``. ``check`` is None
    when the change failed (the check did not run). ``cleanup_error``: the snapshot could not
    be merged away afterwards and is still there (the VM itself is as ``outcome`` says)."""

    vm: str
    snapshot: str
    outcome: str
    change: StepOutcome
    check: StepOutcome | None
    snapshot_seconds: float
    revert_seconds: float | None
    cleanup_error: str | None
    warnings: tuple[str, ...]


class RevertFailedError(VmkeepError):
    """The change failed and going back failed too: the snapshot is kept for the user."""

    exit_code = 18


class _HeldLocks:
    """The VM's host lock, taken once for the whole try: the snapshot, revert and delete
    steps inside it find it held by us and go ahead, while a backup or another snapshot
    operation that starts meanwhile (during the change or the check) is refused, so nothing
    can take the lock away between the change and a revert."""

    def __init__(self, locks: HostLocks) -> None:
        self._locks = locks
        self._held: set[str] = set()

    @contextlib.contextmanager
    def hold(self, key: str, what: str) -> Iterator[None]:
        if key in self._held:
            yield
            return
        with self._locks.hold(key, what):
            self._held.add(key)
            try:
                yield
            finally:
                self._held.discard(key)


@dataclass(frozen=True, slots=True)
class TryDeps:
    """What a try needs: the hypervisor, the VM's host lock, host commands, a clock."""

    hypervisor: Hypervisor
    locks: HostLocks
    runner: CommandRunner
    clock: Clock


def try_change(deps: TryDeps, request: TryRequest, *, now: datetime) -> TryResult:
    """Run ``request`` (see the module docstring), holding the VM's host lock throughout.
    Raises what snapshot creation raises (nothing has changed then; LockedError if a backup
    or snapshot operation runs), and RevertFailedError (exit code 18) when the change failed
    and the revert did too."""
    vm = deps.hypervisor.get_vm(request.vm)
    locks = _HeldLocks(deps.locks)
    with locks.hold(vm.uuid, f"a try of {request.vm!r}"):
        return _try_locked(deps, locks, request, now)


def _try_locked(deps: TryDeps, locks: HostLocks, request: TryRequest, now: datetime) -> TryResult:
    hv = deps.hypervisor
    name = "vmkeep-try-" + now.strftime("%Y%m%dT%H%M%SZ")
    options = SnapshotOptions(
        name=name,
        memory=request.memory,
        quiesce=request.quiesce,
        expire=TRY_SNAPSHOT_EXPIRY,
        directory=request.directory,
    )
    created = create_snapshots(hv, locks, [request.vm], options, now=now).snapshots[0]
    env = {"VMKEEP_VM": request.vm, "VMKEEP_SNAPSHOT": name}
    try:
        change = _run(deps, request.vm, request.change, {**env, "VMKEEP_PHASE": "change"})
        check = None
        if change.ok:
            check = _check(deps, request, {**env, "VMKEEP_PHASE": "check"})
    except BaseException:
        log.error(
            "interrupted: snapshot %r of %s is kept; go back with `vmkeep snapshot revert` or "
            "keep the change with `vmkeep snapshot delete`",
            name,
            request.vm,
        )
        raise
    passed = change.ok and check is not None and check.ok
    revert_seconds = None
    if not passed:
        try:
            revert_seconds = revert_snapshot(hv, locks, request.vm, name).seconds
        except VmkeepError as exc:
            raise RevertFailedError(
                f"the change failed and reverting {request.vm!r} failed too: {exc}; snapshot "
                f"{name!r} is kept: run `vmkeep snapshot revert {request.vm} {name}`"
            ) from exc
    cleanup_error = None
    try:
        delete_snapshot(hv, locks, request.vm, name)
    except VmkeepError as exc:
        cleanup_error = (
            f"snapshot {name!r} could not be merged away ({exc}); it expires in a day and "
            "`vmkeep snapshot prune --expired` removes it"
        )
        log.error("%s", cleanup_error)
    return TryResult(
        vm=request.vm,
        snapshot=name,
        outcome="kept" if passed else "reverted",
        change=change,
        check=check,
        snapshot_seconds=created.seconds,
        revert_seconds=revert_seconds,
        cleanup_error=cleanup_error,
        warnings=created.warnings,
    )


def _check(deps: TryDeps, request: TryRequest, env: dict[str, str]) -> StepOutcome:
    started = deps.clock.monotonic()
    attempts = 0
    while True:
        attempts += 1
        outcome = _run(deps, request.vm, request.check, env)
        waited = deps.clock.monotonic() - started
        if outcome.ok or waited + request.check_interval > request.check_wait:
            return StepOutcome(
                outcome.ok,
                outcome.exit_code,
                outcome.output,
                round(waited, 3),
                attempts,
                outcome.error,
            )
        deps.clock.sleep(request.check_interval)


def _run(deps: TryDeps, vm: str, step: Step, env: dict[str, str]) -> StepOutcome:
    """Run one step; failing to run it at all (or a timeout) is a failed step, not an error:
    the try then reverts."""
    started = deps.clock.monotonic()
    try:
        if step.in_guest:
            result = deps.hypervisor.guest_exec(vm, step.argv, timeout=step.timeout)
        else:
            result = deps.runner.run(step.argv, env, step.timeout)
    except VmkeepError as exc:
        seconds = round(deps.clock.monotonic() - started, 3)
        return StepOutcome(False, None, "", seconds, error=str(exc))
    seconds = round(deps.clock.monotonic() - started, 3)
    return StepOutcome(result.exit_code == 0, result.exit_code, _tail(result), seconds)


def _tail(result: ExecResult) -> str:
    text = (result.stdout + result.stderr).decode(errors="replace")
    return text[-OUTPUT_TAIL:]
