"""``vmkeep vm drop-checkpoints`` (engine/checkpoint_cleanup.py) on a stand-in hypervisor: which
checkpoints go, in which order, and that nothing else is touched. The real libvirt deletion is
covered by tests/system/test_vm_backup.py."""

from __future__ import annotations

import pytest

from tests.fakes import MemoryLocks
from vmkeep.domain.checkpoints import checkpoint_repository, is_own_checkpoint
from vmkeep.domain.errors import LockedError, UsageError
from vmkeep.domain.inventory import CheckpointInfo, VmInfo, VmState
from vmkeep.engine.checkpoint_cleanup import drop_checkpoints

REPO_A = "aaaaaaaa" + "0" * 24
REPO_B = "bbbbbbbb" + "1" * 24
OLD_A = "vmkeep-aaaaaaaa-20261201T100000123Z-0000000a"
NEW_A = "vmkeep-aaaaaaaa-20261202T100000123Z-0000000b"
ONLY_B = "vmkeep-bbbbbbbb-20261202T110000Z-0000000c"  # a second-resolution id, still ours
FOREIGN = ("nightly", "vmkeep-mine", "vmkeep-aaaaaaaa-before-upgrade", "virtnbdbackup.0")


class CheckpointHypervisor:
    """Just what drop_checkpoints uses: one VM with checkpoints, deletions recorded."""

    def __init__(self, names: list[str]) -> None:
        self.checkpoints = [CheckpointInfo(n, created=i, parent=None) for i, n in enumerate(names)]
        self.deleted: list[str] = []

    def get_vm(self, name: str) -> VmInfo:
        return VmInfo(
            name=name,
            uuid="uuid-1",
            state=VmState.RUNNING,
            persistent=True,
            vcpus=1,
            memory=1,
            max_memory=1,
            checkpoints=tuple(c for c in self.checkpoints if c.name not in self.deleted),
        )

    def delete_checkpoint(self, name: str, checkpoint: str) -> None:
        self.deleted.append(checkpoint)


def test_names_vmkeep_makes_are_recognised_and_no_others() -> None:
    assert checkpoint_repository(OLD_A) == "aaaaaaaa"
    assert checkpoint_repository(ONLY_B) == "bbbbbbbb"
    for name in FOREIGN:
        assert checkpoint_repository(name) is None
    assert is_own_checkpoint(OLD_A, REPO_A)
    assert not is_own_checkpoint(OLD_A, REPO_B)
    assert not is_own_checkpoint("vmkeep-aaaaaaaa-before-upgrade", REPO_A)


def test_one_repositorys_checkpoints_go_newest_first_and_the_rest_stay() -> None:
    hv = CheckpointHypervisor([*FOREIGN, OLD_A, ONLY_B, NEW_A])
    result = drop_checkpoints(hv, MemoryLocks(), "vm 1", repo_id=REPO_A)  # type: ignore[arg-type]
    assert hv.deleted == [NEW_A, OLD_A]
    assert result.dropped == (NEW_A, OLD_A)
    assert set(result.kept) == {*FOREIGN, ONLY_B}
    assert not result.dry_run


def test_the_8_digit_prefix_in_the_names_is_enough_and_case_does_not_matter() -> None:
    hv = CheckpointHypervisor([OLD_A, ONLY_B])
    drop_checkpoints(hv, MemoryLocks(), "vm", repo_id="BBBBBBBB")  # type: ignore[arg-type]
    assert hv.deleted == [ONLY_B]


def test_all_drops_every_vmkeep_checkpoint_and_no_foreign_one() -> None:
    hv = CheckpointHypervisor([*FOREIGN, OLD_A, ONLY_B, NEW_A])
    result = drop_checkpoints(hv, MemoryLocks(), "vm", repo_id=None)  # type: ignore[arg-type]
    assert set(hv.deleted) == {OLD_A, ONLY_B, NEW_A}
    assert set(result.kept) == set(FOREIGN)


def test_dry_run_deletes_nothing() -> None:
    hv = CheckpointHypervisor([OLD_A, NEW_A])
    result = drop_checkpoints(hv, MemoryLocks(), "vm", repo_id=None, dry_run=True)  # type: ignore[arg-type]
    assert hv.deleted == []
    assert result.dropped == (NEW_A, OLD_A)
    assert result.dry_run


@pytest.mark.parametrize("bad", ["", "aaaa", "vmkeep-aaaaaaaa", "zzzzzzzz", "a" * 33])
def test_a_malformed_repository_id_is_refused_before_anything_happens(bad: str) -> None:
    hv = CheckpointHypervisor([OLD_A])
    with pytest.raises(UsageError, match="not a repository id"):
        drop_checkpoints(hv, MemoryLocks(), "vm", repo_id=bad)  # type: ignore[arg-type]
    assert hv.deleted == []


def test_refused_while_another_vmkeep_command_holds_the_vm() -> None:
    hv, locks = CheckpointHypervisor([OLD_A]), MemoryLocks()
    with locks.hold("uuid-1", "a backup of 'vm'"), pytest.raises(LockedError, match="a backup"):
        drop_checkpoints(hv, locks, "vm", repo_id=None)  # type: ignore[arg-type]
    assert hv.deleted == []
