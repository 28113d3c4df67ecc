"""The chunk worker loop of engine/disk_transfer.py: every chunk once, bounded, and a failure
stops the rest and propagates only after the workers are done."""

from __future__ import annotations

import threading
import time

import pytest

from vmkeep.engine.disk_transfer import _ChunkResult, _for_each_chunk


def _result(number: int) -> _ChunkResult:
    return _ChunkResult(str(number), 1, 0, 0)


def test_every_chunk_is_worked_once_and_reported_once() -> None:
    worked: list[int] = []
    reported: list[int] = []
    guard = threading.Lock()

    def work(number: int) -> _ChunkResult:
        with guard:
            worked.append(number)
        return _result(number)

    _for_each_chunk(work, list(range(0, 500, 3)), 4, lambda n, r: reported.append(int(r.chunk_id)))
    assert sorted(worked) == list(range(0, 500, 3))
    assert sorted(reported) == list(range(0, 500, 3))


def test_no_more_than_workers_chunks_are_in_hand_at_once() -> None:
    in_hand = peak = 0
    guard = threading.Lock()

    def work(number: int) -> _ChunkResult:
        nonlocal in_hand, peak
        with guard:
            in_hand += 1
            peak = max(peak, in_hand)
        time.sleep(0.002)
        with guard:
            in_hand -= 1
        return _result(number)

    _for_each_chunk(work, list(range(60)), 3, lambda _n, _r: None)
    assert 1 < peak <= 3


def test_a_failure_stops_the_other_workers_and_propagates_after_they_finish() -> None:
    started: list[int] = []
    running = 0
    guard = threading.Lock()

    def work(number: int) -> _ChunkResult:
        nonlocal running
        with guard:
            started.append(number)
            running += 1
        try:
            if number == 5:
                raise OSError("export gone")
            time.sleep(0.01)
            return _result(number)
        finally:
            with guard:
                running -= 1

    with pytest.raises(OSError, match="export gone"):
        _for_each_chunk(work, list(range(1000)), 4, lambda _n, _r: None)
    assert running == 0  # nothing still reads when the caller starts cleaning up
    assert len(started) < 20  # the others stopped taking chunks


def test_a_failing_result_callback_propagates_too() -> None:
    def on_result(number: int, _result: _ChunkResult) -> None:
        if number == 2:
            raise ValueError("index full")

    with pytest.raises(ValueError, match="index full"):
        _for_each_chunk(_result, list(range(10)), 2, on_result)


def test_no_chunks_is_no_work() -> None:
    _for_each_chunk(_result, [], 4, lambda _n, _r: pytest.fail("no result expected"))
