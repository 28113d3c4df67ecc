"""``vmkeep try`` over the in-memory hypervisor with scripted host commands: keep on success,
revert on a failing change or check, check retries, and failures of the snapshot machinery."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import pytest

from tests.fakes import FakeClock, FakeHypervisor, MemoryLocks
from vmkeep.domain.errors import HypervisorError, StoreFullError, ToolError
from vmkeep.domain.vmspec import DiskSpec, ExecResult, VmSpec
from vmkeep.engine.try_change import (
    RevertFailedError,
    Step,
    TryDeps,
    TryRequest,
    try_change,
)

NOW = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
SNAPSHOT = "vmkeep-try-20260501T120000Z"


class ScriptedRunner:
    """Host commands whose exit codes come from ``results[argv[0]]`` (a list, consumed in
    order; the last one repeats). ``hang`` names commands that time out."""

    def __init__(self, clock: FakeClock, results: Mapping[str, Sequence[int]]) -> None:
        self.clock = clock
        self.results = {k: list(v) for k, v in results.items()}
        self.calls: list[tuple[tuple[str, ...], dict[str, str]]] = []

    def run(self, argv: Sequence[str], env: Mapping[str, str], timeout: float) -> ExecResult:
        self.calls.append((tuple(argv), dict(env)))
        self.clock.now += 1
        codes = self.results[argv[0]]
        if not codes:
            raise ToolError(f"{argv[0]} did not finish within {timeout:g} s")
        code = codes.pop(0) if len(codes) > 1 else codes[0]
        return ExecResult(code, f"{argv[0]} said {code}\n".encode(), b"")


class Recording(FakeHypervisor):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []
        self.fail_revert = False
        self.fail_delete = False

    def freeze_filesystems(self, name: str, timeout: int) -> int:
        self.events.append("freeze")
        return 1

    def thaw_filesystems(self, name: str, timeout: int) -> int:
        self.events.append("thaw")
        return 1

    def create_snapshot(self, name, request):  # type: ignore[no-untyped-def]
        self.events.append(f"create {request.name}")
        return super().create_snapshot(name, request)

    def revert_snapshot(self, name, snapshot, state):  # type: ignore[no-untyped-def]
        if self.fail_revert:
            raise HypervisorError("libvirt refused")
        self.events.append(f"revert {snapshot}")
        return super().revert_snapshot(name, snapshot, state)

    def delete_snapshot(self, name, snapshot):  # type: ignore[no-untyped-def]
        if self.fail_delete:
            raise HypervisorError("a block job is already running")
        self.events.append(f"delete {snapshot}")
        return super().delete_snapshot(name, snapshot)


def setup(results: Mapping[str, Sequence[int]]) -> tuple[Recording, ScriptedRunner, TryDeps]:
    hv = Recording()
    hv.define_vm(VmSpec("web", 256 << 20, 1, "/k", "/i", "", (DiskSpec("vda", "/w.qcow2"),)))
    hv.start_vm("web")
    clock = FakeClock()
    runner = ScriptedRunner(clock, results)
    return hv, runner, TryDeps(hv, MemoryLocks(), runner, clock)


def request(**extra: object) -> TryRequest:
    fields: dict[str, object] = {
        "vm": "web",
        "change": Step(("upgrade", "--all")),
        "check": Step(("healthy",)),
    }
    fields.update(extra)
    return TryRequest(**fields)  # type: ignore[arg-type]


def test_a_passing_change_is_kept_and_the_snapshot_merged_away() -> None:
    hv, runner, deps = setup({"upgrade": [0], "healthy": [0]})
    result = try_change(deps, request(), now=NOW)
    assert result.outcome == "kept" and result.snapshot == SNAPSHOT
    assert hv.events == ["freeze", f"create {SNAPSHOT}", "thaw", f"delete {SNAPSHOT}"]
    assert hv.list_snapshots("web") == []
    (change_argv, change_env), (check_argv, check_env) = runner.calls
    assert change_argv == ("upgrade", "--all") and check_argv == ("healthy",)
    assert change_env == {"VMKEEP_VM": "web", "VMKEEP_SNAPSHOT": SNAPSHOT, "VMKEEP_PHASE": "change"}
    assert check_env["VMKEEP_PHASE"] == "check"
    assert result.change.output == "upgrade said 0\n"


@pytest.mark.parametrize(
    ("results", "check_ran"),
    [
        ({"upgrade": [3], "healthy": [0]}, False),  # the change fails: no check
        ({"upgrade": [0], "healthy": [1]}, True),  # the check fails
        ({"upgrade": [], "healthy": [0]}, False),  # the change times out
    ],
)
def test_a_failing_change_or_check_is_reverted(
    results: Mapping[str, Sequence[int]], check_ran: bool
) -> None:
    hv, _runner, deps = setup(results)
    result = try_change(deps, request(), now=NOW)
    assert result.outcome == "reverted"
    assert (result.check is not None) == check_ran
    assert hv.events == [
        "freeze",
        f"create {SNAPSHOT}",
        "thaw",
        f"revert {SNAPSHOT}",
        f"delete {SNAPSHOT}",
    ]
    assert hv.list_snapshots("web") == []
    assert hv.get_vm("web").state.is_active  # reverted to a running VM


def test_the_check_is_retried_until_it_passes_or_time_runs_out() -> None:
    _hv, _runner, deps = setup({"upgrade": [0], "healthy": [1, 1, 0]})
    result = try_change(deps, request(check_wait=60, check_interval=10), now=NOW)
    assert result.outcome == "kept"
    assert result.check is not None and result.check.attempts == 3
    assert deps.clock.sleeps == [10, 10]  # type: ignore[attr-defined]

    _hv, _runner, deps = setup({"upgrade": [0], "healthy": [1]})
    result = try_change(deps, request(check_wait=25, check_interval=10), now=NOW)
    assert result.outcome == "reverted"
    # Attempts start at 0, 11 and 22 s (1 s each, 10 s pauses); a fourth would start after 25 s.
    assert result.check is not None and result.check.attempts == 3


def test_guest_steps_go_through_the_agent() -> None:
    hv, runner, deps = setup({})
    result = try_change(
        deps,
        request(change=Step(("echo", "hi"), in_guest=True), check=Step(("false",), in_guest=True)),
        now=NOW,
    )
    assert [argv for _vm, argv in hv.exec_log] == [("echo", "hi"), ("false",)]
    assert result.change.ok and result.change.output == "hi\n"
    assert result.check is not None and result.check.exit_code == 127
    assert result.outcome == "reverted"
    assert runner.calls == []


def test_a_snapshot_that_cannot_be_taken_changes_nothing() -> None:
    hv, runner, deps = setup({"upgrade": [0], "healthy": [0]})
    hv.free_bytes = 1 << 20  # type: ignore[attr-defined]
    with pytest.raises(StoreFullError):
        try_change(deps, request(), now=NOW)
    assert runner.calls == [] and hv.events == []


def test_a_failed_revert_keeps_the_snapshot_and_says_how_to_finish() -> None:
    hv, _runner, deps = setup({"upgrade": [5], "healthy": [0]})
    hv.fail_revert = True
    with pytest.raises(RevertFailedError) as failed:
        try_change(deps, request(), now=NOW)
    assert f"vmkeep snapshot revert web {SNAPSHOT}" in str(failed.value)
    assert failed.value.exit_code == 18
    assert isinstance(failed.value.__cause__, HypervisorError)
    assert [s.name for s in hv.list_snapshots("web")] == [SNAPSHOT]


def test_a_snapshot_that_cannot_be_merged_is_reported() -> None:
    hv, _runner, deps = setup({"upgrade": [0], "healthy": [0]})
    hv.fail_delete = True
    result = try_change(deps, request(), now=NOW)
    assert result.outcome == "kept"
    assert result.cleanup_error is not None and SNAPSHOT in result.cleanup_error
    (snapshot,) = hv.list_snapshots("web")
    assert snapshot.facts is not None and snapshot.facts.expires is not None  # prune finds it


def test_the_vm_stays_locked_for_the_whole_try() -> None:
    """A backup starting during the change or the check is refused: nothing can take the
    lock between the change and a revert."""
    hv, _runner, deps = setup({"upgrade": [0], "healthy": [1]})
    locks = deps.locks
    assert isinstance(locks, MemoryLocks)
    seen_during_change: list[dict[str, str]] = []
    original = deps.runner.run

    def run_and_look(argv, env, timeout):  # type: ignore[no-untyped-def]
        seen_during_change.append(dict(locks.held))
        return original(argv, env, timeout)

    deps.runner.run = run_and_look  # type: ignore[method-assign]
    result = try_change(deps, request(), now=NOW)
    assert result.outcome == "reverted"
    uuid = hv.get_vm("web").uuid
    assert all(held == {uuid: "a try of 'web'"} for held in seen_during_change)
    assert locks.held == {}
