"""The allocator tuning used by every repository user (see drivers/allocator.py)."""

from __future__ import annotations

import platform

import pytest

from vmkeep.drivers import allocator


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are glibc's")
def test_glibc_accepts_the_thresholds_and_tuning_is_idempotent() -> None:
    assert allocator.tune_for_large_buffers()
    assert allocator.tune_for_large_buffers()


def test_child_processes_get_the_same_thresholds() -> None:
    env = allocator.allocator_environment()
    assert int(env["MALLOC_MMAP_THRESHOLD_"]) == allocator.MMAP_THRESHOLD
    assert int(env["MALLOC_TRIM_THRESHOLD_"]) == allocator.TRIM_THRESHOLD
    # Above the largest chunk size, or chunk buffers would still be fresh mappings.
    assert allocator.MMAP_THRESHOLD > 4 << 20
