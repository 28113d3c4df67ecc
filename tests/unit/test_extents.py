from __future__ import annotations

from vmkeep.domain.extents import Extent, chunks_touched, data_chunks


def test_only_fully_zero_chunks_are_skipped() -> None:
    extents = [
        Extent(0, 100, zero=False),
        Extent(100, 900, zero=True),
        Extent(1000, 24, zero=False),
    ]
    # chunks of 256: [0-256) has data, [256-512) and [512-768) zero, [768-1024) has data at 1000
    assert data_chunks(extents, 1024, 256) == [True, False, False, True]


def test_uncovered_ranges_are_read() -> None:
    assert data_chunks([Extent(0, 256, zero=True)], 1024, 256) == [False, True, True, True]


def test_last_partial_chunk_and_overhanging_extent() -> None:
    assert data_chunks([Extent(0, 4096, zero=True)], 1000, 256) == [False] * 4
    assert data_chunks([Extent(0, 768, zero=True)], 1000, 256) == [False, False, False, True]


def test_chunks_touched_by_dirty_ranges() -> None:
    dirty = [Extent(0, 1, zero=False), Extent(300, 300, zero=False), Extent(1023, 5, zero=False)]
    assert chunks_touched(dirty, 1024, 256) == [True, True, True, True]
    assert chunks_touched([Extent(256, 256, zero=False)], 1024, 256) == [False, True, False, False]
    assert chunks_touched([], 1000, 256) == [False] * 4
