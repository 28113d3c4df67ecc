from __future__ import annotations

import pytest

from vmkeep.domain.errors import UsageError
from vmkeep.domain.units import format_size, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8G", 8 << 30),
        ("256M", 256 << 20),
        ("256m", 256 << 20),
        ("1.5GiB", 3 << 29),
        ("4096", 4096),
        ("10K", 10 << 10),
        ("1T", 1 << 40),
        (" 2 GB ", 2 << 30),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "G", "-1G", "0", "8X", "1e3", "8 G B"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        parse_size(text)


def test_format_size() -> None:
    assert format_size(None) == "-"
    assert format_size(512) == "512 B"
    assert format_size(8 << 30) == "8.0 GiB"
    assert format_size(1536 << 10) == "1.5 MiB"
