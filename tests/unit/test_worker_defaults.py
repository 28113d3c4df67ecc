"""Default worker counts follow the CPUs this process may use, not the host's."""

from __future__ import annotations

import os

import pytest

from vmkeep.services import repository


def test_usable_cpus_is_the_affinity_mask_when_there_is_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 3, 5}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert repository.usable_cpus() == 3


def test_usable_cpus_falls_back_to_the_cpu_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert repository.usable_cpus() == 6
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert repository.usable_cpus() == 2


@pytest.mark.parametrize(
    ("cpus", "backup", "restore"), [(1, 4, 8), (2, 4, 8), (3, 6, 12), (8, 16, 32)]
)
def test_workers_scale_with_the_usable_cpus_above_a_floor(
    monkeypatch: pytest.MonkeyPatch, cpus: int, backup: int, restore: int
) -> None:
    monkeypatch.setattr(repository, "usable_cpus", lambda: cpus)
    assert repository.backup_workers() == backup
    assert repository.restore_workers() == restore
